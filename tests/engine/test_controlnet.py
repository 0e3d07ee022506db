"""Scene control against diffusers' ZImageControlNetPipeline / ZImageControlNetInpaintPipeline with
tiny random ZImageControlNetModels saved as single files in the released key layouts.

2.x files are checked against the trainer-faithful reference (diffusers 0.42.1 with hooks that
add the control refiner's hints to the main noise refiner, as VideoX-Fun trained them); 1.0 files
against plain diffusers (no refiner hints, nothing differs)."""

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
    trainer_faithful,
)
from tests.engine.test_pipeline import run_cli

PROMPT = "a stone bridge over a river"
SIZES = [(64, 64), (96, 64)]  # (width, height): square and non-square
SCALES = [0.4, 0.75, 1.0]


@pytest.fixture(scope="module")
def nets(tiny_model_dir, tmp_path_factory):
    """{"2.1": (path, diffusers model), "lite": ..., "1.0": ...}: 2 control layers on the
    2-layer tiny model (every layer, like 2.1's 15 of 30), 1 (like lite's 3 of 30), and a 1.0
    file (plain control refiner, 16 control channels)."""
    d = tmp_path_factory.mktemp("controlnet")
    return {"2.1": (d / "cn21.safetensors", make_controlnet_file(d / "cn21.safetensors",
                                                                 n_control_layers=2, seed=99)),
            "lite": (d / "lite.safetensors", make_controlnet_file(d / "lite.safetensors",
                                                                  n_control_layers=1, seed=7)),
            "2.0": (d / "cn20.safetensors", make_controlnet_file(
                d / "cn20.safetensors", n_control_layers=2, seed=21, version="2.0")),
            "1.0": (d / "cn10.safetensors", make_controlnet_file(
                d / "cn10.safetensors", n_control_layers=2, seed=5, control_in_dim=16,
                version="1.0"))}


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    return diffusers_parts(tiny_model_dir)


@pytest.fixture(scope="module")
def pipes(tiny_model_dir, nets):
    return {name: load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32",
                                controlnet=str(path)) for name, (path, _) in nets.items()}


@pytest.fixture(scope="module")
def pipe21(pipes):
    return pipes["2.1"]


def reference(parts, net, seed, *, width=64, height=64, faithful=True, **kwargs):
    """The trainer-faithful reference (faithful=False: plain diffusers 0.42.1)."""
    from contextlib import nullcontext

    from diffusers import ZImageControlNetInpaintPipeline, ZImageControlNetPipeline

    cls = ZImageControlNetInpaintPipeline if "mask_image" in kwargs else ZImageControlNetPipeline
    pipe = cls(**parts, controlnet=net)
    with trainer_faithful(pipe) if faithful else nullcontext(pipe):
        return run_reference(pipe, seed, prompt=PROMPT, width=width, height=height, **kwargs)


@pytest.mark.parametrize("version,scale,size", [("2.1", 0.75, (64, 64)), ("lite", 0.4, (96, 64)),
                                                ("2.1", 1.0, (64, 96))])
def test_cli_control_matches_trainer(nets, parts, tmp_path, tiny_model_dir, version, scale, size):
    w, h = size
    ctrl = sample_image(w, h, seed=8)
    Image.fromarray(ctrl).save(tmp_path / "depth.png")
    out = tmp_path / "out.png"
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--width", str(w),
                "--height", str(h), "--steps", "4", "--seed", "3", "--controlnet",
                str(nets[version][0]), "--control-image", str(tmp_path / "depth.png"),
                "--control-type", "depth", "--control-scale", str(scale), "--output", str(out))
    assert r.returncode == 0, r.stderr
    ours = np.asarray(Image.open(out).convert("RGB"))
    theirs = reference(parts, nets[version][1], 3, width=w, height=h, control_image=ctrl,
                       controlnet_conditioning_scale=scale, num_inference_steps=4)
    assert_within_one_step(ours, theirs)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("version", ["2.1", "lite"])
