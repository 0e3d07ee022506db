"""Runs INSIDE a fresh Blender (bpy from PyPI) subprocess, like blender_scenarios.py (whose
helpers and runner it reuses): Live mode against a stand-in engine whose steps take a fixed
time and whose result is one colour hashed from its input image (--echo-hash 1).

    python blender_scenarios_live.py --zip Z --out results.json --engine ADDR
        --scenarios install,live_follows_the_scene,...

Background Blender fires no timers: scenarios call the live timer function (live.tick) and
trigger the depsgraph handler with view_layer.update(), as Blender does after an edit.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blender_scenarios as base  # noqa: E402  (sets up the throwaway profile, imports bpy)
from blender_scenarios import addon, connect, cube, rt, scenario, settings  # noqa: E402

import bpy  # noqa: E402


def live():
    return addon("blender.live")


def echo_colour(png: bytes) -> list[int]:
    """What the stand-in paints for this input (standin_server.echo_colour, on the PNG's
    decoded RGB8 pixels, which is what the engine hashes)."""
    w, h, c, rows = addon("core.pixels").decode_png(png)
    assert c == 3, c
    return list(hashlib.sha256(bytes(rows)).digest()[:3])


def live_images() -> list[str]:
    return [i.name for i in bpy.data.images if i.name.startswith("Z-Image Live")]


def undo_steps() -> list[str]:
    import blender_scenarios_artist as artist
    return artist.undo_steps()


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def tick_live(until, timeout: float = 20.0, peak: dict | None = None) -> bool:
    lv = live()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lv.tick()
        if peak is not None:
            note_peak(peak)
        if until():
            return True
        time.sleep(0.005)
    return until()


def note_peak(peak: dict) -> None:
    st = live().state()
    if st is None:
        return
    for phase in ("queued", "running"):
        n = sum(1 for f in st.ctrl.frames.values() if f.phase == phase)
        peak[phase] = max(peak.get(phase, 0), n)


def setup_live(debounce_ms: int = 30, steps: int = 4):
    connect(base.ARGS.engine)
    settings(prompt="a clay sculpture", steps=4)
    lv = bpy.context.scene.zimage_live
    lv.debounce_ms, lv.steps, lv.size, lv.context = debounce_ms, steps, "512", "IMG2IMG"
    return lv


@scenario
def live_follows_the_scene(out):
    """20 quick moves of the cube: newest frame wins all along the chain."""
    setup_live()
    scene = bpy.context.scene
    obj = cube()
    bpy.ops.ed.undo_push(message="before live")
    steps_before = undo_steps()
    assert bpy.ops.zimage.live() == {"FINISHED"}
    lv = live()
    st = lv.state()
    out["handler_on"] = lv._on_depsgraph in bpy.app.handlers.depsgraph_update_post
    out["timer_on"] = bpy.app.timers.is_registered(lv.tick)
    out["draw_handler_on"] = st.draw_handle is not None
    lv._draw_overlay()          # headless Blender has no GPU drawing: it must not raise
    # the first frame (the scene as it is) is shown
    assert tick_live(lambda: st.ctrl.shown is not None), st.ctrl.error
    first_shown = st.ctrl.counts["shown"]
    sent0 = st.ctrl.counts["sent"]
    peak: dict = {}
    rss = []
    for i in range(20):
        if i in (5, 19):
            rss.append(rss_mib())
        obj.location.x += 0.15
        bpy.context.view_layer.update()          # Blender runs this after an edit
        assert st.ctrl.changed_at is not None, "the depsgraph handler saw no change"
        n = st.ctrl.counts["sent"]
        assert tick_live(lambda: st.ctrl.counts["sent"] > n, 10, peak)
    final = st.ctrl.number
    assert tick_live(lambda: not st.ctrl.frames and st.ctrl.shown.number == final, 30, peak)
    c = st.ctrl.counts
    out["sent"] = c["sent"] - sent0
    out["finished_stale"] = c["finished"] - first_shown - 1   # results of frames 1..19
    out["superseded"] = c["superseded"]
    out["peak"] = peak
    out["ctrl_peak"] = dict(st.ctrl.peak)
    out["shown_frame_is_last"] = st.ctrl.shown.number == final
    image = bpy.data.images[lv.LIVE_NAME]
    w, h = image.size
    px = image.pixels[:]
    mid = ((h // 2) * w + w // 2) * 4
    out["shown_colour"] = [round(v * 255) for v in px[mid:mid + 3]]
    out["expected_colour"] = echo_colour(st.last_capture)
    # the last capture is the final scene: a fresh capture now is the same picture
    again = addon("blender.capture").capture_color(bpy.context, scene, "CAMERA", w, h,
                                                          quick=True)
    out["final_capture_matches"] = echo_colour(again) == out["expected_colour"]
    out["live_images"] = live_images()
    out["images_total"] = len(bpy.data.images)
    out["rss_growth_mib_frames_5_to_19"] = round(rss[1] - rss[0], 1)
    out["undo_steps_added"] = [s for s in undo_steps() if s not in steps_before]
    out["history"] = len(scene.zimage.history)
    # Keep: the frame on screen becomes a concept result (one undo step, like any apply)
    assert bpy.ops.zimage.live_keep() == {"FINISHED"}
    hist = scene.zimage.history
    kept = bpy.data.images[hist[-1].image_name]
    out["kept"] = {"kind": hist[-1].kind, "packed": kept.packed_file is not None,
                   "seed": hist[-1].seed, "steps": hist[-1].steps,
                   "history": len(hist), "live_images": live_images()}
    # toggle off: nothing left behind
    assert bpy.ops.zimage.live() == {"FINISHED"}
    out["off"] = {"state": lv.state() is None,
                  "handler": lv._on_depsgraph in bpy.app.handlers.depsgraph_update_post,
                  "timer": bpy.app.timers.is_registered(lv.tick),
                  "runtime_live": rt().live is not None}
    obj.location.x += 1.0
    bpy.context.view_layer.update()               # no frame any more
    time.sleep(0.1)
    addon("blender.pump").tick()
    out["off"]["live_images"] = live_images()


@scenario
def live_sees_what_the_camera_sees(out):
    """Which edits start a frame: materials, lights, the camera do; a selection does not."""
    setup_live(debounce_ms=10_000)               # nothing is sent while this looks
    lv = live()
    assert bpy.ops.zimage.live() == {"FINISHED"}
    st = lv.state()
    obj = cube()
    light = next(o for o in bpy.data.objects if o.type == "LIGHT")
    camera = bpy.context.scene.camera
    mat = bpy.data.materials.new("live test")
    if not obj.material_slots:
        obj.data.materials.append(mat)
    edits = {
        "select": lambda: obj.select_set(not obj.select_get()),
        "material_colour": lambda: setattr(obj.material_slots[0].material, "diffuse_color",
                                           (0.1, 0.7, 0.2, 1.0)),
        "light_energy": lambda: setattr(light.data, "energy", light.data.energy + 100.0),
        "camera_move": lambda: setattr(camera, "location", camera.location * 1.1),
        "camera_lens": lambda: setattr(camera.data, "lens", camera.data.lens + 5.0),
        "mesh_edit": lambda: obj.data.vertices[0].co.__setitem__(0, 1.3),
    }
    out["touched"] = {}
    for name, edit in edits.items():
        bpy.context.view_layer.update()
        st.ctrl.changed_at = None
        edit()
        if name == "mesh_edit":
            obj.data.update()
        bpy.context.view_layer.update()
        out["touched"][name] = st.ctrl.changed_at is not None
    bpy.ops.zimage.live()


@scenario
def live_stops_on_disconnect_and_file_load(out):
    setup_live(debounce_ms=0, steps=8)
    lv = live()
    assert bpy.ops.zimage.live() == {"FINISHED"}
    st = lv.state()
    assert tick_live(lambda: any(f.phase == "running" for f in st.ctrl.frames.values()), 20)
    ids = st.ctrl.in_flight()
    rt().disconnect()
    out["after_disconnect"] = {"state": lv.state() is None,
                               "handler": lv._on_depsgraph in
                               bpy.app.handlers.depsgraph_update_post,
                               "timer": bpy.app.timers.is_registered(lv.tick),
                               "had_jobs": len(ids)}
    connect(base.ARGS.engine)
    assert bpy.ops.zimage.live() == {"FINISHED"}
    bpy.ops.wm.read_homefile(use_empty=False)      # another file: load_pre stops Live
    out["after_load"] = {"state": lv.state() is None,
                         "handler": lv._on_depsgraph in bpy.app.handlers.depsgraph_update_post,
                         "timer": bpy.app.timers.is_registered(lv.tick)}


@scenario
def live_on_an_engine_without_live_keys(out):
    """An older engine (no `live` capability): the add-on cancels the stale frames itself."""
    connect(base.ARGS.pre_live)
    settings(prompt="a clay sculpture", steps=4)
    lv_props = bpy.context.scene.zimage_live
    lv_props.debounce_ms, lv_props.steps = 30, 4
    out["caps_have_live"] = "live" in (rt().board.welcome or {}).get("caps", [])
    lv = live()
    assert bpy.ops.zimage.live() == {"FINISHED"}
    st = lv.state()
    assert tick_live(lambda: st.ctrl.shown is not None), st.ctrl.error
    peak: dict = {}
    obj = cube()
    for i in range(8):
        obj.location.y += 0.15
        bpy.context.view_layer.update()
        n = st.ctrl.counts["sent"]
        assert tick_live(lambda: st.ctrl.counts["sent"] > n, 10, peak)
    final = st.ctrl.number
    assert tick_live(lambda: st.ctrl.shown.number == final, 30, peak)
    out["peak"] = peak
    out["shown_is_last"] = st.ctrl.shown.number == final
    image = bpy.data.images[lv.LIVE_NAME]
    w, h = image.size
    mid = ((h // 2) * w + w // 2) * 4
    out["colour_ok"] = [round(v * 255) for v in image.pixels[mid:mid + 3]] == \
        echo_colour(st.last_capture)
    bpy.ops.zimage.live()
    connect(base.ARGS.engine)


@scenario
def live_bench(out):
    """Benchmark (scripts/bench_addon.py --live): scene change -> frame shown, minus the
    debounce and the engine's compute time; and the capture alone."""
    n = int(os.environ.get("ZIMAGE_LIVE_BENCH_N", "15"))
    lv_props = setup_live(debounce_ms=150, steps=4)
    assert bpy.ops.zimage.live() == {"FINISHED"}
    lv = live()
    st = lv.state()
    assert tick_live(lambda: st.ctrl.shown is not None, 30), st.ctrl.error
    obj = cube()
    extra, capture, compute, total = [], [], [], []
    for i in range(n):
        obj.location.z += 0.05
        bpy.context.view_layer.update()
        t_change = st.ctrl.changed_at
        target = st.ctrl.number + 1
        assert tick_live(lambda: st.ctrl.shown is not None and st.ctrl.shown.number >= target
                         and not st.ctrl.frames, 30), st.ctrl.error
        rec = st.timings[-1]
        shown_after = (rec["shown_at"] - t_change) * 1000.0
        total.append(shown_after)
        compute.append(rec["compute_ms"] or 0.0)
        capture.append(rec["capture_ms"])
        extra.append(shown_after - lv_props.debounce_ms - (rec["compute_ms"] or 0.0))
    bpy.ops.zimage.live()
    w, h = bpy.data.images[lv.LIVE_NAME].size
    out["size"] = [w, h]
    out["n"] = n
    for name, xs in (("beyond_debounce_and_compute_ms", extra), ("capture_ms", capture),
                     ("compute_ms", compute), ("change_to_shown_ms", total)):
        out[name] = {"median": round(statistics.median(xs), 1), "max": round(max(xs), 1)}


if __name__ == "__main__":
    sys.exit(base.main((("--pre-live", ""),)))
