"""Whole images against diffusers' ZImagePipeline, through `python -m engine generate`.

The models are tiny and random in the official layout; their configs and seeds were not tuned for
these tests. "Within 1/255" means no pixel channel differs by more than one step.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.loading import load_pipeline
from engine.pipeline import GenerateRequest
from tests.fixtures.zimage import load_reference_pipeline, make_reference_model, reference_images

ROOT = Path(__file__).resolve().parents[2]

LONG_PROMPT = (
    "A weathered lighthouse on a basalt cliff at dusk, waves breaking into white foam below, "
    "a narrow path of worn stone steps winding up from a small harbour where fishing boats rest "
    "on their moorings, gulls circling the lamp room, the last orange light catching the salt-"
    "streaked glass, heavy clouds rolling in from the west, a lone keeper in a yellow oilskin "
    "coat carrying a lantern up the steps, cinematic wide shot, 35mm film grain, muted teal and "
    "amber palette, high detail, volumetric light through the sea spray, painterly."
)
assert len(LONG_PROMPT) >= 500


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def assert_within_one_step(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()}/255"
    assert ref.std() > 20, "reference is flat: the comparison would prove nothing"


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    """Another shape of model: 3 heads of 32, one main layer, wider text encoder."""
    return make_reference_model(tmp_path_factory.mktemp("zimage-ref2") / "model", seed=77,
                                dim=96, n_heads=3, n_kv_heads=3, n_layers=1,
                                text_hidden_size=48, text_num_hidden_layers=2)


CASES = [  # prompt, width, height, steps, seed
    ("a red fox in fresh snow, golden hour", 64, 64, 8, 3),
    ("一只在雪地里的红狐狸，黄金时刻，电影感", 96, 64, 4, 11),
    (LONG_PROMPT, 64, 96, 8, 2024),
]


@pytest.mark.parametrize("prompt,width,height,steps,seed", CASES)
def test_cli_image_matches_diffusers(tiny_model_dir, tmp_path, prompt, width, height, steps, seed):
    out = tmp_path / "out.png"
    r = run_cli("generate", "--model", str(tiny_model_dir), "--prompt", prompt, "--width",
                str(width), "--height", str(height), "--steps", str(steps), "--seed", str(seed),
                "--output", str(out))
    assert r.returncode == 0, r.stderr
    png = Image.open(out)
    params = json.loads(png.text["parameters"])
    assert params == {"prompt": prompt, "seed": seed, "steps": steps, "width": width,
                      "height": height, "model": params["model"]}
    ours = np.asarray(png.convert("RGB"))
    ref = reference_images(tiny_model_dir, prompt, width, height, steps, seed)[0]
    assert_within_one_step(ours, ref)


def test_second_model_shape_matches_diffusers(second_model_dir, tmp_path):
    out = tmp_path / "out.png"
    r = run_cli("generate", "--model", str(second_model_dir), "--prompt", "a brass telescope",
                "--width", "80", "--height", "64", "--steps", "8", "--seed", "5",
                "--output", str(out))
    assert r.returncode == 0, r.stderr
    ours = np.asarray(Image.open(out).convert("RGB"))
    ref = reference_images(second_model_dir, "a brass telescope", 80, 64, 8, 5)[0]
    assert_within_one_step(ours, ref)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


def test_num_images_use_consecutive_seeds(pipe, tiny_model_dir):
    result = pipe.generate(GenerateRequest("a teapot", 64, 64, steps=2, seed=40, num_images=2))
    assert result.seeds == [40, 41]
    ref = load_reference_pipeline(tiny_model_dir)
    for image, seed in zip(result.images, result.seeds):
        assert_within_one_step(image, reference_images(tiny_model_dir, "a teapot", 64, 64, 2,
                                                       seed, pipe=ref)[0])


def test_repeated_prompt_skips_the_text_encoder(pipe):
    runs = pipe.text_encoder.runs
    pipe.generate(GenerateRequest("a cached prompt", 64, 64, steps=1, seed=1))
    pipe.generate(GenerateRequest("a cached prompt", 64, 64, steps=1, seed=2))
    assert pipe.text_encoder.runs == runs + 1


def test_progress_and_cancel_after_a_step(pipe):
    from engine.errors import Cancelled

    stages = []

    def on_progress(p):
        stages.append((p.stage, p.step))

    with pytest.raises(Cancelled) as info:
        pipe.generate(GenerateRequest("a fox", 64, 64, steps=8, seed=1), on_progress,
                      should_cancel=lambda: ("denoise", 3) in stages)
    assert info.value.step == 3
    assert stages == [("encode_text", 0), ("denoise", 1), ("denoise", 2), ("denoise", 3)]


def test_preview_is_a_small_rgb_image(pipe):
    previews = []
    pipe.generate(GenerateRequest("a fox", 128, 64, steps=2, seed=1),
                  on_progress=lambda p: p.latents is not None and previews.append(
                      pipe.preview(p.latents, max_side=8)))
    assert len(previews) == 2
    assert previews[0].shape == (4, 8, 3) and previews[0].dtype == np.uint8


def test_prompt_truncated_at_512_tokens_with_a_warning(pipe, caplog):
    long_prompt = "fox " * 700
    ids = pipe.text_encoder.token_ids(long_prompt)
    assert len(ids) == 512
    assert "only the first 512" in caplog.text
    features = pipe.text_encoder.encode(long_prompt)
    assert features.shape[0] == 512 and torch.isfinite(features).all()