def test_control_matches_trainer(pipes, nets, parts, version, scale, size):
    w, h = size
    ctrl = sample_image(w, h, seed=9)
    ours = pipes[version].generate(GenerateRequest(
        PROMPT, w, h, steps=4, seed=5, control_image=ctrl, control_type="depth",
        control_scale=scale))
    theirs = reference(parts, nets[version][1], 5, width=w, height=h, control_image=ctrl,
                       controlnet_conditioning_scale=scale, num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("version", ["2.1", "lite"])
def test_inpaint_with_control_matches_trainer(pipes, nets, parts, version, scale, size):
    w, h = size
    img, ctrl = sample_image(w, h, seed=11), sample_image(w, h, seed=12)
    mask = box_mask(w, h)
    ours = pipes[version].generate(GenerateRequest(
        PROMPT, w, h, steps=4, seed=6, init_image=img, mask=mask, control_image=ctrl,
        control_type="inpaint", control_scale=scale))
    theirs = reference(parts, nets[version][1], 6, width=w, height=h, image=img, mask_image=mask,
                       control_image=ctrl, controlnet_conditioning_scale=scale,
                       num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


def test_trainer_and_diffusers_really_differ(pipe21, nets, parts):
    """The comparison above tells the two behaviours apart: plain diffusers is far off."""
    ctrl = sample_image(64, 64, seed=9)
    ours = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=4, seed=5, control_image=ctrl,
                                           control_type="depth", control_scale=1.0)).images[0]
    plain = reference(parts, nets["2.1"][1], 5, faithful=False, control_image=ctrl,
                      controlnet_conditioning_scale=1.0, num_inference_steps=4)
    assert np.abs(ours.astype(int) - plain.astype(int)).max() > 10


@pytest.mark.parametrize("scale", [0.4, 1.0])
def test_2_0_follows_the_trainer_too(pipes, nets, parts, scale):
    """2.0 files: the refiner-stage hints come from a first pass of the control layers, added to
    the main noise refiner as the trainer did (add_control_noise_refiner_correctly: false)."""
    pipe = pipes["2.0"]
    assert pipe.controlnet.version == "2.0" and pipe.controlnet.control_noise_refiner is None
    ctrl = sample_image(96, 64, seed=14)
    ours = pipe.generate(GenerateRequest(PROMPT, 96, 64, steps=4, seed=7, control_image=ctrl,
                                         control_type="depth", control_scale=scale))
    theirs = reference(parts, nets["2.0"][1], 7, width=96, height=64, control_image=ctrl,
                       controlnet_conditioning_scale=scale, num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


@pytest.mark.parametrize("scale", [0.4, 1.0])
def test_1_0_matches_diffusers_unchanged(pipes, nets, parts, scale):
    pipe = pipes["1.0"]
    assert pipe.controlnet.version == "1.0" and pipe.controlnet.control_in_dim == 16
    ctrl = sample_image(96, 64, seed=13)
    ours = pipe.generate(GenerateRequest(PROMPT, 96, 64, steps=4, seed=4, control_image=ctrl,
                                         control_type="canny", control_scale=scale))
    theirs = reference(parts, nets["1.0"][1], 4, width=96, height=64, faithful=False,
                       control_image=ctrl, controlnet_conditioning_scale=scale,
                       num_inference_steps=4)
    assert_within_one_step(ours.images[0], theirs)


def test_scale_zero_is_plain_txt2img(pipe21):
    ctrl = sample_image(64, 64, seed=9)
    a = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=2, seed=5, control_image=ctrl,
                                        control_type="pose", control_scale=0.0)).images[0]
    b = pipe21.generate(GenerateRequest(PROMPT, 64, 64, steps=2, seed=5)).images[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_lite_layout(pipes):
    assert pipes["lite"].controlnet.version == "2.1"
    assert pipes["lite"].controlnet.layers_places == [0]


def test_capabilities(pipe21, tiny_model_dir):
    assert pipe21.info["capabilities"] == [
        "txt2img", "img2img", "inpaint", "tile", "lora",
        "control.depth", "control.canny", "control.pose", "control.inpaint"]
    plain = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    assert plain.info["capabilities"] == ["txt2img", "img2img", "inpaint", "tile", "lora"]
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
