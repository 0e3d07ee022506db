"""Runs INSIDE a fresh Blender (bpy from PyPI) subprocess, like blender_scenarios.py (whose
helpers and runner it reuses): where results land, undo, and the basics artists reach for.

    python blender_scenarios_artist.py --zip Z --out results.json --engine ADDR --slow ADDR
        --tiling ADDR --dead ADDR --short-prompt ADDR --curve ADDR --curve-dir DIR
        --stranger-key FILE --local-port PORT --repo DIR --scenarios install,a,b,...
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blender_scenarios as base  # noqa: E402  (sets up the throwaway profile, imports bpy)
from blender_scenarios import (MOD, addon, connect, cube, image_rgb8, job, rt,  # noqa: E402
                               scenario, settings, state_counts, tick_until, undo_steps)

import bpy  # noqa: E402


def args():
    return base.ARGS


# ---- helpers -----------------------------------------------------------------------------

def rna_dump(struct, prefix: str) -> dict:
    """Every plain property of an RNA struct, as text."""
    out = {}
    for prop in struct.bl_rna.properties:
        if prop.identifier == "rna_type" or prop.type in ("POINTER", "COLLECTION"):
            continue
        try:
            value = getattr(struct, prop.identifier)
        except Exception as exc:        # some properties cannot be read in background mode
            value = f"<{type(exc).__name__}>"
        if hasattr(value, "__len__") and not isinstance(value, str):
            value = tuple(value)
        out[f"{prefix}.{prop.identifier}"] = repr(value)
    return out


def render_dump(scene) -> dict:
    r = scene.render
    out = {}
    for struct, name in ((r, "render"), (r.image_settings, "image_settings"),
                         (scene.view_settings, "view_settings"),
                         (scene.display_settings, "display_settings"),
                         (scene.display, "display"), (scene.display.shading, "shading"),
                         (scene, "scene")):
        out.update(rna_dump(struct, name))
    if hasattr(scene, "cycles"):
        out.update(rna_dump(scene.cycles, "cycles"))
    out.update(rna_dump(bpy.context.view_layer, "view_layer"))
    out.pop("scene.frame_current_final", None)
    return out


def new_mesh_object(name: str, *, uv: bool = True, slots: int = 0):
    import bmesh
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bm.to_mesh(mesh)
    bm.free()
    if uv:
        mesh.uv_layers.new(name="UVMap")
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    for i in range(slots):
        mesh.materials.append(bpy.data.materials.new(f"{name} user {i}"))
    return obj


def activate(obj, *others):
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    bpy.context.view_layer.objects.active = obj
    if obj is not None:
        obj.select_set(True)
    for o in others:
        o.select_set(True)


def generate(op="generate_texture", timeout=20, **kw) -> dict:
    """Run an operator; facts about the refusal or the finished job."""
    out = {}
    slot = {"generate_texture": "texture", "generate_concept": "concept",
            "touch_up": "touchup"}[op]
    before_id = job(slot).job_id if job(slot) else None
    try:
        res = getattr(bpy.ops.zimage, op)(**kw)
    except RuntimeError as exc:         # the operator reported an error
        res = {"CANCELLED"}
        out["report"] = str(exc)
    out["result"] = sorted(res)
    j = job(slot)
    out["sent"] = j is not None and j.job_id != before_id
    if "FINISHED" in res and out["sent"]:
        tick_until(lambda: not job(slot).active, timeout)
        j = job(slot)
        out["phase"] = j.phase
        out["message"] = j.message
        out["params"] = {k: v for k, v in j.params.items()}
        out["error"] = j.error.text if j.error else None
        out["error_code"] = j.error.code if j.error else None
    err = rt().board.last_error
    out["last_error"] = [err.code, err.message, err.hint] if err else None
    return out


def active_slot_image(obj):
    mat = obj.active_material
    tex = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    return tex


# ---- defects -----------------------------------------------------------------------------

@scenario
def undo_step(out):
    """One undo step per applied result; undo takes exactly the result, redo brings it back."""
    connect(args().engine)
    cube()
    settings(prompt="undo step", seed=31)
    bpy.ops.ed.undo_push(message="user edit")
    steps_before = undo_steps()
    before = state_counts()
    r = generate()
    out.update(r)
    steps_after = undo_steps()
    out["steps_before"], out["steps_after"] = steps_before, steps_after
    after = state_counts()
    out["applied"] = after != before
    out["one_step"] = (len(steps_after) == len(steps_before) + 1
                       and steps_after[-1] == "Apply Z-Image Result")
    if not out["one_step"]:
        return          # undoing a change without a step of its own may crash Blender
    bpy.ops.ed.undo()
    out["after_undo"] = state_counts()
    out["undone"] = out["after_undo"] == before
    bpy.ops.ed.redo()
    out["after_redo"] = state_counts()
    out["redone"] = out["after_redo"] == after


@scenario
def capture_restores_settings(out):
    """A capture puts every render setting back exactly (EXR 32-bit, AgX - Punchy, ...)."""
    connect(args().engine)
    scene = bpy.context.scene
    r = scene.render
    r.image_settings.file_format = "OPEN_EXR"
    r.image_settings.color_depth = "32"
    r.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - Punchy"
    scene.view_settings.exposure = 0.25
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1920, 1080, 50
    r.film_transparent = True
    r.filepath = "//renders/frame_"
    before = render_dump(scene)
    settings(prompt="capture", seed=3, width=64, height=64)
    s = scene.zimage
    s.concept_source, s.concept_context, s.concept_placement = "CAMERA", "IMG2IMG", \
        "IMAGE_EDITOR"
    out.update(generate("generate_concept"))
    after = render_dump(scene)
    out["differences"] = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    out["look"], out["depth"] = scene.view_settings.look, r.image_settings.color_depth
    out["n_settings"] = len(before)


@scenario
def edit_mode_faces(out):
    """In Edit Mode the selected faces get the new material, and keep it after Edit Mode."""
    import bmesh
    connect(args().engine)
    obj = new_mesh_object("EditBox", slots=1)
    activate(obj)
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    for i, f in enumerate(bm.faces):
        f.select_set(i in (1, 4))
    bmesh.update_edit_mesh(obj.data)
    settings(prompt="edit mode", seed=12)
    bpy.ops.ed.undo_push(message="faces selected")
    steps_before = undo_steps()
    out.update(generate())
    # in Edit Mode Blender adds an internal memfile step before the edit-mesh step
    out["steps_added"] = [n for n in undo_steps()[len(steps_before):]
                          if not n.startswith("MemFile Internal")]
    bpy.ops.object.mode_set(mode="OBJECT")
    out["faces"] = [p.material_index for p in obj.data.polygons]
    out["slots"] = [s.material.name if s.material else None for s in obj.material_slots]
    # one Ctrl+Z in Edit Mode takes back the material, its slot and the face assignment
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.ed.undo_push(message="back in edit mode")
    bpy.ops.ed.undo()
    bpy.ops.ed.undo()
    obj = bpy.data.objects["EditBox"]
    out["undo_mode"] = obj.mode
    bpy.ops.object.mode_set(mode="OBJECT")
    out["faces_after_undo"] = [p.material_index for p in obj.data.polygons]
    out["slots_after_undo"] = [s.material.name if s.material else None
                               for s in obj.material_slots]


@scenario
def per_face_slots(out):
    """Faces on slots [0,1,2,0,1,2] with slot 1 active: only slot 1's faces move."""
    connect(args().engine)
    obj = new_mesh_object("ThreeSlots", slots=3)
    obj.data.polygons.foreach_set("material_index", [0, 1, 2, 0, 1, 2])
    obj.data.update()
    obj.active_material_index = 1
    activate(obj)
    settings(prompt="per face", seed=13)
    out.update(generate())
    out["faces"] = [p.material_index for p in obj.data.polygons]
    out["slots"] = [s.material.name if s.material else None for s in obj.material_slots]


