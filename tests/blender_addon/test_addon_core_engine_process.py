"""The local engine child: command line, ready, stop, and death with its parent (bpy-free).
Runs the real `python -m engine serve --standin` on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from blender_addon.core.engine_process import (BOOTSTRAP, RUNNING, STARTING, STOPPED,
                                               EngineProcess, child_env, serve_command)
from blender_harness import ROOT, free_port


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()
    except FileNotFoundError:
        return False


def _wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_serve_command_and_env():
    cmd = serve_command("/py", "tcp://localhost:5555", "some/model", extra=["-v"])
    assert cmd[:3] == ["/py", "-c", BOOTSTRAP]
    assert cmd[3:] == ["serve", "--bind", "tcp://127.0.0.1:5555", "--model", "some/model", "-v"]
    assert "--standin" in serve_command("/py", "tcp://127.0.0.1:1", "", standin=True)
    env = child_env({"PYTHONPATH": "/blender", "PATH": "/bin", "PYTHONHOME": "x"})
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env and env["PATH"] == "/bin"


def test_missing_python_is_a_clear_error(tmp_path):
    proc = EngineProcess(str(tmp_path / "nope"), "tcp://127.0.0.1:1", standin=True)
    with pytest.raises(FileNotFoundError, match="engine Python not found"):
        proc.start()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_start_ready_stop(tmp_path):
    log = tmp_path / "engine.log"
    address = f"tcp://localhost:{free_port()}"
    proc = EngineProcess(sys.executable, address, standin=True,
                         cwd=str(ROOT), extra=["--min-side", "64"], log_path=str(log))
    proc.start()
    try:
        assert proc.state == STARTING
        assert _wait_for(lambda: any(ln.startswith("ready") for ln in proc.log_tail()), 30), \
            proc.log_tail()
        proc.mark_running()
        assert proc.poll() == RUNNING
        pid = proc.pid
        # local trust: the engine wrote its token for this user only; the add-on's client
        # finds it from the address, a client with another token is refused
        assert os.stat(proc.connection_file).st_mode & 0o777 == 0o600
        from protocol.client import generate
        from protocol.errors import ProtocolError
        small = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1}
        assert generate(address, small, timeout=20).kind == "result"
        with pytest.raises(ProtocolError, match="wrong or missing token"):
            generate(address, small, timeout=20, token="0" * 64, accept_timeout_s=3)
    finally:
        proc.stop()
    assert proc.state == STOPPED and not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_engine_dies_with_its_parent(tmp_path):
    """A parent that is SIGKILLed (like a crashing Blender) takes the engine with it."""
    log = tmp_path / "engine.log"
    parent_code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from blender_addon.core.engine_process import EngineProcess
        p = EngineProcess({sys.executable!r}, "tcp://127.0.0.1:{free_port()}", standin=True,
                          cwd={str(ROOT)!r}, log_path={str(log)!r})
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    try:
        child = int(parent.stdout.readline())
        assert _wait_for(lambda: "ready" in (log.read_text() if log.exists() else ""), 30)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        assert _wait_for(lambda: not _alive(child), 10), "the engine outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_model_that_does_not_load_is_named_with_its_exit(tmp_path):
    # `serve` exits with EXIT_MODEL_FAILED; through the bootstrap that code arrives intact
    # (its stdin watcher used to hold a buffered reader's lock at shutdown: abort, code -6)
    from protocol.connection import EXIT_MODEL_FAILED
    log = tmp_path / "engine.log"
    missing = tmp_path / "no such model"
    proc = EngineProcess(sys.executable, f"tcp://127.0.0.1:{free_port()}", str(missing),
                         cwd=str(ROOT), log_path=str(log))
    proc.start()
    try:
        assert _wait_for(lambda: proc.poll() == "exited", 120), proc.log_tail()
        assert proc.proc.returncode == EXIT_MODEL_FAILED, proc.log_tail()
        assert proc.model_failed
        assert proc.exit_message.startswith("Model failed to load: ") and \
            str(missing) in proc.exit_message, proc.exit_message
        assert not any("Fatal Python error" in line for line in proc.log_tail(40))
    finally:
        proc.stop()
