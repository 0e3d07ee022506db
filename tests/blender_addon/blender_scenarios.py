"""Runs INSIDE a fresh Blender (bpy from PyPI) subprocess, started by the tests:

    python blender_scenarios.py --zip Z --out results.json --engine ADDR [--victim ADDR
        --victim-pid PID] [--dead ADDR] [--local-port PORT] [--repo DIR] [--model DIR]
        --scenarios a,b,...

Installs the BUILT zip as an extension into a throwaway user profile (BLENDER_USER_RESOURCES
is set before bpy is imported), then runs each scenario and writes one JSON object per
scenario: {"ok": bool, "error": traceback or None, ...facts the pytest side checks}.
Background Blender fires no timers, so scenarios drive the add-on's pump tick() directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

PROFILE = tempfile.mkdtemp(prefix="zimage_profile_")
os.environ["BLENDER_USER_RESOURCES"] = PROFILE

import bpy  # noqa: E402

MOD = "bl_ext.user_default.zimage_studio"
ARGS = None
RESULTS: dict[str, dict] = {}
TABLE: dict = {}        # every @scenario by name (other scenario modules add theirs)


def addon(name: str):
    return sys.modules[f"{MOD}.{name}"]


def rt():
    return addon("blender.runtime").get()


def tick_until(pred, timeout: float = 10.0, interval: float = 0.02) -> bool:
    pump = addon("blender.pump")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pump.tick()
        if pred():
            return True
        time.sleep(interval)
    pump.tick()
    return pred()


def connect(address: str) -> None:
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = address
    prefs.auto_start = False
    r = rt()
    r.disconnect()
    r.connect(address)
    assert tick_until(lambda: r.connection == "connected", 15), f"no welcome from {address}"


def settings(**kw):
    s = bpy.context.scene.zimage
    s.size_preset = "CUSTOM"
    values = dict(prompt="red brick wall", width=64, height=64, steps=3, seed_random=False,
                  seed=7, num_images=1)
    values.update(kw)
    for k, v in values.items():
        setattr(s, k, v)
    return s


def job(slot: str):
    return rt().board.jobs.get(slot)


def cube():
    obj = bpy.data.objects["Cube"]
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def image_rgb8(image) -> list[int]:
    """Pixels as RGB8, rows top-down (Blender stores bottom-up floats)."""
    w, h = image.size
    px = list(image.pixels)
    rows = []
    for y in range(h - 1, -1, -1):
        row = px[y * w * 4:(y + 1) * w * 4]
        for x in range(w):
            rows.extend(round(v * 255) for v in row[x * 4:x * 4 + 3])
    return rows


def state_counts() -> dict:
    return {"images": sorted(i.name for i in bpy.data.images if i.name != "Z-Image Preview"),
            "materials": sorted(m.name for m in bpy.data.materials),
            "objects": sorted(o.name for o in bpy.data.objects),
            "cube_slots": [s.material.name if s.material else None
                           for s in bpy.data.objects["Cube"].material_slots],
            "history": len(bpy.context.scene.zimage.history)}


def undo_steps() -> list[str]:
    """The names of the steps on Blender's undo stack (WindowManager.print_undo_steps writes
    them to the C stdout; it needs a non-empty stack, so scenarios push a first step)."""
    fd = sys.stdout.fileno()
    sys.stdout.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(fd)
        os.dup2(tmp.fileno(), fd)
        try:
            bpy.context.window_manager.print_undo_steps()
        finally:
            os.dup2(saved, fd)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    return [line.split("name='", 1)[1].rstrip("'") for line in text.splitlines()
            if "name='" in line]


def scenario(fn):
    def run():
        out = {"ok": False, "error": None}
        t0 = time.monotonic()
        try:
            fn(out)
            out["ok"] = True
        except Exception:
            out["error"] = traceback.format_exc()
        out["seconds"] = round(time.monotonic() - t0, 2)
        RESULTS[fn.__name__] = out
    run.__name__ = fn.__name__
    TABLE[fn.__name__] = run
    return run


# ---- lifecycle ---------------------------------------------------------------------------

@scenario
def install(out):
    res = bpy.ops.extensions.package_install_files(filepath=ARGS.zip, repo="user_default",
                                                   enable_on_install=True)
    out["result"] = sorted(res)
    out["enabled"] = MOD in bpy.context.preferences.addons
    out["has_props"] = hasattr(bpy.types.Scene, "zimage")
    out["has_operator"] = hasattr(bpy.ops.zimage, "generate_texture") and \
        bpy.ops.zimage.generate_texture.idname() == "ZIMAGE_OT_generate_texture"
    site = os.path.join(PROFILE, "extensions", ".local", "lib",
                        f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    out["wheel_installed"] = os.path.isdir(os.path.join(site, "zmq"))
    client_mod = sys.modules.get(f"{MOD}.vendor.protocol.client")
    out["vendored_client"] = client_mod is not None or __import__(
        f"{MOD}.vendor.protocol.client", fromlist=["x"]) is not None
    out["runtime"] = rt() is not None
    out["panels"] = sorted(c for c in dir(bpy.types) if c.startswith("ZIMAGE_PT_"))


@scenario
def disable_enable(out):
    import addon_utils
    pump = addon("blender.pump")
    tick = pump.tick
    bpy.ops.preferences.addon_disable(module=MOD)
    out["disabled_props_gone"] = not hasattr(bpy.types.Scene, "zimage")
    out["disabled_ops_gone"] = not hasattr(bpy.types, "ZIMAGE_OT_generate_texture")
    out["disabled_panels_gone"] = not any(c.startswith("ZIMAGE_") for c in dir(bpy.types))
    out["disabled_timer_gone"] = not bpy.app.timers.is_registered(tick)
    out["disabled_runtime_gone"] = sys.modules[f"{MOD}.blender.runtime"].get() is None
    bpy.ops.preferences.addon_enable(module=MOD)
    out["reenabled"] = MOD in bpy.context.preferences.addons and hasattr(bpy.types.Scene,
                                                                         "zimage")
    out["reenabled_runtime"] = rt() is not None
    out["addon_utils_state"] = addon_utils.check(MOD)[1]


# ---- generation --------------------------------------------------------------------------

@scenario
def texture(out):
    connect(ARGS.engine)
    obj = cube()
    user_mat = obj.material_slots[0].material
    user_nodes = len(user_mat.node_tree.nodes) if user_mat and user_mat.node_tree else 0
    before = state_counts()
    settings(prompt="red brick wall", seed=7, width=64, height=64, steps=3)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    out["phase_after_submit"] = job("texture").phase
    assert tick_until(lambda: not job("texture").active, 20)
    j = job("texture")
    out["phase"] = j.phase
    out["message"] = j.message
    out["error"] = j.error.text if j.error else None
    after = state_counts()
    out["before"], out["after"] = before, after
    names = j.context.get("result_images") or []
    out["result_images"] = names
    image = bpy.data.images[names[0]]
    out["image"] = {"name": image.name, "size": list(image.size), "packed":
                    image.packed_file is not None, "colorspace":
                    image.colorspace_settings.name,
                    "props": {k: image[k] for k in image.keys() if k.startswith("zimage_")}}
    core_pixels = addon("core.pixels")
    png = bytes(image.packed_file.data)
    out["png_text"] = core_pixels.read_png_text(png)
    out["rgb8"] = image_rgb8(image)
    mat = obj.active_material
    out["new_material"] = mat.name
    tex = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    out["linked_base_color"] = any(
        lk.from_node == tex and lk.to_node == bsdf and lk.to_socket.name == "Base Color"
        for lk in mat.node_tree.links)
    out["tex_image"] = tex.image.name if tex.image else None
    out["user_material_intact"] = (obj.material_slots[0].material == user_mat and
                                   len(user_mat.node_tree.nodes) == user_nodes)
    faces = [p.material_index for p in obj.data.polygons]
    out["faces_on_new_slot"] = set(faces) == {len(obj.material_slots) - 1}
    out["history"] = [dict(prompt=h.prompt, seed=h.seed, steps=h.steps, width=h.width,
                           height=h.height, model=h.model, image=h.image_name)
                      for h in bpy.context.scene.zimage.history]


@scenario
def history_recall(out):
    s = settings(prompt="something else", seed=99, steps=5, seed_random=True)
    assert bpy.ops.zimage.history_recall(index=0) == {"FINISHED"}
    out["recalled"] = dict(prompt=s.prompt, seed=s.seed, steps=s.steps, width=s.width,
                           height=s.height, seed_random=s.seed_random)
    before = len(bpy.data.materials)
    cube()
    assert bpy.ops.zimage.history_apply(index=0) == {"FINISHED"}
    out["reapply_new_material"] = len(bpy.data.materials) == before + 1
    out["reapply_image"] = [n for n in bpy.context.active_object.active_material.node_tree.nodes
                            if n.type == "TEX_IMAGE"][0].image.name


@scenario
def image_node_target(out):
    obj = cube()
    mat = obj.material_slots[0].material
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    mat.node_tree.nodes.active = node
    obj.active_material_index = 0
    mats_before = len(bpy.data.materials)
    settings(prompt="mossy stone", seed=11, texture_target="IMAGE_NODE")
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 20)
    out["phase"] = job("texture").phase
    out["node_image"] = node.image.name if node.image else None
    out["no_new_material"] = len(bpy.data.materials) == mats_before
    bpy.context.scene.zimage.texture_target = "NEW_MATERIAL"
    mat.node_tree.nodes.remove(node)


@scenario
def preview_updates(out):
    connect(ARGS.slow)
    settings(prompt="preview test", seed=21, steps=6)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    seen = []
    pump = addon("blender.pump")
    end = time.monotonic() + 20
    last_version = 0
    while time.monotonic() < end and job("texture").active:
        pump.tick()
        j = job("texture")
        if j.preview_version != last_version:
            last_version = j.preview_version
            img = bpy.data.images.get("Z-Image Preview")
            px = list(img.pixels[:3000]) if img else []
            seen.append({"version": j.preview_version, "step": j.step,
                         "sum": round(sum(px), 3), "size": list(img.size) if img else None,
                         "progress": round(j.progress, 3), "status": j.status_text()})
        time.sleep(0.02)
    out["previews"] = seen
    out["phase"] = job("texture").phase


@scenario
def cancel(out):
    connect(ARGS.slow)
    before = state_counts()
    settings(prompt="cancel me", seed=5, steps=40)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: job("texture").step >= 1, 15), "never started"
    j = job("texture")
    job_id = j.job_id
    assert bpy.ops.zimage.cancel(slot="texture") == {"FINISHED"}
    out["phase_immediately"] = j.phase
    out["can_submit_immediately"] = rt().board.can_submit("texture")
    out["poll_generate"] = bpy.ops.zimage.generate_texture.poll()
    # the engine's cancelled event must arrive and be ignored; nothing must be applied
    client_events = []
    end = time.monotonic() + 3
    while time.monotonic() < end:
        addon("blender.pump").tick()
        time.sleep(0.05)
    out["job_phase_later"] = job("texture").phase
    out["same_job"] = job("texture").job_id == job_id
    out["before"], out["after"] = before, state_counts()
    out["events"] = client_events


@scenario
def encode_off_thread(out):
    """The result's PNG is encoded on the runtime's worker thread, not in the pump's tick;
    a cancel while it encodes applies nothing."""
    import threading
    connect(ARGS.engine)
    cube()
    apply_mod = addon("blender.apply")
    real = apply_mod.encode_results
    threads, gate = [], threading.Event()

    def gated(job, model):
        threads.append(threading.current_thread().name)
        gate.wait(10)
        return real(job, model)
    apply_mod.encode_results = gated
    try:
        settings(prompt="off thread", seed=41)
        assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
        assert tick_until(lambda: bool(threads) or not job("texture").active, 20)
        out["waits_while_encoding"] = job("texture").active and rt().busy
        gate.set()
        assert tick_until(lambda: not job("texture").active, 20)
        out["threads"] = threads[:]
        out["phase"] = job("texture").phase
        out["applied"] = bool(job("texture").context.get("result_images"))
        out["no_encoded_left"] = "encoded" not in job("texture").context
        # cancel while encoding: nothing is applied
        gate.clear()
        del threads[:]
        before = state_counts()
        settings(prompt="cancel while encoding", seed=42)
        assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
        assert tick_until(lambda: bool(threads) or not job("texture").active, 20)
        out["encoding_when_cancelled"] = bool(threads) and job("texture").active
        assert bpy.ops.zimage.cancel(slot="texture") == {"FINISHED"}
        gate.set()
        tick_until(lambda: False, 0.5)
        out["cancelled_phase"] = job("texture").phase
        out["cancel_applied_nothing"] = before == state_counts()
    finally:
        gate.set()
        apply_mod.encode_results = real


@scenario
def concept_img2img(out):
    connect(ARGS.engine)
    scene = bpy.context.scene
    r = scene.render
    render_before = (r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage,
                     r.filepath, r.image_settings.file_format, r.film_transparent,
                     scene.view_settings.view_transform, scene.display.shading.color_type)
    settings(prompt="castle on a hill", seed=3, width=80, height=64)
    scene.zimage.concept_match_camera = False       # the size above, not the camera's
    scene.zimage.concept_source = "CAMERA"
    scene.zimage.concept_context = "IMG2IMG"
    scene.zimage.concept_placement = "CAMERA_BG"
    bg_before = len(scene.camera.data.background_images)
    assert bpy.ops.zimage.generate_concept() == {"FINISHED"}
    render_after = (r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage,
                    r.filepath, r.image_settings.file_format, r.film_transparent,
                    scene.view_settings.view_transform, scene.display.shading.color_type)
    out["render_restored"] = render_before == render_after
    out["render_before"], out["render_after"] = list(map(str, render_before)), list(
        map(str, render_after))
    cap = rt().last_capture
    core_pixels = addon("core.pixels")
    w, h, c, rows = core_pixels.decode_png(cap)
    out["capture_size"] = [w, h, c]
    out["capture_mean"] = sum(rows) / len(rows)
    out["sent_params"] = job("concept").params
    assert tick_until(lambda: not job("concept").active, 20)
    out["phase"] = job("concept").phase
    out["error"] = job("concept").error.text if job("concept").error else None
    bgs = scene.camera.data.background_images
    out["bg_added"] = len(bgs) == bg_before + 1
    out["bg_image"] = bgs[-1].image.name if len(bgs) else None
    out["show_bg"] = scene.camera.data.show_background_images
    out["result_images"] = job("concept").context.get("result_images")
    img = bpy.data.images[out["result_images"][0]]
    out["rgb8"] = image_rgb8(img)
    out["size"] = list(img.size)


@scenario
def concept_depth(out):
    connect(ARGS.engine)
    scene = bpy.context.scene
    settings(prompt="depth castle", seed=4, width=64, height=64)
    scene.zimage.concept_match_camera = False
    scene.zimage.concept_context = "DEPTH"
    scene.zimage.concept_placement = "REFERENCE"
    objs_before = set(o.name for o in bpy.data.objects)
    assert bpy.ops.zimage.generate_concept() == {"FINISHED"}
    core_pixels = addon("core.pixels")
    w, h, c, rows = core_pixels.decode_png(rt().last_capture)
    grey = rows[0::3]
    out["depth_size"] = [w, h, c]
    out["depth_max"], out["depth_min"] = max(grey), min(grey)
    out["depth_centre"] = grey[(h // 2) * w + w // 2]
    out["depth_corner"] = grey[0]
    out["sent_params"] = {k: v for k, v in job("concept").params.items()}
    assert tick_until(lambda: not job("concept").active, 20)
    out["phase"] = job("concept").phase
    out["error"] = job("concept").error.text if job("concept").error else None
    new = [bpy.data.objects[n] for n in set(o.name for o in bpy.data.objects) - objs_before]
    out["new_objects"] = [(o.type, o.empty_display_type, o.data.name if o.data else None)
                          for o in new]


@scenario
def unsupported_size(out):
    connect(ARGS.engine)
    before = state_counts()
    settings(width=100, height=64)
    try:
        res = bpy.ops.zimage.generate_texture()
    except RuntimeError as exc:     # operator reported an error
        res = {"CANCELLED"}
        out["report"] = str(exc)
    out["result"] = sorted(res)
    err = rt().board.last_error
    out["code"] = err.code if err else None
    out["message"] = err.text if err else None
    out["nothing_changed"] = before == state_counts()
    out["no_job"] = rt().board.active("texture") is None


@scenario
def free_vram(out):
    connect(ARGS.engine)
    r = rt()
    out["caps_have_unload"] = "unload" in (r.board.welcome or {}).get("caps", [])
    out["poll"] = bpy.ops.zimage.free_vram.poll()
    out["result"] = sorted(bpy.ops.zimage.free_vram())
    out["noticed"] = tick_until(lambda: "freed" in r.notice, 10)
    out["notice"] = r.notice


@scenario
def engine_not_running(out):
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = ARGS.dead
    prefs.auto_start = False
    r = rt()
    r.disconnect()
    r.connect(ARGS.dead)
    r.board.connect_timeout = 0.5
    before = state_counts()
    settings(prompt="nobody home", seed=1, width=64, height=64)  # no welcome: protocol defaults
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 5)
    j = job("texture")
    out["phase"] = j.phase
    out["code"] = j.error.code if j.error else None
    out["message"] = j.error.text if j.error else None
    out["connection"] = r.connection
    out["nothing_changed"] = before == state_counts()
    out["can_submit"] = r.board.can_submit("texture")
    r.board.connect_timeout = 10.0


@scenario
def engine_killed(out):
    import signal
    connect(ARGS.victim)
    before = state_counts()
    settings(prompt="doomed", seed=2, steps=40)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: job("texture").step >= 1, 15), "never started"
    os.kill(ARGS.victim_pid, signal.SIGKILL)
    assert tick_until(lambda: not job("texture").active, 15)
    j = job("texture")
    out["phase"] = j.phase
    out["code"] = j.error.code if j.error else None
    out["message"] = j.error.text if j.error else None
    out["nothing_changed"] = before == state_counts()
    out["can_submit"] = rt().board.can_submit("texture")
    out["poll_generate"] = bpy.ops.zimage.generate_texture.poll()
    # a late event for the lost job must change nothing
    time.sleep(0.5)
    addon("blender.pump").tick()
    out["still_failed"] = job("texture").phase == "failed"


@scenario
def local_engine(out):
    """Preferences: start `python -m engine serve --standin` as a child, generate through
    it, then disabling the add-on stops the engine."""
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = f"tcp://127.0.0.1:{ARGS.local_port}"
    prefs.engine_python = sys.executable
    prefs.engine_dir = ARGS.repo
    prefs.standin = True
    prefs.extra_args = "--min-side 64"
    r = rt()
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}
    pid = r.engine.pid
    out["pid"] = pid
    ok = tick_until(lambda: r.connection == "connected", 60)
    out["engine_state"] = r.engine_state
    out["log"] = r.engine.log_tail(5) if r.engine else []
    assert ok, "the local engine never answered"
    settings(prompt="local engine", seed=8)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 20)
    out["phase"] = job("texture").phase
    out["model"] = (r.board.welcome.get("engine") or {}).get("model")
    bpy.ops.preferences.addon_disable(module=MOD)
    try:
        os.kill(pid, 0)
        out["engine_alive_after_disable"] = True
    except OSError:
        out["engine_alive_after_disable"] = False
    bpy.ops.preferences.addon_enable(module=MOD)


@scenario
def readme_walkthrough(out):
    """README.md "Blender: from install to a texture on a cube", step by step, with the tiny
    model (after `install`, which is Install from Disk with the built zip)."""
    # Preferences: Engine Python, Engine Folder, Model (the address: a free port here)
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = f"tcp://127.0.0.1:{ARGS.local_port}"
    prefs.engine_python = sys.executable
    prefs.engine_dir = ARGS.repo
    prefs.model = ARGS.model
    out["prefs_defaults"] = {"standin": prefs.standin, "extra_args": prefs.extra_args,
                             "auto_start": prefs.auto_start}
    r = rt()
    r.disconnect()
    # Start Local Engine, then wait for "Engine: <model> on cpu"
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}

    def ready():
        info = (r.board.welcome or {}).get("engine") or {}
        return r.connection == "connected" and info.get("state") in ("ready", None) \
            and bool(info.get("model"))
    ok = tick_until(ready, 90)
    out["engine_log"] = r.engine.log_tail(8) if r.engine else []
    assert ok, "the local engine never became ready"
    info = r.board.welcome.get("engine") or {}
    out["engine_model"], out["engine_device"] = info.get("model"), info.get("device")
    # the default cube: active and selected in a new file
    obj = bpy.context.view_layer.objects.active
    out["default_active"] = obj.name if obj else None
    out["default_selected"] = obj.select_get() if obj else False
    # the sidebar tab: N > Z-Image, with the Generate Texture button
    panels = [getattr(bpy.types, n) for n in dir(bpy.types) if n.startswith("ZIMAGE_PT_")]
    out["view3d_tabs"] = sorted({p.bl_category for p in panels
                                 if p.bl_space_type == "VIEW_3D" and p.bl_region_type == "UI"})
    out["view3d_panels"] = sorted(p.bl_label for p in panels if p.bl_space_type == "VIEW_3D")
    log = []
    tex_panel = next(p for p in panels if p.bl_space_type == "VIEW_3D"
                     and p.bl_label == "Texture")
    tex_panel.draw(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
    out["texture_panel_buttons"] = [e[1] for e in log if e[0] == "operator"]
    # prompt, size Custom 256 x 256; Steps and the random seed as they are
    s = bpy.context.scene.zimage
    s.prompt = "red brick wall"
    s.size_preset = "CUSTOM"
    s.width = s.height = 256
    out["steps"], out["seed_random"] = s.steps, s.seed_random
    mats_before = len(obj.material_slots)
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 120)
    j = job("texture")
    out["phase"] = j.phase
    out["error"] = j.error.text if j.error else None
    out["message"] = j.message
    assert j.phase == "succeeded", out["error"]
    mat = obj.active_material
    out["material"] = mat.name
    out["new_slot"] = len(obj.material_slots) == mats_before + 1
    tex = next(n for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    out["base_color_from_texture"] = any(
        lk.from_node == tex and lk.to_node == bsdf and lk.to_socket.name == "Base Color"
        for lk in mat.node_tree.links)
    image = tex.image
    out["image"] = {"name": image.name, "size": list(image.size),
                    "packed": image.packed_file is not None,
                    "props": {k: image[k] for k in image.keys() if k.startswith("zimage_")}}
    rgb8 = image_rgb8(image)
    # the engine's own pixels for the same request (deterministic for a seed)
    client = sys.modules.get(f"{MOD}.vendor.protocol.client") or __import__(
        f"{MOD}.vendor.protocol.client", fromlist=["generate"])
    expected = client.generate(prefs.address, dict(j.params), timeout=120)
    want = list(expected.images[0].to_rgb_bytes())
    out["pixels_equal_engine"] = rgb8 == want
    out["pixel_mean"] = sum(rgb8) / len(rgb8)
    out["seed"] = j.seed


@scenario
def lora_texture(out):
    """After readme_walkthrough: the local engine restarted with --lora-dir (Extra Arguments),
    the LoRA list filled from its welcome, one LoRA on at 0.5, Generate Texture; the texture's
    PNG and history record it, its pixels are the engine's for those params, Recall restores it."""
    prefs = bpy.context.preferences.addons[MOD].preferences
    r = rt()
    assert bpy.ops.zimage.stop_engine() == {"FINISHED"}
    prefs.extra_args = f"--lora-dir {ARGS.lora_dir}"
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}
    s = bpy.context.scene.zimage
    ok = tick_until(lambda: r.connection == "connected" and len(s.loras) > 0
                    and ((r.board.welcome or {}).get("engine") or {}).get("state") == "ready", 90)
    out["engine_log"] = r.engine.log_tail(8) if r.engine else []
    assert ok, (f"no LoRA list from the engine: {r.connection}, "
                f"{(r.board.welcome or {}).get('engine')}, {(r.board.welcome or {}).get('loras')}"
                f", {len(s.loras)}, {out['engine_log']}")
    out["listed"] = [(i.name, i.rank, i.use, i.offered) for i in s.loras]
    log = []
    panel = next(getattr(bpy.types, n) for n in dir(bpy.types)
                 if n.startswith("ZIMAGE_PT_view3d_loras"))
    panel.draw(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
    out["panel"] = [e[0] if e[0] != "template_list" else e[1] for e in log]
    s.loras[0].use, s.loras[0].weight = True, 0.5
    s.prompt, s.seed_random, s.seed = "mossy stones", False, 11
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 120)
    j = job("texture")
    out["phase"], out["error"] = j.phase, j.error.text if j.error else None
    out["params_loras"] = j.params.get("loras")
    image = bpy.context.view_layer.objects.active.active_material.node_tree.nodes.get(
        "Image Texture").image
    out["image_loras"] = image.get("zimage_loras")
    out["png_has_loras"] = b'"loras"' in bytes(image.packed_file.data)
    client = sys.modules.get(f"{MOD}.vendor.protocol.client") or __import__(
        f"{MOD}.vendor.protocol.client", fromlist=["generate"])
    expected = client.generate(prefs.address, dict(j.params), timeout=120)
    without = dict(j.params)
    del without["loras"]
    plain = client.generate(prefs.address, without, timeout=120)
    rgb8 = image_rgb8(image)
    out["pixels_equal_engine"] = rgb8 == list(expected.images[0].to_rgb_bytes())
    out["lora_changes_pixels"] = rgb8 != list(plain.images[0].to_rgb_bytes())
    s.loras[0].use, s.loras[0].weight = False, 1.0
    assert bpy.ops.zimage.history_recall() == {"FINISHED"}
    out["recalled"] = [(i.name, i.use, round(i.weight, 3)) for i in s.loras]


