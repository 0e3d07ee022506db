"""Install Engine from the preferences, in real headless Blender with the built zip: a real
install into a temporary folder (the real pip, this machine's pip cache and configured index;
nothing faked), the progress moving, Engine Python filled in, the engine started from it with
the tiny model making a texture; an install against a refusing index fails with what to try and
leaves nothing that claims to be an engine; Remove Engine removes it."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest

from blender_harness import ROOT, check, free_port, have_bpy, run_scenarios
from protocol.messages import JobState

pytestmark = [pytest.mark.blender, pytest.mark.slow,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(403, "Forbidden")

    def log_message(self, *args):
        pass


class _Stall(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(60)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny") / "zimage-tiny"
    res = subprocess.run([sys.executable, "-m", "engine", "tiny-model", str(model)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    stall = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    stall.daemon_threads = True
    for s in (srv, stall):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield run_scenarios(
            addon_zip["path"], ["install", "install_refused", "install_cancelled", "install_engine",
                                "update_engine",
                                "remove_engine"],
            tmp_path_factory.mktemp("blender"), timeout=1500,
            script="blender_scenarios_install.py", local_port=free_port(), model=model,
            install_dir=tmp_path_factory.mktemp("engines"),
            refusing_index=f"http://127.0.0.1:{srv.server_address[1]}/simple",
            stalling_index=f"http://127.0.0.1:{stall.server_address[1]}/simple")
    finally:
        srv.shutdown()
        stall.shutdown()


def test_a_refused_install_says_what_to_try_and_leaves_no_engine(results):
    check(results, "install")
    r = check(results, "install_refused")
    assert "zimage.engine_install" in r["buttons_before"]
    assert r["outcome"] == "failed" and r["failure"] == "index_unreachable", r["message"]
    assert "installing pytorch" in r["message"].lower() and "pypi.org" in r["hint"]
    assert any(r["message"][:40] in line for line in r["error_lines"])   # shown in the prefs
    assert max(r["fractions"]) > 0.05          # it got as far as PyTorch
    assert r["listing"] == ["install.log"]     # no venv, no marker: only the log to open
    assert r["installed"] is None and r["engine_python"] == ""
    assert r["log_opens"]


def test_cancel_install_leaves_only_the_log(results):
    r = check(results, "install_cancelled")
    assert r["cancel_poll"] and r["outcome"] == "cancelled", r["message"]
    assert r["cancel_seconds"] < 20
    assert r["listing"] == ["install.log"] and r["installed"] is None
    assert r["engine_python"] == ""


def test_install_engine_then_a_texture_from_the_installed_engine(results):
    r = check(results, "install_engine")
    assert r["running_after_click"]            # the operator returned while pip worked
    fr = r["fractions"]
    assert fr == sorted(fr) and fr[-1] == 1.0 and len(set(fr)) >= 8, fr
    assert r["progress_bar_drawn"]
    assert r["slowest_tick_s"] < 0.5, r["slowest_tick_s"]     # Blender never waited for pip
    folder = r["marker"]["folder"]
    assert r["engine_dir"] == folder
    assert r["engine_python"] == r["marker"]["python"] == r["engine_cmd_python"]
    assert r["engine_python"].startswith(folder) and r["engine_python"] != sys.executable
    assert r["marker"]["torch"].startswith("2.13.0")
    assert r["engine_model"], r["engine_log"]
    assert r["phase"] == JobState.SUCCEEDED, r["error"]
    assert r["image_size"] == [128, 128] and r["pixels_equal_engine"]
    assert "zimage.engine_install" in r["buttons_after"]       # now Update / Remove
    print(f"install took {r['install_seconds']} s")


def test_update_engine(results):
    r = check(results, "update_engine")
    assert r["outcome"] == "done" and "updated" in r["message"], r["message"]
    assert r["torch_same"] and r["kept_torch_logged"] and r["marker_rewritten"]
    assert r["engine_python"] == r["marker_python"]
    assert r["slowest_tick_s"] < 0.5


def test_remove_engine(results):
    r = check(results, "remove_engine")
    assert r["outcome"] == "done", r["message"]
    assert not r["exists"] and r["installed"] is None
    assert r["engine_python"] == "" and r["engine_dir"] == ""
    assert results["_process"]["rc"] == 0, results["_process"]["stderr"]
