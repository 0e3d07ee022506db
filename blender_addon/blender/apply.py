"""Putting results into the scene: packed images, new materials, placement, the live preview.

Every apply is transactional: what it creates is recorded, and on any error it is removed and
what it changed is put back, so nothing is ever half-applied. It never edits the user's
materials: a texture gets a new material in a new slot (the faces are assigned to it; undo
puts them back), or - when asked - only the image of the selected Image Texture node changes.
"""

from __future__ import annotations

import os

import bpy

from ..core import pixels
from ..core.history import Record
from ..core.requests import image_name

PREVIEW_NAME = "Z-Image Preview"


class Transaction:
    """Undo log for one apply: created datablocks and callbacks that restore changes."""

    def __init__(self):
        self._undo: list = []

    def created(self, collection, datablock):
        self._undo.append(lambda: collection.remove(datablock))
        return datablock

    def changed(self, restore):
        self._undo.append(restore)

    def rollback(self):
        for fn in reversed(self._undo):
            try:
                fn()
            except Exception:
                pass
        self._undo.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.rollback()
        return False


# ---- images ------------------------------------------------------------------------------

def _rgb_and_size(img_data) -> tuple[bytes, int, int]:
    if img_data.format == "raw":
        return img_data.to_rgb_bytes(), img_data.width, img_data.height
    if img_data.format == "png":
        w, h, c, rows = pixels.decode_png(bytes(img_data.data))
        if c != 3:
            rows = bytes(rows)
            rgb = bytearray(w * h * 3)
            if c == 4:
                rgb[0::3], rgb[1::3], rgb[2::3] = rows[0::4], rows[1::4], rows[2::4]
            else:
                rgb[0::3] = rgb[1::3] = rgb[2::3] = rows
            rows = bytes(rgb)
        return rows, w, h
    raise ValueError(f"cannot read a {img_data.format} result")


def encode_result(img_data, record: Record) -> tuple[bytes, int, int]:
    """The PNG to pack for one result image (the engine's exact pixels plus the history
    record's `parameters` chunk). No bpy: the runtime runs it on a worker thread, where zlib
    releases the GIL, so Blender's main thread only packs the finished bytes."""
    rgb, w, h = _rgb_and_size(img_data)
    return pixels.encode_png(rgb, w, h, 3, text={"parameters": record.parameters_json()}), w, h


def encode_results(job, model: str) -> list[tuple[Record, bytes, int, int]]:
    """(record, PNG, width, height) for each of a finished job's images. No bpy."""
    return [(rec, *encode_result(data, rec))
            for data, rec in zip(job.images, make_records(job, model, job.slot))]


def create_result_image(tx: Transaction, img_data, record: Record,
                        encoded: tuple[bytes, int, int] | None = None) -> bpy.types.Image:
    """A packed image datablock named after the prompt, holding the engine's exact pixels as
    a PNG whose `parameters` text chunk and custom properties carry the history record.
    `encoded`: encode_result()'s answer when it was made ahead (off the main thread)."""
    png, w, h = encoded or encode_result(img_data, record)
    name = image_name(record.prompt, record.seed)
    image = tx.created(bpy.data.images, bpy.data.images.new(name, w, h, alpha=False))
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.file_format = "PNG"
    image.colorspace_settings.name = "sRGB"        # colour, not data
    image.alpha_mode = "NONE"
    for key, value in record.image_props().items():
        image[key] = value
    record.image_name = image.name
    return image


def make_records(job, model: str, kind: str) -> list[Record]:
    p = job.params
    out = []
    for i, img in enumerate(job.images):
        seed = img.seed if img.seed is not None else int(p["seed"]) + i
        out.append(Record(prompt=p["prompt"], seed=int(seed), steps=int(p["steps"]),
                          width=int(img.width or p["width"]), height=int(img.height or p["height"]),
                          model=model, kind=kind))
    return out


def add_history(scene, records: list[Record]) -> None:
    from ..core.history import trim
    hist = scene.zimage.history
    for r in records:
        item = hist.add()
        for key in ("prompt", "seed", "steps", "width", "height", "model", "image_name", "kind",
                    "created"):
            setattr(item, key, getattr(r, key))
    for _ in range(trim(len(hist))):
        hist.remove(0)
    scene.zimage.history_index = len(hist) - 1


# ---- textures ----------------------------------------------------------------------------

def find_image_node(material):
    """The active (else the only selected) Image Texture node of a material, or None."""
    if material is None or not material.use_nodes or material.node_tree is None:
        return None
    nodes = material.node_tree.nodes
    if nodes.active is not None and nodes.active.type == "TEX_IMAGE":
        return nodes.active
    selected = [n for n in nodes if n.type == "TEX_IMAGE" and n.select]
    return selected[0] if len(selected) == 1 else None


def new_texture_material(tx: Transaction, image: bpy.types.Image) -> bpy.types.Material:
    mat = tx.created(bpy.data.materials, bpy.data.materials.new(image.name))
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or \
            nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.location = (bsdf.location.x - 360, bsdf.location.y)
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    nodes.active = tex
    return mat


