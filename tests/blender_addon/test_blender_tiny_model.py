"""ONE end-to-end test with the real model code, following README.md's "Blender: from install
to a texture on a cube" step by step: a tiny random Z-Image model (`python -m engine tiny-model
DIR`), the built zip installed into real Blender, the preferences set (Engine Python, Engine
Folder, Model), Start Local Engine (the add-on runs `python -m engine serve --model DIR`), a
prompt, Generate Texture on the default cube -> a new material whose Base Color is the
engine's exact pixels (the tiny model is deterministic for a seed on one device)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blender_harness import ROOT, check, free_port, have_bpy, run_scenarios

pytestmark = [pytest.mark.blender, pytest.mark.slow,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    if not (ROOT / "engine" / "tiny.py").exists() or \
            not (ROOT / "engine" / "serve_cli.py").exists():
        pytest.skip("engine tiny-model / serve are not available yet")
    model = tmp_path_factory.mktemp("tiny") / "zimage-tiny"
    res = subprocess.run([sys.executable, "-m", "engine", "tiny-model", str(model)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return model


def test_readme_walkthrough_texture_from_the_tiny_model(addon_zip, tiny_model, tmp_path):
    results = run_scenarios(addon_zip["path"], ["install", "readme_walkthrough"], tmp_path,
                            timeout=240, local_port=free_port(), repo=ROOT, model=tiny_model)
    check(results, "install")
    r = check(results, "readme_walkthrough")
    # the preferences the README leaves alone
    assert r["prefs_defaults"] == {"standin": False, "extra_args": "", "auto_start": True}
    assert r["engine_model"] == str(tiny_model), r["engine_log"]
    assert r["engine_device"] in ("cpu", "cuda", "cuda:0", "mps"), r["engine_device"]
    # the default cube, the sidebar tab and its button
    assert r["default_active"] == "Cube" and r["default_selected"]
    assert r["view3d_tabs"] == ["Z-Image"]
    assert "Texture" in r["view3d_panels"]
    assert "zimage.generate_texture" in r["texture_panel_buttons"]
    assert r["steps"] == 8 and r["seed_random"]
    # Generate -> a new material on the cube, Base Color <- the engine's pixels
    assert r["phase"] == "done", r["error"]
    assert r["new_slot"] and r["base_color_from_texture"]
    assert r["material"] == r["image"]["name"] == f"red brick wall ({r['seed']})"
    assert r["image"]["size"] == [256, 256] and r["image"]["packed"]
    assert r["image"]["props"]["zimage_model"] == str(tiny_model)
    assert r["pixels_equal_engine"]
    assert 0 < r["pixel_mean"] < 255
    assert results["_process"]["rc"] == 0, results["_process"]["stderr"]
