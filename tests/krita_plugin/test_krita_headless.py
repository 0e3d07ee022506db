"""The plugin in real, headless Krita (kritarunner under Xvfb) against `engine serve` with the
tiny model. One Krita start runs every scenario (krita_scenarios.py); the tests below check
what each scenario saw against the engine's own images, fetched over the wire with the
project's client for the same parameters and inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protocol.messages import JobState
from tests.fixtures.serve import free_port, serving

from .conftest import HERE, ROOT, krita_missing

pytestmark = pytest.mark.skipif(krita_missing() is not None, reason=krita_missing() or "")

sys.path.insert(0, str(HERE))
from krita_scenarios import pattern  # noqa: E402  (the same test images Krita paints)



@pytest.fixture(scope="module")
def engine(tiny_engine_model_dir):
    with serving(tiny_engine_model_dir) as endpoint:
        yield endpoint


class Xvfb:
    """A private X server; -displayfd picks a free display number."""

    def __enter__(self):
        r, w = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0",
                                      "1280x1024x24", "-nolisten", "tcp"], pass_fds=(w,),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as fh:
            self.display = ":" + fh.readline().strip()
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def krita_run(engine, pykrita_dir, tiny_engine_model_dir, tmp_path_factory):
    """Start Krita once; every scenario's findings, by name."""
    out = tmp_path_factory.mktemp("krita-out")
    home = tmp_path_factory.mktemp("krita-home")
    cfg = {"out": str(out), "endpoint": engine,
           "dead_endpoint": f"tcp://127.0.0.1:{free_port()}",
           "local_endpoint": f"tcp://127.0.0.1:{free_port()}",
           "python": sys.executable, "root": str(ROOT), "model": str(tiny_engine_model_dir)}
    env = dict(os.environ, ZIMAGE_KRITA_TEST=json.dumps(cfg), HOME=str(home),
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_RUNTIME_DIR=str(home), PYTHONPATH=f"{pykrita_dir}{os.pathsep}{HERE}")
    t0 = time.monotonic()
    path = out / "results.json"
    for attempt in (1, 2):
        with Xvfb() as x:
            env["DISPLAY"] = x.display
            res = subprocess.run(["kritarunner", "-s", "krita_scenarios", "-f", "main"],
                                 env=env, capture_output=True, text=True, timeout=400)
        if path.exists():
            break
        # Krita died before the first scenario wrote anything: once more, saying so
        print(f"kritarunner attempt {attempt} wrote nothing (rc {res.returncode}):\n"
              f"{(res.stdout + res.stderr)[-3000:]}", file=sys.stderr)
    assert path.exists(), (res.stdout + res.stderr)[-4000:]
    results = json.loads(path.read_text())
    results["_seconds"] = time.monotonic() - t0
    results["_out"] = out
    return results


def scenario(krita_run, name: str) -> dict:
    r = krita_run[name]
    assert "exception" not in r, r["exception"]
    return r


def engine_image(endpoint, params, blobs=None) -> np.ndarray:
    from protocol.client import ImageData, generate
    images = {k: ImageData(w, h, c, "raw", data) for k, (w, h, c, data) in (blobs or {}).items()}
    ev = generate(endpoint, params, blobs=images, timeout=120)
    img = ev.images[0]
    return np.frombuffer(img.to_rgb_bytes(), np.uint8).reshape(img.height, img.width, 3)


def bgra(krita_run, name, width, height) -> np.ndarray:
    data = (krita_run["_out"] / name).read_bytes()
    return np.frombuffer(data, np.uint8).reshape(height, width, 4)


def rgb_of(bgra_pixels: np.ndarray) -> np.ndarray:
    return bgra_pixels[..., [2, 1, 0]]


def test_plugin_loads_from_the_zip_with_its_own_pyzmq(krita_run, pykrita_dir):
    p = krita_run["plugin"]
    assert "exception" not in p, p.get("exception")
    assert p["built"] and p["pyzmq"] is None and "ZImageExtension" in p["extension"]
    assert Path(p["file"]).is_relative_to(pykrita_dir)
    assert Path(p["zmq_file"]).is_relative_to(pykrita_dir / "zimage_krita" / ".deps")


def test_generate_makes_a_layer_with_the_engines_pixels(krita_run, engine):
    r = scenario(krita_run, "generate")
    assert r["done"] and r["phase"] == JobState.SUCCEEDED and r["status"] == "Done"
    assert r["layers"] == ["Background", "a red fox (11)"]
    assert r["history"] == ["a red fox (11)"] and r["progress"] == 1000
    assert r["recalled"] == {"prompt": "a red fox", "seed": 11, "random": False, "steps": 4}
    layer = bgra(krita_run, r["pixels"], 96, 64)
    want = engine_image(engine, {"prompt": "a red fox", "width": 96, "height": 64,
                                 "steps": 4, "seed": 11})
    assert np.array_equal(rgb_of(layer), want)
    assert (layer[..., 3] == 255).all()


