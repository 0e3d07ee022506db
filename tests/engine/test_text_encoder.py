"""Caption features against diffusers' ZImagePipeline._encode_prompt (padded to 512 with a mask):
ours runs only the real tokens, which causal attention makes equivalent."""

import pytest
import torch

from engine.loading import load_pipeline
from tests.fixtures.zimage import load_reference_pipeline


@pytest.fixture(scope="module")
def both(tiny_model_dir):
    return (load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32").text_encoder,
            load_reference_pipeline(tiny_model_dir))


@pytest.mark.parametrize("prompt", [
    "a red fox in fresh snow",
    "一只在雪地里的红狐狸",
    "mixed 中文 and English, with punctuation: «quotes», emoji 🦊 and numbers 1234",
    "x",
])
def test_features_match_diffusers(both, prompt):
    ours, ref = both
    with torch.no_grad():
        expected = ref._encode_prompt(prompt, device=torch.device("cpu"))[0]
    got = ours.encode(prompt)
    assert got.shape == expected.shape
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5


def test_template_is_the_official_one(both):
    ours, _ = both
    from engine.text_encoder import template

    assert template(ours.tokenizer, "猫") == "<|im_start|>user\n猫<|im_end|>\n<|im_start|>assistant\n"
