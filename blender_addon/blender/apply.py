"""Putting results into the scene: packed images, new materials, placement, the live preview.

Every apply is transactional: what it creates is recorded, and on any error it is removed and
what it changed is put back, so nothing is ever half-applied. It never edits the user's
materials: a texture gets a new material in a new slot (the faces of the active slot, or in
Edit Mode the selected faces, are assigned to it; undo puts them back), or - when asked - only
the image of the selected Image Texture node changes. Result images get a fake user, so they
stay in the saved file even when nothing uses them.
"""

from __future__ import annotations

import os

import bpy

from ..core import pixels
from ..core.history import Record, loras_json, parse_loras
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
    image.use_fake_user = True      # kept on save even when no material uses it (history)
    record.image_name = image.name
    return image


def make_records(job, model: str, kind: str) -> list[Record]:
    p = job.params
    out = []
    for i, img in enumerate(job.images):
        seed = img.seed if img.seed is not None else int(p["seed"]) + i
        out.append(Record(prompt=p["prompt"], seed=int(seed), steps=int(p["steps"]),
                          width=int(img.width or p["width"]), height=int(img.height or p["height"]),
                          model=model, kind=kind, loras=parse_loras(p.get("loras"))))
    return out


def add_history(scene, records: list[Record]) -> None:
    from ..core.history import trim
    hist = scene.zimage.history
    for r in records:
        item = hist.add()
        for key in ("prompt", "seed", "steps", "width", "height", "model", "image_name", "kind",
                    "created"):
            setattr(item, key, getattr(r, key))
        item.loras = loras_json(r.loras) if r.loras else ""
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


def can_hold_texture(obj) -> str | None:
    """None if a texture can go on `obj`, else why not (checked before sending)."""
    if obj is None:
        return None                  # the image goes to the Image Editor
    if obj.type != "MESH":
        kind = obj.type.replace("_", " ").lower()
        hint = " (convert it: Object > Convert > Mesh)" if obj.type in (
            "CURVE", "SURFACE", "FONT", "META", "CURVES") else ""
        return f"{obj.name} is a {kind}, not a mesh{hint}"
    linked = obj.library or (obj.data.library if obj.data is not None else None)
    if linked is not None:
        what = obj.name if obj.library is not None else f"{obj.name}'s mesh"
        return (f"{what} is linked from {linked.name} and cannot be changed here (make it "
                "local first: Object > Relations > Make Local)")
    return None


def _face_indices_edit(obj):
    import bmesh
    bm = bmesh.from_edit_mesh(obj.data)
    bm.faces.ensure_lookup_table()
    return bm, [f.material_index for f in bm.faces]


def assign_material(tx: Transaction, obj, mat) -> int:
    """Add `mat` in a new slot. The faces on the active slot move to it - in Edit Mode the
    selected faces (the active slot's when none is selected) - and every other face keeps
    its material, so the user's per-face assignment survives. The user's materials stay as
    they are; the old assignment is restored on rollback. Returns how many faces moved."""
    problem = can_hold_texture(obj)
    if problem:
        raise ValueError(problem)
    data = obj.data
    old_index = obj.active_material_index
    had_slots = len(obj.material_slots) > 0
    edit = obj.mode == "EDIT"
    from array import array
    if edit:
        bm, old_faces = _face_indices_edit(obj)
        picked = [i for i, f in enumerate(bm.faces) if f.select]
    else:
        polys = data.polygons
        old_faces = array("i", bytes(4 * len(polys)))
        polys.foreach_get("material_index", old_faces)
        picked = []
    if not picked:
        picked = [i for i, m in enumerate(old_faces) if not had_slots or m == old_index]
    data.materials.append(mat)
    slot = len(data.materials) - 1

    def set_faces(values):
        if edit and obj.mode == "EDIT":
            import bmesh
            bm2 = bmesh.from_edit_mesh(data)
            bm2.faces.ensure_lookup_table()
            for f, m in zip(bm2.faces, values):
                f.material_index = m
            bmesh.update_edit_mesh(data)
        else:
            data.polygons.foreach_set("material_index", array("i", values))
            data.update()

    def restore():
        set_faces(list(old_faces))
        data.materials.pop(index=slot)
        obj.active_material_index = old_index
    tx.changed(restore)
    new_faces = list(old_faces)
    for i in picked:
        new_faces[i] = slot
    if new_faces != list(old_faces):
        set_faces(new_faces)
    obj.active_material_index = slot
    return len(picked)