def test_seamless_toggle_asks_for_tiles(krita_run, engine):
    r = scenario(krita_run, "seamless")
    assert r["done"] and r["status"] == "Done" and r["top"] == "mossy stones (2)"
    want = engine_image(engine, {"prompt": "mossy stones", "width": 64, "height": 64,
                                 "steps": 2, "seed": 2, "tile": "xy"})
    plain = engine_image(engine, {"prompt": "mossy stones", "width": 64, "height": 64,
                                  "steps": 2, "seed": 2})
    got = rgb_of(bgra(krita_run, r["pixels"], 64, 64))
    assert np.array_equal(got, want) and not np.array_equal(got, plain)


def test_several_images_become_several_layers(krita_run):
    r = scenario(krita_run, "two_images")
    assert r["done"] and r["layers"] == ["Background", "two cats (20)", "two cats (21)"]


def test_image_to_image_from_the_current_layer(krita_run, engine):
    r = scenario(krita_run, "img2img")
    assert r["done"] and r["phase"] == JobState.SUCCEEDED, r["status"]
    assert r["layers"] == ["Background", "paint", "oil painting (5)"]
    layer = bgra(krita_run, r["pixels"], 64, 64)
    want = engine_image(engine, {"prompt": "oil painting", "width": 64, "height": 64,
                                 "steps": 4, "seed": 5, "init_image": "init_image",
                                 "strength": 0.5},
                        {"init_image": (64, 64, 3, pattern(64, 64, salt=3))})
    assert np.array_equal(rgb_of(layer), want)


def test_inpainting_changes_only_the_selection(krita_run, engine):
    r = scenario(krita_run, "inpaint")
    assert r["done"] and r["phase"] == JobState.SUCCEEDED, r["status"]
    assert r["top"] == "a red door (7)"
    before = bgra(krita_run, r["before"], 72, 60)
    after = bgra(krita_run, r["after"], 72, 60)
    inside = np.zeros((60, 72), bool)
    inside[8:32, 16:48] = True                       # Selection.select(16, 8, 32, 24)
    assert np.array_equal(after[~inside], before[~inside])
    # the engine saw the canvas grown to 80 x 64 (edges repeated, never repainted)
    source = np.frombuffer(pattern(72, 60, salt=1), np.uint8).reshape(60, 72, 3)
    mask = np.pad(inside * 255, ((0, 4), (0, 8))).astype(np.uint8)
    want = engine_image(engine, {"prompt": "a red door", "width": 80, "height": 64,
                                 "steps": 4, "seed": 7, "init_image": "init_image",
                                 "mask": "mask"},
                        {"init_image": (80, 64, 3, np.pad(source, ((0, 4), (0, 8), (0, 0)),
                                                          mode="edge").tobytes()),
                         "mask": (80, 64, 1, mask.tobytes())})[:60, :72]
    assert np.array_equal(rgb_of(after)[inside], want[inside])
    assert not np.array_equal(rgb_of(after)[inside], rgb_of(before)[inside])
    layer = bgra(krita_run, r["pixels"], 72, 60)
    assert (layer[..., 3][~inside] == 0).all() and (layer[..., 3][inside] == 255).all()
    empty = r["no_selection"]
    assert empty["unchanged"] and "nothing is selected" in empty["status"]


def test_a_canvas_of_any_size_gets_the_engines_pixels_in_place(krita_run, engine):
    r = scenario(krita_run, "odd_canvas")
    assert r["done"] and r["status"] == "Done" and r["top"] == "a blue bird (13)"
    assert r["bounds"] == [100, 70]
    want = engine_image(engine, {"prompt": "a blue bird", "width": 112, "height": 80,
                                 "steps": 3, "seed": 13})
    assert np.array_equal(rgb_of(bgra(krita_run, r["pixels"], 100, 70)), want[:70, :100])


def test_bad_size_is_a_message_and_nothing_changes(krita_run):
    r = scenario(krita_run, "bad_size")
    assert r["unchanged"] and not r["sent"]
    assert r["status"].startswith("Unsupported size 70 x 64: both sides must be multiples of 16")


def test_engine_not_running_is_a_message_and_nothing_changes(krita_run):
    r = scenario(krita_run, "not_running")
    assert r["done"] and r["unchanged"] and r["error"] == "engine_unreachable"
    assert r["status"].startswith("The image engine is not running.")
    assert "Start Local Engine" in r["status"]


def test_cancel_applies_nothing(krita_run):
    r = scenario(krita_run, "cancel")
    assert r["started"] and r["preview"]          # a per-step preview was on show
    assert r["phase"] == JobState.CANCELLED and r["status"] == "Cancelled"
    assert r["unchanged"] and r["layers"] == ["Background"]


def test_engine_killed_mid_job_is_a_message_and_nothing_changes(krita_run):
    r = scenario(krita_run, "killed")
    assert r["connected"] and r["started"] and r["done"]   # started by the docker itself
    assert r["error"] == "engine_lost" and r["unchanged"]
    assert r["status"].startswith("The connection to the image engine was lost")
    assert r["engine_after"].startswith("The engine exited (code -9)")