@scenario
def refused_targets(out):
    """Objects that cannot hold a material (curve, empty, light, camera) and Camera
    Background without a camera are refused before anything is sent."""
    connect(args().engine)
    settings(prompt="refuse me", seed=14)
    curve_data = bpy.data.curves.new("Path", "CURVE")
    curve_data.splines.new("POLY").points.add(3)
    curve_data.materials.append(bpy.data.materials.new("curve user"))
    targets = {
        "curve": bpy.data.objects.new("CurveObj", curve_data),
        "empty": bpy.data.objects.new("EmptyObj", None),
        "light": bpy.data.objects.new("LightObj", bpy.data.lights.new("L", "POINT")),
        "camera": bpy.data.objects.new("CameraObj", bpy.data.cameras.new("C")),
    }
    for o in targets.values():
        bpy.context.scene.collection.objects.link(o)
    for kind, obj in targets.items():
        activate(obj)
        before = state_counts()
        slots = len(obj.material_slots)
        r = generate()
        r["nothing_changed"] = before == state_counts() and len(obj.material_slots) == slots
        out[kind] = r
    # Camera Background without a camera
    cube()
    scene = bpy.context.scene
    camera = scene.camera
    scene.camera = None
    s = scene.zimage
    s.concept_source, s.concept_context, s.concept_placement = "VIEW", "NONE", "CAMERA_BG"
    try:
        out["camera_bg"] = generate("generate_concept")
    finally:
        scene.camera = camera
        s.concept_placement = "IMAGE_EDITOR"


