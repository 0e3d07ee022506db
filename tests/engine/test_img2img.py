"""Image-to-image against diffusers' ZImageImg2ImgPipeline (tiny random model, float32, CPU).

Strength cuts the N-step schedule as diffusers does; the VAE posterior sample and the noise come
from one generator per seed in diffusers' order. Strength 0 runs no step: the input comes back
through a VAE round trip (diffusers refuses strength 0, so its VAE is the oracle there).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.loading import load_pipeline
from engine.pipeline import GenerateRequest
from tests.engine.conditioning_refs import (
    assert_within_one_step,
    diffusers_parts,
    run_reference,
    sample_image,
)
from tests.engine.test_pipeline import run_cli
from tests.fixtures.zimage import to_uint8

PROMPT = "a watercolour harbour at dawn"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    from diffusers import ZImageImg2ImgPipeline

    return ZImageImg2ImgPipeline(**diffusers_parts(tiny_model_dir))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    img = sample_image(64, 64, seed=1)
    path = tmp_path_factory.mktemp("img2img") / "in.png"
    Image.fromarray(img).save(path)
    return img, path


@pytest.mark.parametrize("strength,steps,seed", [(1.0, 4, 3), (0.6, 8, 11)])
def test_cli_img2img_matches_diffusers(tiny_model_dir, ref, source, tmp_path, strength, steps,
                                       seed):
    img, path = source
    out = tmp_path / "out.png"
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", PROMPT, "--image",
                str(path), "--strength", str(strength), "--steps", str(steps), "--seed",
                str(seed), "--output", str(out))
    assert r.returncode == 0, r.stderr
    ours = np.asarray(Image.open(out).convert("RGB"))
    assert ours.shape == (64, 64, 3)  # the size defaults to the input image's
    theirs = run_reference(ref, seed, prompt=PROMPT, image=img, strength=strength, width=64,
                           height=64, num_inference_steps=steps)
    assert_within_one_step(ours, theirs)


@pytest.mark.parametrize("strength", [0.3, 0.05])
def test_api_img2img_low_strengths_match_diffusers(pipe, ref, source, strength):
    img, _ = source
    ours = pipe.generate(GenerateRequest(PROMPT, 64, 64, steps=8, seed=5, init_image=img,
                                         strength=strength))
    theirs = run_reference(ref, 5, prompt=PROMPT, image=img, strength=strength, width=64,
                           height=64, num_inference_steps=8)
    assert_within_one_step(ours.images[0], theirs)


def test_strength_zero_is_a_vae_round_trip(pipe, ref, source):
    img, _ = source
    steps = []
    ours = pipe.generate(GenerateRequest(PROMPT, 64, 64, steps=8, seed=9, init_image=img, strength=0),
                         on_progress=lambda p: steps.append(p.stage))
    assert "denoise" not in steps
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        z = ref.vae.encode(x).latent_dist.sample(torch.Generator("cpu").manual_seed(9))
        dec = ref.vae.decode(z).sample
    theirs = to_uint8((dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy())[0]
    assert_within_one_step(ours.images[0], theirs)


def test_num_images_use_consecutive_seeds(pipe, ref, source):
    img, _ = source
    result = pipe.generate(GenerateRequest(PROMPT, 64, 64, steps=4, seed=20, num_images=2,
                                           init_image=img, strength=0.5))
    assert result.seeds == [20, 21]
    for image, seed in zip(result.images, result.seeds):
        theirs = run_reference(ref, seed, prompt=PROMPT, image=img, strength=0.5, width=64,
                               height=64, num_inference_steps=4)
        assert_within_one_step(image, theirs)


def test_other_sizes_are_fitted_not_stretched(pipe):
    wide = sample_image(160, 64, seed=2)  # 2.5:1 into 64x64: scaled to 64 high, centre crop
    result = pipe.generate(GenerateRequest(PROMPT, 64, 64, steps=2, seed=1, init_image=wide,
                                           strength=0.5))
    assert result.images[0].shape == (64, 64, 3)
