"""Start, watch and stop a local engine (`python -m engine serve ...`). No bpy.

The engine must die with Blender, even when Blender crashes. The add-on does that on its own
side, without needing an engine option: the child is started through a small bootstrap
(`python -c BOOTSTRAP serve ...`) that

* keeps a pipe to its stdin open; when the pipe closes (Blender exited, crashed or stopped
  the engine) a watcher thread sends SIGTERM to the engine (a clean shutdown), then exits
  hard after a grace period;
* on Linux also asks the kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG);
* then runs the engine's own `__main__` exactly as `python -m engine` would.

Nothing here blocks except stop(), which waits a bounded time (used at unregister/exit).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

BOOTSTRAP = r"""
import os, signal, sys, threading, time, runpy
def _watch():
    try:
        while os.read(0, 1):      # unbuffered: no lock left held when the engine exits
            pass
    except Exception:
        pass
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except Exception:
        pass
    time.sleep(float(os.environ.get("ZIMAGE_PARENT_GRACE", "5")))
    os._exit(3)
threading.Thread(target=_watch, name="parent-watch", daemon=True).start()
if sys.platform.startswith("linux"):
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(3)
    except Exception:
        pass
sys.argv = ["engine"] + sys.argv[1:]
runpy.run_module("engine", run_name="__main__", alter_sys=True)
"""

STARTING, RUNNING, EXITED, STOPPED = "starting", "running", "exited", "stopped"


def bind_address(address: str) -> str:
    """The address the local engine binds: the client's, with localhost spelled out."""
    return address.replace("localhost", "127.0.0.1")


def _connection():
    try:
        from ..vendor.protocol import connection
    except ImportError:   # running from the repository (tests)
        from protocol import connection
    return connection


def connection_file(address: str) -> str:
    """Where the engine started for `address` writes its token (mode 0600); the add-on's
    EngineClient finds the same file from the address (protocol/PROTOCOL.md §8)."""
    return _connection().path_for(bind_address(address))


def serve_command(python: str, address: str, model: str, *, standin: bool = False,
                  extra: list[str] | None = None, conn_file: str | None = None) -> list[str]:
    cmd = [python, "-c", BOOTSTRAP, "serve", "--bind", bind_address(address)]
    if conn_file:
        cmd += ["--connection-file", conn_file]
    if standin:
        cmd.append("--standin")
    elif model:
        cmd += ["--model", model]
    return cmd + list(extra or [])


def child_env(base: dict | None = None) -> dict:
    """The host's Python paths must not leak into the engine's interpreter."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE",
                "BLENDER_USER_RESOURCES", "BLENDER_SYSTEM_PYTHON"):
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class EngineProcess:
    """One engine child. `state` is starting -> running (the add-on saw its welcome) ->
    exited (on its own; `exit_message` says why) or stopped (by us)."""

    def __init__(self, python: str, address: str, model: str = "", *, cwd: str | None = None,
                 standin: bool = False, extra: list[str] | None = None,
                 log_path: str | None = None):
        self.connection_file = connection_file(address)
        self.cmd = serve_command(python, address, model, standin=standin, extra=extra,
                                 conn_file=self.connection_file)
        self.python = python
        self.cwd = cwd or None
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.state = STOPPED
        self.exit_message = ""
        self.model_failed = False   # it exited because its model did not load
        self.started_at = 0.0

    # ---- control ----------------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.python or not Path(self.python).is_file():
            raise FileNotFoundError(f"engine Python not found: {self.python or '(not set)'}")
        if self.cwd and not Path(self.cwd).is_dir():
            raise FileNotFoundError(f"engine folder not found: {self.cwd}")
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.cwd,
                                         env=child_env(), close_fds=True, **kwargs)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()          # the child holds its own handle
        self.state = STARTING
        self.exit_message = ""
        self.model_failed = False
        self.started_at = time.monotonic()

    def mark_running(self) -> None:
        if self.state == STARTING:
            self.state = RUNNING

    def poll(self) -> str:
        """Non-blocking: notices an engine that exited on its own."""
        if self.proc is not None and self.state in (STARTING, RUNNING):
            code = self.proc.poll()
            if code is not None:
                self.state = EXITED
                tail = self.log_tail(3)
                self.model_failed = code == _connection().EXIT_MODEL_FAILED
                if self.model_failed and tail:
                    line = tail[-1].removeprefix("error: ")
                    self.exit_message = line[:1].upper() + line[1:]
                else:
                    self.exit_message = (f"The engine exited (code {code})"
                                         + (f": {tail[-1]}" if tail else "."))
        return self.state

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the engine shuts itself down), then terminate, then kill."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.state = STOPPED
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2.0)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> list[str]:
        if not self.log_path:
            return []
        try:
            with open(self.log_path, "rb") as fh:
                text = fh.read()[-16384:].decode("utf-8", "replace")
        except OSError:
            return []
        return list(deque((ln for ln in text.splitlines() if ln.strip()), maxlen=lines))
