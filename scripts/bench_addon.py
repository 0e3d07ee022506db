#!/usr/bin/env python3
"""The Blender add-on's cost on Blender's main thread, in real headless Blender (bpy).

    .venv/bin/python scripts/bench_addon.py [--runs 10] [--side 1024] [--jobs 3]
        [--steps 8] [--step-seconds 0.05] [--zip dist/zimage_studio-0.1.0.zip]

Builds the extension zip (scripts/build_addon.py) unless --zip is given, installs it into a
throwaway Blender user profile exactly as the tests do, starts a stand-in engine
(`python -m engine serve --standin --step-seconds S`) on loopback, and measures:

(a) apply: the add-on's own apply path (`operators.apply_job`, what the pump runs when a
    result arrives): raw RGB8 bytes -> PNG with the history chunk -> packed image datablock ->
    new material (Image Texture -> Principled BSDF Base Color) in a new slot on the cube ->
    history entry. Timed on a side x side result, `--runs` times, each from the same state
    (the previous run's image, material and slot are removed untimed). Two contents: the
    stand-in's test pattern (compresses very well) and that pattern plus 5 bits of noise
    (about as hard for zlib as a photo). Also timed: Blender decoding the packed PNG on first
    use (here a pixels.foreach_get, which adds a float copy; a viewport pays it at draw time).
(b) stalls: `--jobs` texture jobs at side x side with a preview every step. Background
    Blender fires no timers, so the script calls the pump's tick() itself, sleeping the
    interval tick() returns, as Blender's timer loop would; it records every tick's duration,
    the longest, and the tick that applied the final result. The Generate operator's own time
    (building and sending the request) is listed too.

(c) texturing from views (`--parts projection`; blender/project.py): Suzanne with a
    Subdivision Surface modifier (`--subdiv`, level 2: 15.7k triangles, 3: 63k; "c5": the mesh
    itself subdivided with 5 cuts, 34.8k triangles, no modifier; "3:30000": level 3 with a
    Decimate modifier down to about 30k), no UV map
    (Smart UV Project runs), "Texture All Sides" with 6 views (5 around + 1 above) at 1024²
    into a `--texture` (2048) texture, against a stand-in engine with depth control and
    inpainting (tests/blender_addon/standin_server.py). It records the operator's own time,
    every timer tick (pump + projection, called as Blender's timers would), the time from the
    last view's image arriving to the texture applied, and the peak RSS the run added.

(d) Live mode (`--parts live`; blender/live.py): the live_bench scenario of
    tests/blender_addon/blender_scenarios_live.py in its own headless Blender, against a
    stand-in engine (`--live-step-seconds` per step, 4 steps) that echoes a colour of its input:
    `--live-runs` single moves of the cube, each waited out; for each, the time from the scene
    change (the depsgraph handler) to the new frame in "Z-Image Live", minus the debounce
    (150 ms) and minus the engine's compute time (its generate_ms), and the capture alone
    (a Workbench render of the camera at 512 on the long side, PNG). The live timer is driven
    in a tight loop here; Blender's own timer (every 20 ms) can add up to 2 x 20 ms.

Prints markdown tables (docs/benchmarks.md, "Add-on (Blender)").
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = tempfile.mkdtemp(prefix="zimage_bench_profile_")
os.environ["BLENDER_USER_RESOURCES"] = PROFILE     # before bpy is imported

MOD = "bl_ext.user_default.zimage_studio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_zip(out: Path) -> Path:
    cmd = [sys.executable, str(ROOT / "scripts" / "build_addon.py"), "--out", str(out),
           "--platforms", "linux-x64"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:          # no wheel cache and no network: the venv's pyzmq stands in
        res = subprocess.run(cmd + ["--no-wheels"], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"build_addon.py failed:\n{res.stderr[-2000:]}")
    return out


def start_engine(step_seconds: float) -> tuple[subprocess.Popen, str]:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env.pop("BLENDER_USER_RESOURCES", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--standin",
                             "--step-seconds", str(step_seconds), "--bind", address],
                            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line.startswith("ready"):
        proc.kill()
        raise SystemExit(f"engine did not start: {line!r} {proc.stderr.read().decode()[-2000:]}")
    return proc, address


def ms(seconds: float) -> str:
    v = seconds * 1000
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--step-seconds", type=float, default=0.05)
    ap.add_argument("--zip", type=Path, default=None, help="an already built add-on zip")
    ap.add_argument("--parts", default="apply,stalls,projection",
                    help="which measurements: apply, stalls, projection")
    ap.add_argument("--subdiv", default="2,c5,3",
                    help="Suzanne for (c): Subdivision Surface LEVEL, cN (the mesh subdivided "
                         "with N cuts), or LEVEL:TRIANGLES (then decimated to about TRIANGLES)")
    ap.add_argument("--texture", type=int, default=2048)
    ap.add_argument("--live-runs", type=int, default=15)
    ap.add_argument("--live-step-seconds", type=float, default=0.02)
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="zimage_bench_"))
    zip_path = args.zip or build_zip(tmp / "zimage_studio.zip")
    if "live" in parts:
        bench_live(zip_path, tmp, args)
        if parts == {"live"}:
            shutil.rmtree(tmp, ignore_errors=True)
            return 0
    engine, address = start_engine(args.step_seconds)
    try:
        import bpy
        res = bpy.ops.extensions.package_install_files(filepath=str(zip_path),
                                                       repo="user_default",
                                                       enable_on_install=True)
        assert res == {"FINISHED"} and MOD in bpy.context.preferences.addons, res
        mods = {n: sys.modules[f"{MOD}.{n}"] for n in
                ("blender.runtime", "blender.pump", "blender.operators")}
        apply_rows, decode = bench_apply(bpy, mods, address, args) if "apply" in parts \
            else ([], [])
        stall_rows, op_times = bench_stalls(bpy, mods, args) if "stalls" in parts else ([], [])
        proj_rows = bench_projection(bpy, mods, args) if "projection" in parts else []
    finally:
        try:
            engine.stdin.close()
            engine.wait(10)
        except Exception:
            engine.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(PROFILE, ignore_errors=True)
    report(bpy, args, apply_rows, decode, stall_rows, op_times)
    report_projection(args, proj_rows)
    return 0


# ---- (a) apply ---------------------------------------------------------------------------

def connect(bpy, mods, address: str):
    prefs = bpy.context.preferences.addons[MOD].preferences
    prefs.address = address
    prefs.auto_start = False
    rt = mods["blender.runtime"].get()
    rt.disconnect()
    rt.connect(address)
    end = time.monotonic() + 20
    while rt.connection != "connected":
        if time.monotonic() > end:
            raise SystemExit(f"no welcome from {address}")
        mods["blender.pump"].tick()
        time.sleep(0.02)
    return rt


def cube(bpy):
    obj = bpy.data.objects["Cube"]
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def settings(bpy, side: int, steps: int, seed: int, prompt: str):
    s = bpy.context.scene.zimage
    s.size_preset = "CUSTOM"
    for k, v in dict(prompt=prompt, width=side, height=side, steps=steps, seed_random=False,
                     seed=seed, num_images=1, texture_target="NEW_MATERIAL").items():
        setattr(s, k, v)


def remove_applied(bpy, obj, job) -> None:
    """Undo one apply (untimed), so every run starts from the same scene."""
    names = job.context.get("result_images") or []
    mat = obj.active_material
    if mat is not None and mat.name in names and len(obj.data.materials) > 1:
        obj.data.materials.pop(index=obj.active_material_index)
        for p in obj.data.polygons:
            p.material_index = 0
        bpy.data.materials.remove(mat)
    for n in names:
        if n in bpy.data.images:
            bpy.data.images.remove(bpy.data.images[n])


def bench_apply(bpy, mods, address: str, args):
    rt = connect(bpy, mods, address)
    side = args.side
    # one real result from the engine, received by the add-on's own client
    from importlib import import_module
    client_mod = import_module(f"{MOD}.vendor.protocol.client")
    ev = client_mod.generate(address, {"prompt": "bench", "width": side, "height": side,
                                       "steps": 1, "seed": 3, "num_images": 1}, timeout=120)
    pattern = ev.images[0]
    assert pattern.format == "raw" and (pattern.width, pattern.height) == (side, side)
    import random
    rnd = random.Random(0)
    noise = rnd.randbytes(side * side * 3)
    photo_bytes = bytes(((p >> 1) + (n & 31)) & 255 for p, n in zip(pattern.data, noise))
    photo = client_mod.ImageData(side, side, 3, "raw", photo_bytes, seed=3)

    ops = mods["blender.operators"]
    apply = sys.modules[f"{MOD}.blender.apply"]
    obj = cube(bpy)
    rows, decode = [], []
    for label, img in (("test pattern", pattern),
                       ("pattern + 5 bits noise (photo-like)", photo)):
        main, encode, inline = [], [], []
        for i in range(2 * args.runs):
            ahead = i % 2 == 0          # alternate: PNG made ahead (as the runtime does) / not
            job = rt.board.submit("texture", f"bench-{label[:4]}-{i}",
                                  {"prompt": "bench apply", "width": side, "height": side,
                                   "steps": 8, "seed": 3, "num_images": 1},
                                  {"target": "NEW_MATERIAL", "object": obj.name,
                                   "scene": bpy.context.scene.name, "model": "stand-in"})
            effects = rt.board.handle(client_mod.Event("result", job.job_id, {}, [img]))
            assert [e.kind for e in effects] == ["result"]
            if ahead:
                t0 = time.perf_counter()
                job.context["encoded"] = apply.encode_results(job, "stand-in")
                encode.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ok = ops.apply_job(bpy.context, job)
            (main if ahead else inline).append(time.perf_counter() - t0)
            assert ok and job.phase == "succeeded", job.error
            image = bpy.data.images[job.context["result_images"][0]]
            tex = next(n for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
            assert tex.image == image and image.packed_file is not None
            if i == 0:
                from array import array
                buf = array("f", bytes(4 * side * side * 4))
                t0 = time.perf_counter()
                image.pixels.foreach_get(buf)
                decode.append((label, time.perf_counter() - t0))
                png_size = len(image.packed_file.data)
            remove_applied(bpy, obj, job)
        rows.append((label, png_size, main, encode, inline))
    return rows, decode


# ---- (b) stalls while a job runs ---------------------------------------------------------

def bench_stalls(bpy, mods, args):
    rt = mods["blender.runtime"].get()
    pump = mods["blender.pump"]
    obj = cube(bpy)
    rows, op_times = [], []
    for n in range(args.jobs):
        settings(bpy, args.side, args.steps, 100 + n, f"stall test {n}")
        t0 = time.perf_counter()
        assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
        op_times.append(time.perf_counter() - t0)
        job = rt.board.jobs["texture"]
        ticks, previews, result_tick = [], 0, None
        end = time.monotonic() + 120
        last_version = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            interval = pump.tick()
            dt = time.perf_counter() - t0
            ticks.append(dt)
            if job.preview_version != last_version:
                previews += 1
                last_version = job.preview_version
            if not job.active:
                if job.phase == "succeeded" and result_tick is None:
                    result_tick = dt
                break
            time.sleep(interval or pump.BUSY_INTERVAL)
        assert job.phase == "succeeded", (job.phase, job.error)
        assert obj.active_material.name in job.context["result_images"]
        # the longest tick that was not the one applying the result
        others = ticks[:-1] or [0.0]
        rows.append({"ticks": len(ticks), "previews": job.preview_version,
                     "preview_ticks": previews, "max_other": max(others),
                     "median": statistics.median(ticks), "result": result_tick,
                     "max": max(ticks)})
        remove_applied(bpy, obj, job)
    return rows, op_times


# ---- (c) texturing from views -----------------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class RssWatch:
    """The process's resident memory, sampled every 5 ms on a thread: peak above the start."""

    def __init__(self):
        import threading
        self.base = rss_mib()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def bench_projection(bpy, mods, args):
    caps = "txt2img,img2img,inpaint,control,control.depth"
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "blender_addon" /
                                                 "standin_server.py"), "--bind", address,
                             "--step-seconds", str(args.step_seconds), "--caps", caps],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if not proc.stdout.readline().decode().startswith("ready"):
        proc.kill()
        raise SystemExit("the stand-in engine with depth control did not start")
    rows = []
    try:
        connect(bpy, mods, address)
        project = sys.modules[f"{MOD}.blender.project"]
        pump = mods["blender.pump"]
        for item in [v for v in args.subdiv.split(",") if v]:
            cuts = int(item[1:]) if item.startswith("c") else 0
            level, _, target = ("0" if cuts else item).partition(":")
            level = int(level)
            for o in list(bpy.data.objects):
                if o.type == "MESH":
                    bpy.data.objects.remove(o)
            bpy.ops.mesh.primitive_monkey_add(size=2.0)
            obj = bpy.context.active_object
            bpy.ops.object.shade_smooth()
            if cuts:
                bpy.ops.object.mode_set(mode="EDIT")
                bpy.ops.mesh.select_all(action="SELECT")
                bpy.ops.mesh.subdivide(number_cuts=cuts, smoothness=1.0)
                bpy.ops.object.mode_set(mode="OBJECT")
            if level:
                mod = obj.modifiers.new("Subdivision", "SUBSURF")
                mod.levels = mod.render_levels = level
            if target:                   # Suzanne's 968 triangles x 4 per level
                dec = obj.modifiers.new("Decimate", "DECIMATE")
                dec.ratio = min(1.0, int(target) / (968 * 4 ** level))
            while len(obj.data.uv_layers):
                obj.data.uv_layers.remove(obj.data.uv_layers[0])
            obj.select_set(True)
            bpy.context.view_layer.objects.active = obj
            dg = bpy.context.evaluated_depsgraph_get()
            tris = len(obj.evaluated_get(dg).data.loop_triangles) or sum(
                len(p.vertices) - 2 for p in obj.evaluated_get(dg).data.polygons)
            s = bpy.context.scene.zimage
            s.prompt, s.steps, s.seed_random, s.seed = "weathered bronze statue", args.steps, \
                False, 5
            p = bpy.context.scene.zimage_projection
            p.views_source, p.views_around, p.view_above = "ORBIT", 5, True
            p.texture_size, p.image_size = str(args.texture), "1024"
            import gc
            gc.collect()
            watch = RssWatch()
            t0 = time.perf_counter()
            assert bpy.ops.zimage.project_all() == {"FINISHED"}
            op_time = time.perf_counter() - t0
            ticks = []
            end = time.monotonic() + 600
            while project.current() is not None and time.monotonic() < end:
                t0 = time.perf_counter()
                pump.tick()
                project.tick()
                ticks.append(time.perf_counter() - t0)
                time.sleep(0.02)
            last = project.last()
            assert last.get("phase") == "succeeded", last
            rows.append({"level": item, "tris": tris, "op": op_time, "ticks": ticks,
                         "apply": last["apply_seconds"], "rss": watch.stop(),
                         "message": last["message"]})
            for name in last["images"]:
                image = bpy.data.images.get(name)
                if image is not None:
                    bpy.data.images.remove(image)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def report_projection(args, rows) -> None:
    if not rows:
        return
    print(f"\n(c) Texture All Sides: 6 views of 1024² into a {args.texture}² texture, "
          f"Suzanne without UVs, stand-in engine ({args.steps} steps x {args.step_seconds}s)\n")
    print("| triangles | last image -> texture applied s | longest timer tick ms | median "
          "tick ms | ticks | operator (read mesh, Smart UV Project) ms | extra RAM at peak "
          "(RSS) MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tris']} | {r['apply']:.2f} | {ms(max(r['ticks']))} | "
              f"{ms(statistics.median(r['ticks']))} | {len(r['ticks'])} | {ms(r['op'])} | "
              f"{r['rss']:.0f} |")
    for r in rows:
        print(f"\n{r['tris']} triangles: {r['message']}")


