"""StandInPipeline: a stand-in for ZImagePipeline, for protocol tests and the protocol benchmark.

It is NOT a model and does not imitate the model's output: it sleeps `step_seconds` per
step, reports progress exactly like the real pipeline contract (encode_text, denoise per step,
decode), checks should_cancel() after every step, and returns deterministic test-pattern pixels
derived from the seed (same seed -> same bytes), so plumbing tests can check which result
reached which client.

It takes the one request type, protocol.request.GenerateRequest, like the real pipeline; the
progress/result dataclasses below mirror the contract in docs/architecture.md without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.errors import Cancelled, EngineError
from protocol.request import GenerateRequest  # noqa: F401 (the stand-in's request type too)


@dataclass
class Progress:
    stage: str
    step: int
    steps: int
    latents: Any = None


@dataclass
class Result:
    images: list
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def pattern_image(seed: int, width: int, height: int) -> np.ndarray:
    """Deterministic RGB test pattern for a seed: two seed-tinted gradients (uint8 wraps)."""
    rng = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
    a, b = rng.integers(1, 8, size=(2, 3), dtype=np.int64)
    x = ((np.arange(width, dtype=np.int64)[:, None] * a[None, :]) % 256).astype(np.uint8)
    y = ((np.arange(height, dtype=np.int64)[:, None] * b[None, :] + seed % 251) % 256
         ).astype(np.uint8)
    return x[None, :, :] + y[:, None, :]


class StandInPipeline:
    """Stand-in pipeline (see module docstring). `capabilities` lets tests enable image modes."""

    def __init__(self, step_seconds: float = 0.0, *, capabilities=("txt2img",),
                 model: str = "stand-in", latent_side: int = 8, stall_seconds: float = 0.0):
        self.step_seconds = float(step_seconds)
        # before the first step, deaf to cancel and deadline: a worker stuck in a kernel
        self.stall_seconds = float(stall_seconds)
        self.latent_side = latent_side
        self.info = {"model": model, "device": "cpu", "dtype": "uint8",
                     "capabilities": list(capabilities), "standin": True}
        self.calls = 0

    def generate(self, req, on_progress: Callable | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> Result:
        self.calls += 1
        on_progress = on_progress or (lambda p: None)
        should_cancel = should_cancel or (lambda: False)
        t0 = time.perf_counter()
        seed = int(req.seed if req.seed is not None else 0)
        on_progress(Progress("encode_text", 0, req.steps))
        if self.stall_seconds:
            time.sleep(self.stall_seconds)
        t1 = time.perf_counter()
        latents = np.zeros((self.latent_side, self.latent_side, 3), np.uint8)
        for i in range(req.steps):
            if self.step_seconds:
                time.sleep(self.step_seconds)
            latents = pattern_image(seed + i, self.latent_side, self.latent_side)
            on_progress(Progress("denoise", i + 1, req.steps, latents))
            if should_cancel():
                raise Cancelled(i + 1)
        t2 = time.perf_counter()
        on_progress(Progress("decode", req.steps, req.steps))
        n = int(getattr(req, "num_images", 1) or 1)
        seeds = [seed + k for k in range(n)]
        images = [pattern_image(s, req.width, req.height) for s in seeds]
        t3 = time.perf_counter()
        return Result(images, seeds, {"text_ms": (t1 - t0) * 1e3, "denoise_ms": (t2 - t1) * 1e3,
                                      "decode_ms": (t3 - t2) * 1e3})

    def preview(self, latents, max_side: int) -> np.ndarray:
        if latents is None:
            raise EngineError("internal_error", "no latents to preview")
        arr = np.asarray(latents, dtype=np.uint8)
        reps = max(1, max_side // max(arr.shape[:2]))
        return np.repeat(np.repeat(arr, reps, axis=0), reps, axis=1)

    def unload(self) -> None:
        pass
