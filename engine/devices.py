"""Device and dtype choice: CUDA, then Apple MPS, then CPU; bf16 on accelerators, float32 on CPU."""

from __future__ import annotations

import torch

from engine.errors import EngineError

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("invalid_params", "--device cuda was asked for, but PyTorch sees no CUDA "
                          "GPU here (is a CUDA build of torch installed?)", field="device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise EngineError("invalid_params", "--device mps was asked for, but Apple MPS is not "
                          "available here", field="device")
    if name not in ("cuda", "mps", "cpu") and not name.startswith("cuda:"):
        raise EngineError("invalid_params", f"unknown device {name!r}: use auto, cuda, mps or cpu",
                          field="device")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name in ("float16", "fp16", "half"):
        raise EngineError("invalid_params", "float16 is not supported: Z-Image's activations "
                          "overflow float16 and give black or NaN images; use bfloat16 or float32",
                          field="dtype")
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise EngineError("invalid_params", f"unknown dtype {name!r}: use auto, bfloat16 or "
                          "float32", field="dtype")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