@scenario
def job_belongs_to_file(out):
    """A job started in file A never lands in file B (opened while it ran)."""
    folder = tempfile.mkdtemp(prefix="zimage_files_")
    a, b = os.path.join(folder, "a.blend"), os.path.join(folder, "b.blend")
    bpy.ops.wm.save_as_mainfile(filepath=b, copy=True)
    bpy.ops.wm.save_as_mainfile(filepath=a)
    connect(args().slow)
    cube()
    settings(prompt="file a texture", seed=15, steps=12)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: job("texture").step >= 1, 15), "never started"
    j = job("texture")
    bpy.ops.wm.open_mainfile(filepath=b)
    before = state_counts()
    tick_until(lambda: False, 3.0)      # the engine finishes meanwhile
    out["phase"] = j.phase
    out["message"] = j.message
    out["file"] = bpy.data.filepath
    out["b_unchanged"] = before == state_counts()
    out["before"], out["after"] = before, state_counts()


@scenario
def images_kept_on_save(out):
    """Extra images of a job, a concept image with no Image Editor open, and the image a
    node had before are all still there after save and reopen; so are history's images."""
    connect(args().engine)
    cube()
    settings(prompt="two images", seed=16, num_images=2)
    r = generate()
    out["two"] = r
    names = list(job("texture").context.get("result_images") or [])
    settings(prompt="concept kept", seed=17, num_images=1)
    s = bpy.context.scene.zimage
    s.concept_source, s.concept_context, s.concept_placement = "VIEW", "NONE", "IMAGE_EDITOR"
    r = generate("generate_concept")
    out["concept"] = r
    names += list(job("concept").context.get("result_images") or [])
    obj = cube()
    mat = obj.material_slots[0].material
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = bpy.data.images.new("artist image", 8, 8)
    mat.node_tree.nodes.active = node
    obj.active_material_index = 0
    settings(prompt="node image", seed=18, texture_target="IMAGE_NODE")
    try:
        out["node"] = generate()
    finally:
        bpy.context.scene.zimage.texture_target = "NEW_MATERIAL"
    names.append("artist image")
    path = os.path.join(tempfile.mkdtemp(prefix="zimage_save_"), "kept.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    present = set(bpy.data.images.keys())
    out["names"] = names
    out["missing"] = [n for n in names if n not in present]
    out["history_missing"] = [h.image_name for h in bpy.context.scene.zimage.history
                              if h.image_name not in present]


@scenario
def no_uv_map(out):
    """An object without UVs gets a box-projected texture, and the message says so."""
    connect(args().engine)
    obj = new_mesh_object("NoUV", uv=False)
    activate(obj)
    settings(prompt="no uv", seed=19)
    out.update(generate())
    tex = active_slot_image(obj)
    links = obj.active_material.node_tree.links
    out["projection"] = tex.projection
    out["generated_linked"] = any(lk.to_node == tex and lk.to_socket.name == "Vector"
                                  and lk.from_socket.name == "Generated" for lk in links)
    out["uv_layers"] = len(obj.data.uv_layers)


@scenario
def prompt_limits(out):
    """A prompt over the engine's limit (from its welcome) is refused before sending."""
    connect(args().engine)
    cube()
    before = state_counts()
    settings(prompt="a" * 4001, seed=20)
    out["default"] = generate()
    connect(args().short_prompt)        # an engine whose welcome says 100 characters
    settings(prompt="b" * 150, seed=20)
    out["short"] = generate()
    out["welcome_limit"] = (rt().board.welcome.get("limits") or {}).get("max_prompt_chars")
    out["nothing_changed"] = before == state_counts()
    settings(prompt="short enough", seed=20)
    out["fine"] = generate()


@scenario
def curve_keys(out):
    """An engine with CurveZMQ keys: the key files in the preferences work; a key it does
    not know is reported as such, quickly."""
    prefs = bpy.context.preferences.addons[MOD].preferences
    out["prefs"] = [p for p in ("curve_server_key", "curve_client_key")
                    if p in prefs.bl_rna.properties]
    keys = args().curve_dir
    prefs.curve_server_key = os.path.join(keys, "server.key")
    prefs.curve_client_key = os.path.join(keys, "clients", "alice.key_secret")
    try:
        connect(args().curve)
        cube()
        settings(prompt="with keys", seed=21)
        out["authorized"] = generate()
        prefs.curve_client_key = args().stranger_key
        r = rt()
        r.disconnect()
        r.connect(args().curve)
        t0 = time.monotonic()
        out["stranger"] = generate(timeout=15)
        out["stranger_seconds"] = round(time.monotonic() - t0, 2)
        out["auth_problem"] = r.auth_problem
        prefs.curve_client_key = os.path.join(keys, "clients", "alice.key")   # public only
        r.disconnect()
        out["public_only"] = generate()
    finally:
        prefs.curve_server_key = prefs.curve_client_key = ""
        rt().disconnect()


@scenario
def notices_and_temp_folders(out):
    """After a local engine answers no 'Engine starting...' is left; a failed capture leaves
    no temporary folder."""
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = f"tcp://127.0.0.1:{args().local_port}"
    prefs.engine_python = sys.executable
    prefs.engine_dir = args().repo
    prefs.standin = True
    prefs.extra_args = "--min-side 64"
    r = rt()
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}
    ok = tick_until(lambda: r.connection == "connected", 60)
    out["connected"] = ok
    tick_until(lambda: False, 0.3)
    out["notice"] = r.notice
    bpy.ops.zimage.stop_engine()
    prefs.engine_python = ""
    # a capture that fails (no camera) leaves no folder behind
    capture = addon("blender.capture")
    private = tempfile.mkdtemp(prefix="zimage_tmp_")
    old_tempdir, tempfile.tempdir = tempfile.tempdir, private
    scene = bpy.context.scene
    camera, scene.camera = scene.camera, None
    try:
        capture.capture_color(bpy.context, scene, "CAMERA", 64, 64)
        out["capture_raised"] = False
    except Exception as exc:
        out["capture_raised"] = str(exc)
    finally:
        tempfile.tempdir = old_tempdir
        scene.camera = camera
    out["left_over"] = os.listdir(private)


