"""The speed and memory flags, shared by `generate` and `serve` (no torch import: argparse only).

    add_memory_args(parser)                      --memory, --compile/--no-compile, --fp8
    load_pipeline(model, ..., **memory_kwargs(args))
"""

from __future__ import annotations

import argparse

MEMORY_MODES = ("auto", "max", "16gb", "12gb", "8gb")  # engine.memory.MODES


def add_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory", default="auto", choices=MEMORY_MODES,
                   help="GPU memory mode: max (all resident, ~22 GiB), 16gb, 12gb, 8gb, or auto "
                        "(from the card's free memory; default)")
    p.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction,
                   default=None, help="torch.compile the transformer blocks and VAE decoder, "
                                      "warmed up at start (default: on for CUDA, off elsewhere)")
    p.add_argument("--fp8", default="auto", choices=["auto", "on", "off"],
                   help="fp8 DiT weights via torchao (auto: in the 12gb and 8gb modes when the "
                        "card supports it)")


def memory_kwargs(args: argparse.Namespace) -> dict:
    fp8 = {"auto": None, "on": True, "off": False}[getattr(args, "fp8", "auto")]
    return {"memory": getattr(args, "memory", "auto"), "compile": getattr(args, "compile", None),
            "fp8": fp8}
