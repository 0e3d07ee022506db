"""Scene control against diffusers' ZImageControlNetPipeline / ZImageControlNetInpaintPipeline with
tiny random ZImageControlNetModels saved as single files in the released (2.1) key layout."""

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError
from engine.loading import load_pipeline
from engine.pipeline import GenerateRequest
from tests.engine.conditioning_refs import (
    assert_within_one_step,
    box_mask,
    diffusers_parts,
    make_controlnet_file,
    run_reference,
    sample_image,
)
from tests.engine.test_pipeline import run_cli

PROMPT = "a stone bridge over a river"


@pytest.fixture(scope="module")
def nets(tiny_model_dir, tmp_path_factory):
    """{"2.1": (path, diffusers model), "lite": ...}: 2 control layers on the 2-layer tiny model
    (every layer, like 2.1's 15 of 30) and 1 (like lite's 3 of 30)."""
    d = tmp_path_factory.mktemp("controlnet")
    return {"2.1": (d / "cn21.safetensors", make_controlnet_file(d / "cn21.safetensors",
                                                                 n_control_layers=2, seed=99)),
            "lite": (d / "lite.safetensors", make_controlnet_file(d / "lite.safetensors",
                                                                  n_control_layers=1, seed=7))}


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    return diffusers_parts(tiny_model_dir)


@pytest.fixture(scope="module")
def pipe21(tiny_model_dir, nets):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                         controlnet=str(nets["2.1"][0]))


def reference(parts, net, seed, **kwargs):
    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetPipeline

    cls = ZImageControlNetInpaintPipeline if "mask_image" in kwargs else ZImageControlNetPipeline
    return run_reference(cls(**parts, controlnet=net), seed, prompt=PROMPT, width=64, height=64,
                         **kwargs)


def test_cli_control_matches_diffusers(tiny_model_dir, nets, parts, tmp_path):
    ctrl = sample_image(64, 64, seed=8)
    Image.fromarray(ctrl).save(tmp_path / "depth.png")
    out = tmp_path / "out.png"
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--width", "64",
                "--height", "64", "--steps", "4", "--seed", "3", "--controlnet",
                str(nets["2.1"][0]), "--control-image", str(tmp_path / "depth.png"),
                "--control-type", "depth", "--control-scale", "0.75", "--output", str(out))
    assert r.returncode == 0, r.stderr
    ours = np.asarray(Image.open(out).convert("RGB"))
    theirs = reference(parts, nets["2.1"][1], 3, control_image=ctrl,
                       controlnet_conditioning_scale=0.75, num_inference_steps=4)
    assert_within_one_step(ours, theirs)


@pytest.mark.parametrize("scale", [0.4, 1.3])
def test_conditioning_scales_match_diffusers(pipe21, nets, parts, scale):
    ctrl = sample_image(64, 64, seed=9)
    ours = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=4, seed=5, control_image=ctrl,
                                           control_type="canny", control_scale=scale))
    theirs = reference(parts, nets["2.1"][1], 5, control_image=ctrl,
                       controlnet_conditioning_scale=scale, num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


def test_scale_zero_is_plain_txt2img(pipe21):
    ctrl = sample_image(64, 64, seed=9)
    a = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=2, seed=5, control_image=ctrl,
                                        control_type="pose", control_scale=0.0)).images[0]
    b = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=2, seed=5)).images[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_lite_layout_matches_diffusers(tiny_model_dir, nets, parts):
    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                         controlnet=str(nets["lite"][0]))
    assert pipe.controlnet.version == "2.1" and pipe.controlnet.layers_places == [0]
    ctrl = sample_image(64, 64, seed=10)
    ours = pipe.generate(GenerateRequest(PROMPT, 64, 64, steps=4, seed=2, control_image=ctrl,
                                         control_type="depth"))
    theirs = reference(parts, nets["lite"][1], 2, control_image=ctrl,
                       controlnet_conditioning_scale=0.75, num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


def test_inpaint_with_control_matches_diffusers(pipe21, nets, parts):
    img, ctrl, mask = sample_image(64, 64, seed=11), sample_image(64, 64, seed=12), box_mask()
    ours = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=4, seed=6, init_image=img, mask=mask,
                                           control_image=ctrl, control_type="inpaint"))
    theirs = reference(parts, nets["2.1"][1], 6, image=img, mask_image=mask, control_image=ctrl,
                       controlnet_conditioning_scale=0.75, num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


def test_capabilities(pipe21, tiny_model_dir):
    assert pipe21.info["capabilities"] == [
        "txt2img", "img2img", "inpaint", "tile",
        "control.depth", "control.canny", "control.pose", "control.inpaint"]
    plain = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    assert plain.info["capabilities"] == ["txt2img", "img2img", "inpaint", "tile"]
    with pytest.raises(EngineError) as e:
        plain.generate(GenerateRequest(PROMPT, 64, 64, steps=1, seed=1,
                                       control_image=sample_image(), control_type="depth"))
    assert e.value.code == "capability_unavailable" and e.value.field == "control_type"


def test_missing_or_wrong_controlnet_file(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file
    import torch

    with pytest.raises(EngineError) as e:
        load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                      controlnet=str(tmp_path / "nope.safetensors"))
    assert e.value.code == "model_unavailable" and e.value.field == "controlnet"
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EngineError) as e:
        load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                      controlnet=str(tmp_path / "other.safetensors"))
    assert e.value.code == "model_unavailable" and "ControlNet" in e.value.message


def test_cli_control_without_controlnet_is_refused(tiny_model_dir, tmp_path):
    Image.fromarray(sample_image()).save(tmp_path / "c.png")
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--width", "64",
                "--height", "64", "--control-image", str(tmp_path / "c.png"), "--control-type",
                "depth", "--output", str(tmp_path / "o.png"))
    assert r.returncode != 0 and "capability_unavailable" in r.stderr, r.stderr