# ---- papercuts ---------------------------------------------------------------------------

@scenario
def refused_fast(out):
    """Nothing listening on a loopback address: 'not running' within about a second; the
    error box clears once an engine answers."""
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = args().dead
    prefs.auto_start = False
    r = rt()
    r.disconnect()
    r.connect(args().dead)
    out["connect_timeout"] = r.board.connect_timeout
    cube()
    settings(prompt="nobody home", seed=22)
    t0 = time.monotonic()
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    tick_until(lambda: not job("texture").active, 12)
    out["seconds"] = round(time.monotonic() - t0, 2)
    j = job("texture")
    out["code"] = j.error.code if j.error else None
    out["text"] = j.error.text if j.error else None
    out["last_error_before"] = r.board.last_error.code if r.board.last_error else None
    connect(args().engine)
    out["last_error_after"] = r.board.last_error.code if r.board.last_error else None
    out["job_error_after"] = j.error.code if j.error else None


@scenario
def concept_camera_aspect(out):
    """Concept images take the camera's aspect by default."""
    connect(args().engine)
    scene = bpy.context.scene
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1920, 1080, 100
    s = settings(prompt="wide concept", seed=23)
    s.size_preset = "512"
    out["default_match"] = s.concept_match_camera
    s.concept_source, s.concept_context, s.concept_placement = "VIEW", "NONE", "IMAGE_EDITOR"
    g = generate("generate_concept")
    out["phase"] = g.get("phase")
    out["size"] = [g["params"]["width"], g["params"]["height"]] if "params" in g else None


