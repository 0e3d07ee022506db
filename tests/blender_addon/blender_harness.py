"""Helpers for the add-on tests: stand-in engines on loopback, and a runner for Blender
scenario scripts in a subprocess (each gets a clean bpy and environment)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:          # bpy-free unit tests import blender_addon.core
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_bpy() -> bool:
    try:
        import importlib.util
        return importlib.util.find_spec("bpy") is not None
    except Exception:
        return False


class Engine:
    def __init__(self, proc: subprocess.Popen, address: str):
        self.proc, self.address = proc, address

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_standin(step_seconds: float = 0.0, caps: str | None = None) -> Engine:
    address = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, str(HERE / "standin_server.py"), "--bind", address,
           "--step-seconds", str(step_seconds)]
    if caps is not None:
        cmd += ["--caps", caps]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    line = proc.stdout.readline().decode()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"stand-in engine did not start: {line!r} "
                           f"{proc.stderr.read().decode()[-2000:]}")
    return Engine(proc, address)


def run_scenarios(zip_path: Path, scenarios: list[str], tmp_path: Path, timeout: float = 150,
                  script: str = "blender_scenarios.py", **args) -> dict:
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(HERE / script), "--zip", str(zip_path),
           "--out", str(out), "--scenarios", ",".join(scenarios)]
    for key, value in args.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                         env=env)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["_process"] = {"rc": res.returncode, "seconds": round(time.monotonic() - t0, 1),
                           "stdout": res.stdout[-4000:], "stderr": res.stderr[-4000:]}
    return results


def check(results: dict, name: str) -> dict:
    """The scenario's facts, failing with its traceback (or the process log) if it broke."""
    if name not in results:
        proc = results.get("_process", {})
        pytest.fail(f"scenario {name} did not run (rc {proc.get('rc')}):\n"
                    f"{proc.get('stdout', '')}\n{proc.get('stderr', '')}")
    r = results[name]
    if not r["ok"]:
        pytest.fail(f"scenario {name} failed:\n{r['error']}")
    return r
