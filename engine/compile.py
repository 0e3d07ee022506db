"""torch.compile, regionally: the repeated transformer block and the VAE decoder.

Compiling the block's `forward` (not the whole model) compiles one graph per block kind (modulated
and unmodulated) that all 34 blocks reuse, in tens of seconds instead of minutes, and keeps module
hooks (layer streaming, engine/memory.py) outside the compiled code. Shapes start static (the
warm-up at 1024x1024 compiles for that size); the first request with another sequence length (a
new size, or a prompt in another 32-token bucket) compiles once more with dynamo's automatic
dynamic shapes, which then cover every later length without recompiling. CUDA graphs
("reduce-overhead") are used only when every weight stays resident, since streamed weights change
addresses. Off by default on CPU and MPS (compile time would dominate there); on by default on
CUDA; `--no-compile` turns it off.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64  # resolutions x caption-length buckets x block kinds, per code object


def should_compile(flag: bool | None, device: torch.device) -> bool:
    """--compile / --no-compile; None (the default): on for CUDA only."""
    if flag is None:
        return device.type == "cuda"
    return bool(flag)


def use_cuda_graphs(pipe, flag: bool | None = None) -> bool:
    """CUDA graphs pay only with everything resident (no streamed layers) on CUDA."""
    plan = pipe.memory.plan
    allowed = (pipe.device.type == "cuda" and not pipe.memory.streaming
               and (plan is None or plan.mode == "max"))
    return allowed if flag is None else (flag and allowed)


def _compile(fn, mode: str | None, dynamic: bool | None = None):
    # dynamic=None: static first, automatic dynamic shapes after one shape change (with
    # dynamic=False every prompt-length bucket and size would recompile every block kind).
    return torch.compile(fn, dynamic=dynamic, fullgraph=False, mode=mode)


def compile_pipeline(pipe, *, cuda_graphs: bool | None = False,
                     dynamic: bool | None = None) -> list[str]:
    """Wrap every transformer block's forward and the VAE decoder's forward in torch.compile.

    Lazy: nothing is compiled until the first call (see `warm_up`). Returns the compiled parts.
    """
    try:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    except AttributeError:  # older name
        torch._dynamo.config.cache_size_limit = RECOMPILE_LIMIT
    if pipe.compiled:  # once per pipeline
        return pipe.compiled
    mode = "reduce-overhead" if use_cuda_graphs(pipe, cuda_graphs) else None
    t = pipe.transformer
    parts = []
    for name in ("noise_refiner", "context_refiner", "layers"):
        for block in getattr(t, name):
            block.forward = _compile(block.forward, mode, dynamic)
        parts.append(f"transformer.{name}")
    dec = pipe.vae.decoder
    dec.forward = _compile(dec.forward, None, dynamic)  # once per image: no CUDA graphs
    parts.append("vae.decoder")
    pipe.compiled = parts
    log.info("torch.compile on %s (mode %s)", ", ".join(parts), mode or "default")
    return parts


def warm_up(pipe, width: int = 1024, height: int = 1024, steps: int = 2) -> float:
    """One generation at the default size so compilation happens at start; returns seconds."""
    from protocol.request import GenerateRequest

    t0 = time.perf_counter()
    pipe.generate(GenerateRequest("warm-up", width=width, height=height, steps=steps, seed=0))
    return time.perf_counter() - t0