@scenario
def tooltips_labels_menus(out):
    """Every property and operator has a one-line tooltip; labels; developer section; menu
    entries in the Image Editor and 3D view; a Shader Editor panel."""
    missing, multiline = [], []

    def check_props(cls_name, rna):
        for prop in rna.properties:
            if prop.identifier in ("rna_type", "name", "bl_idname"):
                continue
            desc = prop.description
            if not desc.strip():
                missing.append(f"{cls_name}.{prop.identifier}")
            if "\n" in desc:
                multiline.append(f"{cls_name}.{prop.identifier}")
    for name in dir(bpy.types):
        if not name.startswith("ZIMAGE_"):
            continue
        cls = getattr(bpy.types, name)
        if "_OT_" in name:
            rna = getattr(bpy.ops.zimage, cls.bl_idname.split(".", 1)[1]).get_rna_type()
            desc = rna.description
            if not desc.strip():
                missing.append(name)
            if "\n" in desc:
                multiline.append(name)
            check_props(name, rna)
    settings_rna = bpy.context.scene.zimage.bl_rna
    check_props("settings", settings_rna)
    check_props("history_item", settings_rna.properties["history"].fixed_type)
    check_props("preferences", bpy.context.preferences.addons[MOD].preferences.bl_rna)
    out["checked"] = len(settings_rna.properties)
    out["missing"], out["multiline"] = missing, multiline
    props = settings_rna.properties
    out["control_label"] = props["control_scale"].name
    out["defaults"] = [props["prompt"].default, props["seamless"].default]
    # the preferences: Stand-in Pipeline below a "Developer" label
    log = []
    prefs = bpy.context.preferences.addons[MOD].preferences

    class Proxy:
        layout = base.FakeLayout(log)

        def __getattr__(self, name):
            return getattr(prefs, name)
    type(prefs).draw(Proxy(), bpy.context)
    labels = [i for i, e in enumerate(log) if e[0] == "label" and
              "Developer" in str(e[2].get("text", ""))]
    standin = [i for i, e in enumerate(log) if e == ("prop", "standin")]
    keys = [e[1] for e in log if e[0] == "prop" and e[1].startswith("curve_")]
    out["developer_before_standin"] = bool(labels and standin and labels[0] < standin[0])
    out["prefs_key_props"] = keys
    ops = addon("blender.operators")
    out["image_menu"] = ops.menu_image in bpy.types.IMAGE_MT_image._dyn_ui_initialize()
    out["object_menu"] = ops.menu_object in bpy.types.VIEW3D_MT_object._dyn_ui_initialize()
    log = []
    ops.menu_image(type("M", (), {"layout": base.FakeLayout(log)})(), bpy.context)
    ops.menu_object(type("M", (), {"layout": base.FakeLayout(log)})(), bpy.context)
    out["menu_ops"] = [e[1] for e in log if e[0] == "operator"]
    out["node_panels"] = sorted(n for n in dir(bpy.types) if n.startswith("ZIMAGE_PT_node"))
    errors = addon("core.errors")
    import re
    out["hints"] = [h for _m, h in errors._HINTS.values() if re.search(r"Z-Image(?! Studio)", h)]


# ---- basics ------------------------------------------------------------------------------

