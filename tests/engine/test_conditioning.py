"""The pure parts of image conditioning: the resize/crop rule, masks, the cut schedule, defaults,
and a clear EngineError (invalid_params + field) for every bad new input."""

import dataclasses

import numpy as np
import pytest

from engine.conditioning import default_size, fit_image, fit_mask, resolve_strength
from engine.errors import EngineError
from engine.pipeline import GenerateRequest, Limits, check_request
from engine.sampling import cut_schedule, get_schedule

IMG = np.zeros((64, 64, 3), np.uint8)
MASK = np.zeros((64, 64), np.uint8)


def test_same_size_is_untouched():
    img = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    assert fit_image(img, 80, 48) is img


def test_cover_then_centre_crop():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # a white centre third
    out = fit_image(img, 64, 64)  # scaled to 64 high (192 wide), the centre 64 columns kept
    assert out.shape == (64, 64, 3)
    assert out[:, 8:56].min() > 200  # the centre survives, nothing is stretched or padded
    tall = fit_image(np.zeros((300, 50, 3), np.uint8), 64, 32)
    assert tall.shape == (32, 64, 3)


def test_mask_binarised_at_half():
    m = np.array([[0, 127, 128, 255]], np.uint8)
    assert fit_mask(m, 4, 1).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert fit_mask(np.full((10, 20), 255, np.uint8), 16, 16).shape == (16, 16)


def test_cut_schedule_matches_diffusers_get_timesteps():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.z_image.pipeline_z_image_img2img import (
        ZImageImg2ImgPipeline,
        get_default_z_image_sigmas,
    )

    for steps in (4, 8, 9):
        for strength in (1.0, 0.75, 0.6, 0.3, 0.05, 0.0):
            sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
            sched.set_timesteps(steps, sigmas=get_default_z_image_sigmas(steps), mu=0.7)
            fake = type("P", (), {"scheduler": sched})()
            ts, n = ZImageImg2ImgPipeline.get_timesteps(fake, steps, strength, "cpu")
            ours = cut_schedule(get_schedule(steps, 3.0), strength)
            assert len(ours) - 1 == n
            assert np.allclose(ours[:-1], (ts / 1000).tolist(), atol=1e-6)


def test_default_strengths_and_sizes():
    assert resolve_strength(GenerateRequest("a", init_image=IMG)) == 0.6
    assert resolve_strength(GenerateRequest("a", init_image=IMG, mask=MASK)) == 1.0
    assert resolve_strength(GenerateRequest("a", init_image=IMG, strength=0.2)) == 0.2
    assert default_size(np.zeros((100, 150, 3), np.uint8), Limits()) == (144, 96)
    w, h = default_size(np.zeros((3000, 6000, 3), np.uint8), Limits())
    assert w <= 2048 and h <= 2048 and w % 16 == h % 16 == 0 and w / h == pytest.approx(2, 0.05)


BAD = [  # field, overrides
    ("init_image", dict(init_image=np.zeros((64, 64), np.uint8))),
    ("init_image", dict(init_image=np.zeros((64, 64, 3), np.float32))),
    ("init_image", dict(init_image=[[0, 0, 0]])),
    ("init_image", dict(init_image=np.zeros((0, 64, 3), np.uint8))),
    ("mask", dict(mask=MASK)),  # no image
    ("mask", dict(init_image=IMG, mask=np.zeros((32, 64), np.uint8))),  # size differs
    ("mask", dict(init_image=IMG, mask=np.zeros((64, 64, 3), np.uint8))),
    ("strength", dict(init_image=IMG, strength=1.5)),
    ("strength", dict(init_image=IMG, strength=-0.1)),
    ("strength", dict(init_image=IMG, strength=float("nan"))),
    ("strength", dict(init_image=IMG, strength="0.5")),
    ("strength", dict(strength=0.5)),  # no image
    ("control_type", dict(control_image=IMG, control_type="normal")),
    ("control_type", dict(control_image=IMG)),  # no type
    ("control_type", dict(control_type="depth")),  # no map (the protocol's rule names the type)
    ("control_image", dict(control_image=np.zeros((8, 8, 4), np.uint8), control_type="depth")),
    ("control_type", dict(control_type="inpaint")),  # inpaint control needs image + mask
    ("control_type", dict(init_image=IMG, control_type="inpaint")),
    ("control_scale", dict(control_image=IMG, control_type="depth", control_scale=5.0)),
    ("control_scale", dict(control_image=IMG, control_type="depth", control_scale="1")),
    ("tile", dict(tile="z")),
    ("tile", dict(tile=True)),
]


@pytest.mark.parametrize("field,overrides", BAD)
def test_bad_inputs_name_their_field(field, overrides):
    req = dataclasses.replace(GenerateRequest("a fox", 64, 64), **overrides)
    with pytest.raises(EngineError) as e:
        check_request(req, Limits())
    assert e.value.code == "invalid_params" and e.value.field == field, e.value.message


def test_good_inputs_pass():
    for overrides in (dict(init_image=IMG, strength=0.0), dict(init_image=IMG, mask=MASK, strength=1),
                      dict(control_image=IMG, control_type="pose", control_scale=0),
                      dict(init_image=IMG, mask=MASK, control_type="inpaint"), dict(tile="xy")):
        check_request(dataclasses.replace(GenerateRequest("a fox", 64, 64), **overrides),
                      Limits())
