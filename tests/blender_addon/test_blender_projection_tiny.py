"""README.md "Blender: texture a model from all sides", step by step, with the tiny random
Z-Image model (real engine code on the CPU, started by the add-on): Suzanne, Texture All Sides
with the panel's defaults (4 views around + 1 above), 256² views -> a baked texture in a new
material. The tiny model has no ControlNet: view 1 is image-to-image from a shaded capture,
the later views inpaint the texture so far."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blender_harness import ROOT, check, free_port, have_bpy, run_scenarios
from protocol.messages import JobState

pytestmark = [pytest.mark.blender, pytest.mark.slow,
              pytest.mark.skipif(not have_bpy(), reason="needs bpy (pip install bpy==5.0.1)")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny") / "zimage-tiny"
    res = subprocess.run([sys.executable, "-m", "engine", "tiny-model", str(model)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return model


def test_readme_texture_all_sides_with_the_tiny_model(addon_zip, tiny_model, tmp_path):
    results = run_scenarios(addon_zip["path"], ["install", "readme_all_sides"], tmp_path,
                            timeout=600, script="projection_scenarios.py",
                            local_port=free_port(), repo=ROOT, model=tiny_model)
    check(results, "install")
    r = check(results, "readme_all_sides")
    assert r["defaults"] == {"views_source": "ORBIT", "around": 4, "above": True,
                             "use_depth": True, "sharpness": 2.0}
    assert "inpaint" in r["caps"] and not any(c.startswith("control") for c in r["caps"])
    assert r["requests"][0] == ["init_image"]                      # shaded capture
    assert all(b == ["init_image", "mask"] for b in r["requests"][1:]) and \
        len(r["requests"]) == 5
    assert r["prompts"][0].endswith("front view") and r["prompts"][4].endswith("top view")
    assert r["phase"] == JobState.SUCCEEDED and "from 5 views" in r["message"], r["message"]
    assert r["base_color_from_texture"] and r["uv_node"] == r["uv_maps"][-1:]
    assert r["image"]["size"] == [1024, 1024] and r["image"]["packed"]
    assert r["image"]["coverage"] and r["image"]["std"] > 0.01      # not a flat fill
    assert r["history"][-1] == [r["image"]["name"], "texture"]