def use_box_projection(mat) -> None:
    """For objects without a UV map: the image texture is box-projected from the object's
    generated coordinates (no UVs needed, nothing changes on the mesh)."""
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    tex = next(n for n in nodes if n.type == "TEX_IMAGE")
    coords = nodes.new("ShaderNodeTexCoord")
    coords.location = (tex.location.x - 240, tex.location.y)
    tex.projection = "BOX"
    tex.projection_blend = 0.2
    links.new(coords.outputs["Generated"], tex.inputs["Vector"])


def keep_image(tx: Transaction, image) -> None:
    """A fake user, so the image survives saving even when nothing else uses it (history
    lists it; extra images of a job; an image replaced in a node)."""
    if image is not None and not image.use_fake_user:
        tx.changed(lambda: setattr(image, "use_fake_user", False))
        image.use_fake_user = True


def _texture_objects(context_info: dict) -> list:
    names = context_info.get("objects") or ([context_info["object"]]
                                            if context_info.get("object") else [])
    return [o for o in (bpy.data.objects.get(n) for n in names) if o is not None]


def apply_texture(context_info: dict, image, tx: Transaction, images=None) -> str:
    """Returns a sentence saying where the image went. `images`: all of the job's images
    (one per object when each selected object gets its own)."""
    images = images or [image]
    mode = context_info.get("target", "NEW_MATERIAL")
    if mode == "IMAGE_NODE":
        mat = bpy.data.materials.get(context_info.get("material") or "")
        node = mat.node_tree.nodes.get(context_info.get("node") or "") if (
            mat is not None and mat.node_tree is not None) else None
        if node is None or node.type != "TEX_IMAGE":
            raise ValueError("the selected Image Texture node is gone")
        old = node.image
        keep_image(tx, old)               # the replaced image stays in the file
        tx.changed(lambda: setattr(node, "image", old))
        node.image = image
        return f"Set the image of {mat.name} > {node.name}"
    objects = _texture_objects(context_info)
    if not objects:
        if show_in_image_editors(image):
            return "No active object: the image is in the Image Editor"
        return "No active object: the image is kept in the file (open it in an Image Editor)"
    for obj in objects:
        problem = can_hold_texture(obj)
        if problem:
            raise ValueError(problem)
    each = context_info.get("objects_mode") == "SELECTED_EACH"
    materials, no_uv = [], []
    for i, obj in enumerate(objects):
        if each or not materials:
            mat = new_texture_material(tx, images[i] if each and i < len(images) else image)
            materials.append(mat)
            mat_no_uv = False
        mat = materials[-1]
        if len(obj.data.uv_layers) == 0:
            no_uv.append(obj.name)
            if not mat_no_uv:
                use_box_projection(mat)
                mat_no_uv = True
        assign_material(tx, obj, mat)
    names = ", ".join(o.name for o in objects)
    if len(materials) == 1:
        where = f"New material {materials[0].name} on {names}"
    else:
        where = f"New materials on {names}"
    if no_uv:
        where += (f"; {', '.join(no_uv)} had no UV map, so the texture is box-projected "
                  "(add UVs and switch the Image Texture node to UV for more control)")
    return where


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
    return "Shown in the Image Editor" if shown else \
        "Image kept in the file (open it in an Image Editor)"


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