def _seam(rgb, w, h, axis):
    """Mean |difference| across the wrap-around seam, and the largest mean difference
    between neighbouring columns (rows) inside the image."""
    def px(x, y):
        i = (y * w + x) * 3
        return rgb[i:i + 3]

    def diff(pairs):
        total = n = 0
        for a, b in pairs:
            total += sum(abs(p - q) for p, q in zip(a, b))
            n += 3
        return total / n
    if axis == "x":
        seam = diff((px(w - 1, y), px(0, y)) for y in range(h))
        inner = max(diff((px(x, y), px(x + 1, y)) for y in range(h)) for x in range(w - 1))
    else:
        seam = diff((px(x, h - 1), px(x, 0)) for x in range(w))
        inner = max(diff((px(x, y), px(x, y + 1)) for x in range(w)) for y in range(h - 1))
    return seam, inner


@scenario
def seamless(out):
    """Seamless X and Y: the request carries `tile`, and the texture's opposite edges
    continue each other (a stand-in that returns a tiling image)."""
    connect(args().engine)                  # this engine has no `tile`
    obj = cube()
    settings(prompt="tiles", seed=24)
    bpy.context.scene.zimage.seamless = "XY"
    out["no_cap"] = generate()
    connect(args().tiling)
    activate(obj)
    out["tiled"] = generate()
    img = active_slot_image(obj).image
    w, h = img.size
    rgb = image_rgb8(img)
    out["x"], out["y"] = _seam(rgb, w, h, "x"), _seam(rgb, w, h, "y")
    bpy.context.scene.zimage.seamless = "NONE"
    out["plain"] = generate()
    img = active_slot_image(obj).image
    rgb = image_rgb8(img)
    out["plain_x"] = _seam(rgb, w, h, "x")


@scenario
def touch_up(out):
    """Paint a mask (a mask image, white = repaint) over a texture; the engine inpaints;
    pixels outside the mask are unchanged, and the texture is replaced as one undo step."""
    connect(args().tiling)                  # has `inpaint`
    obj = cube()
    settings(prompt="base texture", seed=25)
    out["base"] = generate()
    node = active_slot_image(obj)
    old = node.image
    w, h = old.size
    original = image_rgb8(old)
    mask = bpy.data.images.new("touch mask", w, h, alpha=False)
    x0, x1, y0, y1 = w // 4, w // 2, h // 8, h // 2        # top-down rectangle
    floats = [0.0] * (w * h * 4)
    for y_top in range(h):
        row = h - 1 - y_top                                # Blender rows are bottom-up
        for x in range(w):
            v = 1.0 if (x0 <= x < x1 and y0 <= y_top < y1) else 0.0
            i = (row * w + x) * 4
            floats[i:i + 4] = [v, v, v, 1.0]
    mask.pixels.foreach_set(floats)
    s = bpy.context.scene.zimage
    s.touchup_mask, s.touchup_mask_image = "IMAGE", mask
    settings(prompt="moss patch", seed=26)
    bpy.ops.ed.undo_push(message="mask painted")
    steps_before = undo_steps()
    name = old.name
    r = generate("touch_up", image=name)
    out["touch"] = r
    out["steps_added"] = undo_steps()[len(steps_before) - 1:]
    out["one_step"] = len(undo_steps()) == len(steps_before) + 1
    new = active_slot_image(obj).image
    out["same_name"] = new.name == name
    out["old_kept"] = (name[:40] + " before touch-up") in bpy.data.images
    rgb = image_rgb8(new)
    sys.path.insert(0, args().repo)
    from engine.standin import pattern_image
    want = [int(v) for v in pattern_image(26, w, h).reshape(-1)]
    outside_same = inside_engine = True
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 3
            inside = x0 <= x < x1 and y0 <= y < y1
            if inside and rgb[i:i + 3] != want[i:i + 3]:
                inside_engine = False
            if not inside and rgb[i:i + 3] != original[i:i + 3]:
                outside_same = False
    out["outside_same"], out["inside_engine"] = outside_same, inside_engine
    out["inside_differs_from_before"] = rgb != original


