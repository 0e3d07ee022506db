"""The README's path with the real tiny pipeline: `python -m engine serve` plus the command-line
client `python -m protocol generate`, against the in-process pipeline's image for the same seed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.loading import load_pipeline
from tests.fixtures.serve import serving
from engine.pipeline import GenerateRequest

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with serving(tiny_model_dir, "--min-side", "64") as endpoint:
        yield endpoint


def client(endpoint: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protocol", "generate", "--engine", endpoint,
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_cli_client_gets_the_pipelines_image(engine, tiny_model_dir, tmp_path):
    out = tmp_path / "fox.png"
    r = client(engine, "--prompt", "a red fox", "--width", "64", "--height", "96", "--steps",
               "4", "--seed", "9", "--output", str(out))
    assert r.returncode == 0, r.stderr
    png = Image.open(out)
    served = np.asarray(png.convert("RGB"))
    params = json.loads(png.text["parameters"])
    assert (params["prompt"], params["seed"], params["steps"]) == ("a red fox", 9, 4)

    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    local = pipe.generate(GenerateRequest("a red fox", 64, 96, 4, seed=9)).images[0]
    assert np.array_equal(served, local)


def test_cli_client_reports_bad_size_in_one_line(engine, tmp_path):
    r = client(engine, "--prompt", "x", "--width", "70", "--height", "64", "--output",
               str(tmp_path / "x.png"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "width" in r.stderr.strip().splitlines()[-1]


def test_ctrl_c_cancels_the_job(engine, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocol", "generate", "--engine", engine, "--prompt", "slow",
         "--width", "256", "--height", "256", "--steps", "50", "--seed", "1", "--output",
         str(tmp_path / "never.png")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.time() + 60
    seen = ""
    while "denoise" not in seen and time.time() < deadline:  # wait for the progress bar
        seen += proc.stderr.read1(256).decode() if hasattr(proc.stderr, "read1") else \
            proc.stderr.buffer.read1(256).decode()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not (tmp_path / "never.png").exists()
    assert "cancel" in (seen + proc.stderr.read()).lower()


def test_image_to_image_over_the_wire(tiny_model_dir):
    """welcome advertises img2img and the protocol carries the input image as a PNG blob."""
    from engine.server import EngineServer
    from protocol.client import EngineClient, generate
    from protocol.messages import Limits
    from protocol.png import encode_png

    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    srv = EngineServer(pipe, bind="tcp://127.0.0.1:0", limits=Limits(min_side=64))
    srv.start()
    try:
        c = EngineClient(srv.endpoint).start()
        deadline = time.time() + 30
        while c.welcome is None and time.time() < deadline:
            c.poll(timeout=0.1)
        assert c.welcome is not None and "img2img" in c.welcome["caps"]
        c.close()
        ev = generate(srv.endpoint, {"prompt": "a fox", "width": 64, "height": 64, "steps": 4,
                                     "seed": 3, "strength": 0.5, "init_image": "src"},
                      blobs={"src": encode_png(64, 64, source.tobytes())}, timeout=120)
    finally:
        srv.stop()
    served = np.frombuffer(ev.images[0].to_rgb_bytes(), np.uint8).reshape(64, 64, 3)
    local = pipe.generate(GenerateRequest("a fox", 64, 64, 4, seed=3, init_image=source,
                                          strength=0.5)).images[0]
    assert np.array_equal(served, local)
