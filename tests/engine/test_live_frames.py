"""Live frames on the real pipeline (tiny random model, CPU): each frame is an img2img request
with a new capture and the same prompt, so only the image part is new work."""

import numpy as np
import pytest

from engine.loading import load_pipeline
from engine.pipeline import GenerateRequest


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


def test_live_frames_with_one_prompt_run_the_text_encoder_once(pipe):
    rng = np.random.default_rng(3)
    runs = pipe.text_encoder.runs
    outs = []
    for _ in range(3):          # three captures of a moving scene, one prompt, one seed
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        req = GenerateRequest("a live clay sculpture", 64, 64, steps=4, seed=42,
                              init_image=frame, strength=0.6)
        outs.append(pipe.generate(req).images[0])
    assert pipe.text_encoder.runs == runs + 1
    assert not (outs[0] == outs[1]).all()       # each frame follows its own capture