@scenario
def touch_up_alpha(out):
    """The mask as erased alpha in the texture itself (Erase Alpha brush in Paint mode)."""
    connect(args().tiling)
    obj = cube()
    settings(prompt="alpha base", seed=35)
    out["base"] = generate()
    image = active_slot_image(obj).image
    w, h = image.size
    original = image_rgb8(image)
    floats = list(image.pixels)
    x0, x1, y0, y1 = w // 2, w, h // 2, h          # the bottom-right quarter, top-down
    for y_top in range(y0, y1):
        row = h - 1 - y_top
        for x in range(x0, x1):
            floats[(row * w + x) * 4 + 3] = 0.0
    image.pixels.foreach_set(floats)
    out["alpha_kept"] = min(image.pixels[:][3::4]) == 0.0
    s = bpy.context.scene.zimage
    s.touchup_mask = "ALPHA"
    settings(prompt="alpha patch", seed=36)
    out["touch"] = generate("touch_up", image=image.name)
    rgb = image_rgb8(active_slot_image(obj).image)
    sys.path.insert(0, args().repo)
    from engine.standin import pattern_image
    want = [int(v) for v in pattern_image(36, w, h).reshape(-1)]
    inside_ok = outside_ok = True
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 3
            inside = x0 <= x < x1 and y0 <= y < y1
            if inside and rgb[i:i + 3] != want[i:i + 3]:
                inside_ok = False
            if not inside and rgb[i:i + 3] != original[i:i + 3]:
                outside_ok = False
    out["inside_engine"], out["outside_same"] = inside_ok, outside_ok
    s.touchup_mask = "IMAGE"


@scenario
def selected_objects(out):
    """Every selected mesh object: one shared image and material, or one each."""
    connect(args().engine)
    a, b = new_mesh_object("SelA"), new_mesh_object("SelB")
    obj = cube()
    activate(obj, a, b)
    s = settings(prompt="shared", seed=27)
    s.texture_objects = "SELECTED_SHARED"
    out["shared"] = generate()
    out["shared_mats"] = sorted({o.active_material.name for o in (obj, a, b)})
    out["shared_images"] = len(job("texture").context.get("result_images") or [])
    s = settings(prompt="each", seed=28)
    s.texture_objects = "SELECTED_EACH"
    out["each"] = generate()
    out["each_mats"] = sorted({o.active_material.name for o in (obj, a, b)})
    out["each_images"] = sorted({active_slot_image(o).image.name for o in (obj, a, b)})
    s.texture_objects = "ACTIVE"


@scenario
def render_capture(out):
    """From the render: the scene's own engine (Cycles here) renders through the camera for
    image-to-image; depth through the same camera; every setting comes back."""
    connect(args().engine)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.device = "CPU"
    before = render_dump(scene)
    s = settings(prompt="from render", seed=29, width=64, height=64)
    s.concept_match_camera = False
    s.concept_source, s.concept_context, s.concept_placement = "RENDER", "IMG2IMG", \
        "IMAGE_EDITOR"
    out["img2img"] = generate("generate_concept", timeout=60)
    core_pixels = addon("core.pixels")
    w, h, c, rows = core_pixels.decode_png(rt().last_capture)
    out["capture"] = [w, h, c, sum(rows) / len(rows)]
    s.concept_context = "DEPTH"
    out["depth"] = generate("generate_concept")
    w, h, c, rows = core_pixels.decode_png(rt().last_capture)
    out["depth_capture"] = [w, h, max(rows), min(rows)]
    grey = rows[0::3]
    out["depth_centre"], out["depth_corner"] = grey[(h // 2) * w + w // 2], grey[0]
    # the same camera by ray casting: the render's Depth pass should agree
    cast = addon("blender.capture").capture_depth(bpy.context, scene, "CAMERA", w, h)
    cast_grey = core_pixels.decode_png(cast)[3][0::3]
    out["depth_vs_raycast"] = sum(abs(a - b) for a, b in zip(grey, cast_grey)) / len(grey)
    after = render_dump(scene)
    out["differences"] = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    out["engine_after"] = scene.render.engine
    s.concept_match_camera = True


if __name__ == "__main__":
    sys.exit(base.main(extra_args=(("--tiling", ""), ("--short-prompt", ""), ("--curve", ""),
                                   ("--curve-dir", ""), ("--stranger-key", ""))))
