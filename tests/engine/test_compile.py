"""Compile switches: defaults per device, the wiring from the CLI to load_pipeline, and the lazy
regional wrapping. torch.compile itself never runs here (it would take minutes on this CPU)."""

import pytest
import torch

from engine import compile as compiling
from engine.__main__ import build_parser
from engine.loading import load_pipeline
from engine.memory_args import memory_kwargs


def test_defaults_per_device():
    assert compiling.should_compile(None, torch.device("cpu")) is False
    assert compiling.should_compile(None, torch.device("mps")) is False
    assert compiling.should_compile(None, torch.device("cuda")) is True
    assert compiling.should_compile(False, torch.device("cuda")) is False
    assert compiling.should_compile(True, torch.device("cpu")) is True


@pytest.mark.parametrize("argv,expected", [
    ([], {"memory": "auto", "compile": None, "fp8": None}),
    (["--memory", "12gb", "--no-compile", "--fp8", "off"],
     {"memory": "12gb", "compile": False, "fp8": False}),
    (["--memory", "8gb", "--compile", "--fp8", "on"], {"memory": "8gb", "compile": True,
                                                       "fp8": True}),
])
def test_generate_flags(argv, expected):
    args = build_parser().parse_args(["generate", "--prompt", "x", *argv])
    assert memory_kwargs(args) == expected


def test_bad_memory_flag_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--prompt", "x", "--memory", "4gb"])


def test_load_pipeline_compiles_only_when_asked(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(compiling, "compile_pipeline", lambda pipe, **k: calls.append("compile"))
    monkeypatch.setattr(compiling, "warm_up", lambda pipe: calls.append("warm_up") or 1.5)
    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    assert calls == [] and pipe.compile_seconds is None
    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32", compile=True)
    assert calls == ["compile", "warm_up"] and pipe.compile_seconds == 1.5
    assert pipe.memory.plan.mode == "max" and pipe.memory.streamers == {}
    # Fast path 1: fused projections at load time.
    block = pipe.transformer.layers[0]
    assert hasattr(block.attention, "qkv") and hasattr(block.feed_forward, "w13")


def test_regional_wrapping_is_lazy_and_idempotent(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    forwards = [b.forward for b in pipe.transformer.layers]
    parts = compiling.compile_pipeline(pipe)
    assert parts == ["transformer.noise_refiner", "transformer.context_refiner",
                     "transformer.layers", "vae.decoder"]
    assert all(b.forward is not f for b, f in zip(pipe.transformer.layers, forwards))
    again = [b.forward for b in pipe.transformer.layers]
    compiling.compile_pipeline(pipe)
    assert [b.forward for b in pipe.transformer.layers] == again
    assert not compiling.use_cuda_graphs(pipe)  # CPU: never