# ---- report ------------------------------------------------------------------------------

# ---- (d) live mode -------------------------------------------------------------------------

def bench_live(zip_path: Path, tmp: Path, args) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "blender_addon"))
    from blender_harness import run_scenarios, start_standin
    engine = start_standin(args.live_step_seconds, echo_hash=1)
    os.environ["ZIMAGE_LIVE_BENCH_N"] = str(args.live_runs)
    try:
        res = run_scenarios(zip_path, ["install", "live_bench"], tmp, timeout=900,
                            script="blender_scenarios_live.py", engine=engine.address)
    finally:
        engine.stop()
    r = res.get("live_bench") or {}
    if not r.get("ok"):
        print("live bench failed:", r.get("error") or res.get("_process"))
        return
    w, h = r["size"]
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}.")
    print(f"\n(d) Live: {r['n']} single moves of the cube, each frame {w}x{h}, 4 steps, "
          f"stand-in engine {args.live_step_seconds}s per step, debounce 150 ms\n")
    print("| measure | median ms | max ms |")
    print("|---|---|---|")
    for key, label in (("beyond_debounce_and_compute_ms", "scene change -> frame shown, minus "
                        "debounce and engine compute"),
                       ("capture_ms", "capture alone (Workbench render of the camera, PNG)"),
                       ("compute_ms", "engine compute (stand-in, generate_ms)"),
                       ("change_to_shown_ms", "scene change -> frame shown, all of it")):
        print(f"| {label} | {r[key]['median']} | {r[key]['max']} |")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(bpy, args, apply_rows, decode, stall_rows, op_times) -> None:
    side = args.side
    if not apply_rows and not stall_rows:
        print(f"\nMachine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; "
              f"bpy {bpy.app.version_string} (headless), Python {platform.python_version()}.")
        return
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; "
          f"bpy {bpy.app.version_string} (headless), Python {platform.python_version()}.")
    print(f"\n(a) apply a {side}x{side} result (operators.apply_job: packed PNG image + "
          f"material + history), {args.runs} runs each\n")
    print("| content | packed PNG MiB | main thread: apply_job, PNG made ahead, median / max "
          "ms | worker thread: PNG encode, median ms | all on the main thread (no worker), "
          "median / max ms |")
    print("|---|---|---|---|---|")
    for label, size, main, encode, inline in apply_rows:
        print(f"| {label} | {size / 2**20:.2f} | {ms(statistics.median(main))} / "
              f"{ms(max(main))} | {ms(statistics.median(encode))} | "
              f"{ms(statistics.median(inline))} / {ms(max(inline))} |")
    print("\n| first use: Blender decodes the packed PNG (pixels.foreach_get) | ms |")
    print("|---|---|")
    for label, t in decode:
        print(f"| {label} | {ms(t)} |")
    print(f"\n(b) main thread while a {side}x{side}, {args.steps}-step job runs "
          f"(stand-in engine, {args.step_seconds}s per step, a preview every step), "
          f"pump ticks as Blender's timer would call them\n")
    print("| job | ticks | previews received | median tick ms | longest tick before the "
          "result ms | result tick (apply) ms | Generate operator ms |")
    print("|---|---|---|---|---|---|---|")
    for i, (r, op) in enumerate(zip(stall_rows, op_times)):
        print(f"| {i + 1} | {r['ticks']} | {r['previews']} | {ms(r['median'])} | "
              f"{ms(r['max_other'])} | {ms(r['result'])} | {ms(op)} |")


if __name__ == "__main__":
    sys.exit(main())