def assign_material(tx: Transaction, obj, mat) -> None:
    """Add `mat` in a new slot and show it on every face. The user's materials stay as they
    are, in their slots; the old face assignment is restored on rollback."""
    data = obj.data
    if not hasattr(data, "materials"):
        raise ValueError(f"{obj.name} cannot have materials")
    polys = getattr(data, "polygons", None)
    old_index = obj.active_material_index
    old_faces = None
    if polys is not None and len(polys):
        from array import array
        old_faces = array("i", bytes(4 * len(polys)))
        polys.foreach_get("material_index", old_faces)
    data.materials.append(mat)
    slot = len(data.materials) - 1

    def restore():
        data.materials.pop(index=slot)
        if old_faces is not None:
            polys.foreach_set("material_index", old_faces)
            data.update()
        obj.active_material_index = old_index
    tx.changed(restore)
    if old_faces is not None and slot > 0:
        from array import array
        polys.foreach_set("material_index", array("i", [slot]) * len(polys))
        data.update()
    obj.active_material_index = slot


def apply_texture(context_info: dict, image: bpy.types.Image, tx: Transaction) -> str:
    """Returns a sentence saying where the image went."""
    obj = bpy.data.objects.get(context_info.get("object") or "")
    mode = context_info.get("target", "NEW_MATERIAL")
    if mode == "IMAGE_NODE":
        mat = bpy.data.materials.get(context_info.get("material") or "")
        node = mat.node_tree.nodes.get(context_info.get("node") or "") if (
            mat is not None and mat.node_tree is not None) else None
        if node is None or node.type != "TEX_IMAGE":
            raise ValueError("the selected Image Texture node is gone")
        old = node.image
        tx.changed(lambda: setattr(node, "image", old))
        node.image = image
        return f"Set the image of {mat.name} > {node.name}"
    if obj is None:
        show_in_image_editors(image)
        return "No active object: the image is in the Image Editor"
    mat = new_texture_material(tx, image)
    assign_material(tx, obj, mat)
    return f"New material {mat.name} on {obj.name}"


# ---- concept images ----------------------------------------------------------------------

def show_in_image_editors(image, *, only_free: bool = False) -> int:
    """Show the image in every unpinned Image Editor; returns how many."""
    count = 0
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else []):
        for area in window.screen.areas:
            if area.type != "IMAGE_EDITOR":
                continue
            space = area.spaces.active
            if space.use_image_pin:
                continue
            if only_free and space.image is not None and space.image.name != PREVIEW_NAME:
                continue
            space.image = image
            area.tag_redraw()
            count += 1
    return count


def place_concept(context_info: dict, image, tx: Transaction, scene) -> str:
    placement = context_info.get("placement", "IMAGE_EDITOR")
    camera = bpy.data.objects.get(context_info.get("camera") or "") or scene.camera
    if placement == "CAMERA_BG":
        if camera is None or camera.type != "CAMERA":
            raise ValueError("the scene has no camera")
        cam = camera.data
        bg = cam.background_images.new()
        tx.changed(lambda: cam.background_images.remove(bg))
        bg.image = image
        bg.alpha = 1.0
        old_show = cam.show_background_images
        tx.changed(lambda: setattr(cam, "show_background_images", old_show))
        cam.show_background_images = True
        return f"Background image of {camera.name}"
    if placement == "REFERENCE":
        empty = tx.created(bpy.data.objects, bpy.data.objects.new(image.name, None))
        empty.empty_display_type = "IMAGE"
        empty.data = image
        empty.empty_image_offset = (-0.5, -0.5)
        scene.collection.objects.link(empty)
        matrix = context_info.get("view_matrix")
        if camera is not None and matrix is None:
            matrix = camera.matrix_world
        if matrix is not None:
            from mathutils import Matrix, Vector
            m = Matrix(matrix)
            forward = m.to_3x3() @ Vector((0.0, 0.0, -1.0))
            empty.location = m.translation + forward.normalized() * 5.0
            empty.rotation_euler = m.to_euler()
        empty.empty_display_size = 3.0
        return f"Reference image {empty.name}"
    shown = show_in_image_editors(image)
    return "Shown in the Image Editor" if shown else "Image created (open an Image Editor)"


# ---- live preview ------------------------------------------------------------------------

def update_preview(img_data, folder: str) -> bpy.types.Image:
    """One reused datablock, updated each step. JPEG previews are decoded by Blender from a
    file that is replaced in place; raw ones are written with foreach_set."""
    image = bpy.data.images.get(PREVIEW_NAME)
    if img_data.format in ("jpeg", "png"):
        ext = ".jpg" if img_data.format == "jpeg" else ".png"
        path = os.path.join(folder, "preview" + ext)
        tmp = path + ".part"
        with open(tmp, "wb") as fh:
            fh.write(bytes(img_data.data))
        os.replace(tmp, path)
        if image is None or image.source != "FILE":
            if image is not None:
                bpy.data.images.remove(image)
            image = bpy.data.images.load(path, check_existing=False)
            image.name = PREVIEW_NAME
        elif bpy.path.abspath(image.filepath) != path:
            image.filepath = path
        image.reload()
    else:
        w, h = img_data.width, img_data.height
        if image is None or tuple(image.size) != (w, h) or image.source != "GENERATED":
            if image is not None:
                bpy.data.images.remove(image)
            image = bpy.data.images.new(PREVIEW_NAME, w, h, alpha=False)
        image.pixels.foreach_set(pixels.rgb8_to_rgba_floats(img_data.to_rgb_bytes(), w, h))
        image.update()
    image.use_fake_user = False
    try:
        image.preview_ensure()
        image.preview.reload()
    except Exception:
        pass
    return image
