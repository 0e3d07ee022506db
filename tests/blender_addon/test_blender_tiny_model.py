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
from protocol.messages import JobState

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
    assert r["phase"] == JobState.SUCCEEDED, r["error"]
    assert r["new_slot"] and r["base_color_from_texture"]
    assert r["material"] == r["image"]["name"] == f"red brick wall ({r['seed']})"
    assert r["image"]["size"] == [256, 256] and r["image"]["packed"]
    assert r["image"]["props"]["zimage_model"] == str(tiny_model)
    assert r["pixels_equal_engine"]
    assert 0 < r["pixel_mean"] < 255
    assert results["_process"]["rc"] == 0, results["_process"]["stderr"]


def test_a_lora_from_the_engines_list_on_a_texture(addon_zip, tiny_model, tmp_path):
    """issue 13: the sidebar's LoRA list comes from the engine's welcome; a texture made with
    one records it (PNG parameters, image properties, history) and Recall restores it."""
    import torch
    from safetensors.torch import save_file

    loras = tmp_path / "loras"
    loras.mkdir()
    g = torch.Generator().manual_seed(3)
    sd = {}
    from safetensors import safe_open
    for f in sorted((tiny_model / "transformer").glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.endswith(("attention.to_q.weight", "attention.to_v.weight")):
                    out_f, in_f = st.get_slice(k).get_shape()
                    key = "lora_unet_" + k[: -len(".weight")].replace(".", "_")
                    sd[f"{key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.3
                    sd[f"{key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.3
    assert sd
    save_file(sd, str(loras / "moss style.safetensors"))
    results = run_scenarios(addon_zip["path"], ["install", "readme_walkthrough", "lora_texture"],
                            tmp_path, timeout=300, local_port=free_port(), repo=ROOT,
                            model=tiny_model, lora_dir=loras)
    r = check(results, "lora_texture")
    assert r["listed"] == [["moss style", 4, False, True]], r
    assert "template_list" not in r["panel"] and "ZIMAGE_UL_loras" in r["panel"]
    assert r["phase"] == JobState.SUCCEEDED, r["error"]
    assert r["params_loras"] == [{"name": "moss style", "weight": 0.5}]
    assert r["image_loras"] and "moss style" in r["image_loras"] and r["png_has_loras"]
    assert r["pixels_equal_engine"] and r["lora_changes_pixels"]
    assert r["recalled"] == [["moss style", True, 0.5]]
