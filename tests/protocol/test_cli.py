"""`python -m protocol generate` as a subprocess against an in-process stand-in engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.server import EngineServer
from engine.standin import StandInPipeline, pattern_image
from protocol.messages import Limits

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def serve(step_seconds=0.0):
    srv = EngineServer(StandInPipeline(step_seconds), bind="tcp://127.0.0.1:0",
                       limits=Limits(min_side=64, max_side=512, max_pixels=512 * 512)).start()
    try:
        yield srv
    finally:
        srv.stop()


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "protocol", "generate", *args], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=60, **kw)


def test_generate_writes_png_with_parameters(tmp_path):
    from PIL import Image
    import numpy as np
    out = tmp_path / "fox.png"
    with serve() as srv:
        for fmt in ("raw", "png"):
            r = cli("--engine", srv.endpoint, "--prompt", "a red fox", "--width", "64",
                    "--height", "64", "--steps", "3", "--seed", "5", "--output", str(out),
                    "--format", fmt)
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr and f"wrote {out}" in r.stderr
            im = Image.open(out)
            meta = json.loads(im.info["parameters"])
            assert meta["prompt"] == "a red fox" and meta["seed"] == 5 and meta["steps"] == 3
            assert (np.asarray(im) == pattern_image(5, 64, 64)).all()


def test_errors_are_one_line_and_nonzero(tmp_path):
    out = str(tmp_path / "x.png")
    with serve() as srv:
        r = cli("--engine", srv.endpoint, "--prompt", "x", "--width", "65", "--height", "64",
                "--output", out)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            "error: invalid_params (params.width): must be a multiple of 16, got 65"]
    r = cli("--engine", "tcp://127.0.0.1:1", "--prompt", "x", "--output", out,
            "--connect-timeout", "1")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: engine_unreachable")
    r = cli("--engine", "not-an-endpoint", "--prompt", "x", "--output", out,
            "--connect-timeout", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert not os.path.exists(out)


def test_ctrl_c_cancels_the_job_then_exits_nonzero(tmp_path):
    with serve(step_seconds=0.1) as srv:
        p = subprocess.Popen([sys.executable, "-m", "protocol", "generate", "--engine",
                              srv.endpoint, "--prompt", "x", "--width", "64", "--height", "64",
                              "--steps", "50", "--output", str(tmp_path / "c.png")],
                             cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 20
        while not any(j.state == "running" for j in srv.jobs.values()):
            assert time.monotonic() < end
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 130
        assert err.strip().splitlines()[-1].startswith("error: cancelled")
        assert "Traceback" not in err
        job = next(iter(srv.jobs.values()))
        end = time.monotonic() + 5
        while job.state == "running" and time.monotonic() < end:
            time.sleep(0.02)
        assert job.state == "cancelled" and job.at_step < 50


def test_live_flag_reaches_the_engine_and_a_bad_key_is_one_line(tmp_path):
    out = tmp_path / "live.png"
    with serve() as srv:
        r = cli("--engine", srv.endpoint, "--prompt", "a fox", "--width", "64", "--height",
                "64", "--steps", "2", "--seed", "1", "--output", str(out), "--live", "cam-1")
        assert r.returncode == 0, r.stderr
        assert [j.live for j in srv.jobs.values()] == ["cam-1"]
        r = cli("--engine", srv.endpoint, "--prompt", "a fox", "--width", "64", "--height",
                "64", "--output", str(out), "--live", "not a key")
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "live" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