class FakeLayout:
    """Stands in for UILayout (no UI in background mode): checks that every drawn property
    exists and every button names a registered operator."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        if name in ("row", "column", "box", "split", "column_flow", "grid_flow"):
            return lambda *a, **k: FakeLayout(self.log)
        return lambda *a, **k: self.log.append((name, a, k)) or FakeLayout(self.log)

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)

    def prop(self, data, name, **kw):
        assert name in data.bl_rna.properties, f"no property {name}"
        self.log.append(("prop", name))

    def operator(self, idname, **kw):
        cat, _, op = idname.partition(".")
        assert hasattr(getattr(bpy.ops, cat), op), f"no operator {idname}"
        self.log.append(("operator", idname))
        return FakeLayout(self.log)

    def template_list(self, listtype, _id, data, prop, active_data, active_prop, **kw):
        assert hasattr(bpy.types, listtype) and prop in data.bl_rna.properties
        self.log.append(("template_list", listtype))


@scenario
def panels_draw(out):
    """Every panel's draw() runs against the current state without errors."""
    log = []
    drawn = []
    for name in sorted(c for c in dir(bpy.types) if c.startswith("ZIMAGE_PT_")):
        cls = getattr(bpy.types, name)
        fake = type("P", (), {"layout": FakeLayout(log)})()
        cls.draw(fake, bpy.context)
        drawn.append(name)
    prefs = bpy.context.preferences.addons[MOD].preferences

    class Proxy:
        layout = FakeLayout(log)

        def __getattr__(self, name):
            return getattr(prefs, name)
    type(prefs).draw(Proxy(), bpy.context)
    out["drawn"] = drawn
    out["operators"] = sorted({e[1] for e in log if e[0] == "operator"})
    out["progress_bars"] = sum(1 for e in log if e[0] == "progress")


def main(extra_args=()) -> int:
    """extra_args: (flag, default) pairs another scenario module needs."""
    global ARGS
    ap = argparse.ArgumentParser()
    for flag, default in extra_args:
        ap.add_argument(flag, default=default)
    ap.add_argument("--zip", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--engine", default="")
    ap.add_argument("--slow", default="")
    ap.add_argument("--victim", default="")
    ap.add_argument("--victim-pid", type=int, default=0)
    ap.add_argument("--dead", default="")
    ap.add_argument("--local-port", type=int, default=0)
    ap.add_argument("--repo", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--lora-dir", default="")
    ap.add_argument("--scenarios", required=True)
    ARGS = ap.parse_args()
    names = [n for n in ARGS.scenarios.split(",") if n]
    table = TABLE
    for name in names:
        table[name]()
        with open(ARGS.out, "w") as fh:      # after each, so a crash keeps what ran
            json.dump(RESULTS, fh)
        if name == "install" and not RESULTS["install"]["ok"]:
            break
    try:
        r = rt()
        if r is not None:
            r.shutdown()
    except Exception:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
