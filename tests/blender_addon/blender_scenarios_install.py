"""Runs INSIDE a fresh Blender (bpy from PyPI) subprocess, like blender_scenarios.py (whose
helpers and runner it reuses): Install Engine / Remove Engine from the preferences.

    python blender_scenarios_install.py --zip Z --out results.json --install-dir DIR
        --refusing-index URL --local-port PORT --model DIR --scenarios install,a,b,...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blender_scenarios as base  # noqa: E402  (sets up the throwaway profile, imports bpy)
from blender_scenarios import (MOD, FakeLayout, addon, cube, image_rgb8, job, rt,  # noqa: E402
                               scenario, tick_until)

import bpy  # noqa: E402


def args():
    return base.ARGS


def prefs():
    return bpy.context.preferences.addons[MOD].preferences


def draw_prefs() -> list:
    log = []
    p = prefs()

    class Proxy:
        layout = FakeLayout(log)

        def __getattr__(self, name):
            return getattr(p, name)
    type(p).draw(Proxy(), bpy.context)
    return log


def drive_install(timeout: float) -> dict:
    """Tick the pump (as Blender's timer would) until the install ends; how long the
    longest tick took says whether the main thread ever waited for pip."""
    pump = addon("blender.pump")
    inst = addon("blender.install")
    st = inst.state()
    slowest, bars = 0.0, 0
    t0 = time.monotonic()
    while st.running and time.monotonic() - t0 < timeout:
        t = time.monotonic()
        pump.tick()
        slowest = max(slowest, time.monotonic() - t)
        if st.running:
            bars += sum(1 for e in draw_prefs() if e[0] == "progress")
        time.sleep(0.05)
    pump.tick()
    return {"outcome": st.outcome, "message": st.message, "fractions": list(st.fractions),
            "failure": st.failure.code if st.failure else None,
            "hint": st.failure.hint if st.failure else None,
            "slowest_tick_s": round(slowest, 3),
            "install_seconds": round(time.monotonic() - t0, 1),
            "progress_bar_drawn": bars > 0, "log_path": st.log_path}


@contextlib.contextmanager
def only_index(p, url: str, **env):
    """pip sees the package index `url` only (no config file, no local wheels); the
    environment and the preference are put back afterwards."""
    p.engine_index_url = url
    with mock.patch.dict(os.environ, {"PIP_CONFIG_FILE": os.devnull, **env}):
        os.environ.pop("PIP_FIND_LINKS", None)
        try:
            yield
        finally:
            p.engine_index_url = ""


@scenario
def install_refused(out):
    """Install Engine against a package index that refuses: the message says what failed
    and what to try; the folder holds the log and nothing that claims to be an engine."""
    ins = addon("core.installer")
    p = prefs()
    folder = os.path.join(args().install_dir, "refused")
    p.engine_install_dir = folder
    p.engine_torch = "PYPI"
    p.engine_python = p.engine_dir = ""
    out["buttons_before"] = [e[1] for e in draw_prefs() if e[0] == "operator"]
    with only_index(p, args().refusing_index, PIP_RETRIES="0"):
        assert bpy.ops.zimage.engine_install(action="install") == {"FINISHED"}
        out.update(drive_install(300))
    out["listing"] = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
    out["installed"] = ins.installed(folder)
    out["engine_python"] = p.engine_python
    out["log_opens"] = bpy.ops.zimage.open_install_log.poll()
    log = []
    out["error_lines"] = []
    for e in draw_prefs():
        if e[0] == "label":
            out["error_lines"].append(e[2].get("text", ""))
        log.append(e)


@scenario
def install_cancelled(out):
    """Cancel Install while pip waits for a package index that never answers: the install
    ends as cancelled, and the folder holds only the log."""
    ins = addon("core.installer")
    inst = addon("blender.install")
    p = prefs()
    folder = os.path.join(args().install_dir, "cancelled")
    p.engine_install_dir = folder
    p.engine_torch = "PYPI"
    p.engine_python = p.engine_dir = ""
    pump = addon("blender.pump")
    with only_index(p, args().stalling_index):
        assert bpy.ops.zimage.engine_install(action="install") == {"FINISHED"}
        st = inst.state()
        end = time.monotonic() + 120
        while time.monotonic() < end and "PyTorch" not in st.message:
            pump.tick()
            time.sleep(0.05)
        time.sleep(1.0)                   # pip is now waiting for the index
        out["cancel_poll"] = bpy.ops.zimage.engine_install_cancel.poll()
        t0 = time.monotonic()
        assert bpy.ops.zimage.engine_install_cancel() == {"FINISHED"}
        out.update(drive_install(60))
        out["cancel_seconds"] = round(time.monotonic() - t0, 1)
    out["listing"] = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
    out["installed"] = ins.installed(folder)
    out["engine_python"] = p.engine_python


@scenario
def install_engine(out):
    """Install Engine into a fresh folder (the real pip, this machine's pip cache and
    configured index), then the engine starts from the filled-in Engine Python with the tiny
    model and makes a texture on the cube."""
    ins = addon("core.installer")
    p = prefs()
    folder = os.path.join(args().install_dir, "engine")
    p.engine_install_dir = folder
    # download.pytorch.org is not reachable from the test machine: torch comes from the
    # configured index (its CPU wheel); the choice for this machine is still recorded
    p.engine_torch = "PYPI"
    p.engine_python = p.engine_dir = ""
    p.address = f"tcp://127.0.0.1:{args().local_port}"
    p.model = args().model
    p.auto_start = False
    assert bpy.ops.zimage.engine_install(action="install") == {"FINISHED"}
    out["running_after_click"] = addon("blender.install").state().running
    out.update(drive_install(900))
    assert out["outcome"] == "done", out["message"]
    out["engine_python"], out["engine_dir"] = p.engine_python, p.engine_dir
    out["marker"] = ins.installed(folder)
    out["buttons_after"] = [e[1] for e in draw_prefs() if e[0] == "operator"]
    # Start Local Engine from what the install filled in, then a texture
    r = rt()
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}

    def ready():
        info = (r.board.welcome or {}).get("engine") or {}
        return r.connection == "connected" and info.get("state") in ("ready", None) \
            and bool(info.get("model"))
    ok = tick_until(ready, 120)
    out["engine_log"] = r.engine.log_tail(8) if r.engine else []
    assert ok, "the installed engine never became ready"
    info = r.board.welcome.get("engine") or {}
    out["engine_model"] = info.get("model")
    out["engine_cmd_python"] = r.engine.cmd[0]
    obj = cube()
    s = bpy.context.scene.zimage
    s.prompt, s.size_preset, s.width, s.height = "red brick wall", "CUSTOM", 128, 128
    s.steps, s.seed_random, s.seed = 2, False, 11
    assert bpy.ops.zimage.generate_texture() == {"FINISHED"}
    assert tick_until(lambda: not job("texture").active, 180)
    j = job("texture")
    out["phase"] = j.phase
    out["error"] = j.error.text if j.error else None
    assert j.phase == "succeeded", out["error"]
    tex = next(n for n in obj.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    out["image_size"] = list(tex.image.size)
    rgb8 = image_rgb8(tex.image)
    client = sys.modules.get(f"{MOD}.vendor.protocol.client") or __import__(
        f"{MOD}.vendor.protocol.client", fromlist=["generate"])
    expected = client.generate(p.address, dict(j.params), timeout=120)
    out["pixels_equal_engine"] = rgb8 == list(expected.images[0].to_rgb_bytes())
    r.stop_engine()


@scenario
def update_engine(out):
    """Update Engine on the installed folder: torch is kept, the engine goes in again, the
    marker is rewritten, the preferences still point at the engine."""
    ins = addon("core.installer")
    p = prefs()
    folder = os.path.join(args().install_dir, "engine")
    p.engine_install_dir = folder
    before = ins.installed(folder)
    p.engine_python = ""          # the update fills it in again
    assert bpy.ops.zimage.engine_install(action="update") == {"FINISHED"}
    out.update(drive_install(600))
    after = ins.installed(folder)
    out["torch_same"] = bool(before and after and before["torch"] == after["torch"])
    out["marker_rewritten"] = bool(before and after and after["installed"] >= before["installed"])
    out["engine_python"] = p.engine_python
    out["marker_python"] = after["python"] if after else None
    with open(os.path.join(folder, ins.LOG_NAME), encoding="utf-8") as fh:
        out["kept_torch_logged"] = "keeping torch" in fh.read()


@scenario
def remove_engine(out):
    """Remove Engine: the environment and the marker go; the preferences forget them."""
    ins = addon("core.installer")
    p = prefs()
    folder = os.path.join(args().install_dir, "engine")
    p.engine_install_dir = folder
    assert bpy.ops.zimage.engine_install(action="remove") == {"FINISHED"}
    out.update(drive_install(300))
    out["exists"] = os.path.exists(folder)
    out["installed"] = ins.installed(folder)
    out["engine_python"], out["engine_dir"] = p.engine_python, p.engine_dir


def connection_box() -> list:
    log = []
    addon("blender.panels").draw_connection(FakeLayout(log), bpy.context, prefs_view=True)
    return log


@scenario
def download_visible(out):
    """Start Local Engine with a repo id the cache lacks: while the engine downloads it (from
    the test's hub mirror), the connection box shows a bar with bytes, speed and the file;
    then the engine is ready. Offline, the same start fails with the one-line error."""
    p = prefs()
    p.address = f"tcp://127.0.0.1:{args().local_port}"
    p.engine_python, p.engine_dir, p.model = sys.executable, args().repo, args().repo_id
    p.auto_start, p.standin = False, False
    os.environ.update(HF_ENDPOINT=args().hub, HF_HOME=args().hf_home, HF_HUB_OFFLINE="0",
                      TRANSFORMERS_OFFLINE="0")
    r = rt()
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}
    bars, seen = [], []
    pump = addon("blender.pump")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        pump.tick()
        info = (r.board.welcome or {}).get("engine") or {}
        if info.get("download"):
            seen.append(info["download"])
        for e in connection_box():
            if e[0] == "progress":
                bars.append((round(e[2]["factor"], 4), e[2]["text"]))
        if r.connection == "connected" and info.get("state") == "ready":
            break
        if r.engine is not None and not r.engine.alive:
            break
        time.sleep(0.02)
    out["engine_log"] = r.engine.log_tail(8) if r.engine else []
    out["state"] = ((r.board.welcome or {}).get("engine") or {}).get("state")
    out["bars"] = bars
    out["last_report"] = seen[-1] if seen else None
    out["bar_after_ready"] = any(e[0] == "progress" for e in connection_box())
    r.stop_engine()
    # offline, with an empty cache: the load fails with the one-line error
    os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=args().hf_home + "-empty")
    r.disconnect()
    assert bpy.ops.zimage.start_engine() == {"FINISHED"}
    # the engine says so in its welcome, then exits with EXIT_MODEL_FAILED: the panel may
    # see either, and must show the error and where to set the model in both
    def failed():
        said = r.connection == "connected" and (
            (r.board.welcome or {}).get("engine") or {}).get("state") == "failed"
        return said or (r.engine is not None and r.engine.poll() == "exited")
    ok = tick_until(failed, 120)
    out["offline_failed"] = ok and (r.connection == "connected" or r.engine.model_failed)
    out["offline_error"] = (((r.board.welcome or {}).get("engine") or {}).get("error")
                            if r.connection == "connected" else r.engine.exit_message)
    out["offline_lines"] = [e[2].get("text", "") for e in connection_box() if e[0] == "label"]
    r.stop_engine()
    # the local alternative, picked in the preferences: a folder, or a ComfyUI file
    assert bpy.ops.zimage.choose_model(filepath=os.path.join(args().hf_home, "")) == \
        {"FINISHED"}
    out["model_folder"] = p.model
    st = os.path.join(args().hf_home, "z.safetensors")
    open(st, "wb").close()
    assert bpy.ops.zimage.choose_model(filepath=st) == {"FINISHED"}
    out["model_file"] = p.model
    out["model_buttons"] = [e[1] for e in draw_prefs() if e[0] == "operator"]


if __name__ == "__main__":
    sys.exit(base.main(extra_args=(("--install-dir", ""), ("--refusing-index", ""),
                                   ("--stalling-index", ""),
                                   ("--hub", ""), ("--hf-home", ""), ("--repo-id", ""))))
