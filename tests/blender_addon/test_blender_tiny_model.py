"""ONE end-to-end test with the real model code: a tiny random Z-Image model
(`python -m engine tiny-model DIR`), served by `python -m engine serve --model DIR` on CPU,
and the built add-on generating a texture from it in real Blender. The texture's pixels must
be exactly what the engine returns for the same request (the tiny model is deterministic
for a seed on CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blender_harness import ROOT, Engine, check, free_port, have_bpy, run_scenarios

pytestmark = [pytest.mark.blender, pytest.mark.slow,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    if not (ROOT / "engine" / "tiny.py").exists() or not (ROOT / "engine" / "serve_cli.py").exists():
        pytest.skip("engine tiny-model / serve are not available yet")
    model = tmp_path_factory.mktemp("tiny") / "model"
    res = subprocess.run([sys.executable, "-m", "engine", "tiny-model", str(model)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--model", str(model),
                             "--bind", address, "--min-side", "64", "--device", "cpu"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stdout.readline().decode()
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"engine did not start: {line!r} {proc.stderr.read().decode()[-2000:]}")
    engine = Engine(proc, address)
    engine.model = str(model)
    yield engine
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_texture_from_the_tiny_model(addon_zip, tiny_engine, tmp_path):
    from protocol.client import generate
    expected = generate(tiny_engine.address, {"prompt": "red brick wall", "width": 64,
                                              "height": 64, "steps": 3, "seed": 7,
                                              "num_images": 1}, timeout=120)
    want = list(expected.images[0].to_rgb_bytes())
    results = run_scenarios(addon_zip["path"], ["install", "texture"], tmp_path,
                            engine=tiny_engine.address)
    check(results, "install")
    r = check(results, "texture")
    assert r["phase"] == "done", r["error"]
    assert r["image"]["props"]["zimage_model"] == tiny_engine.model
    assert r["rgb8"] == want
