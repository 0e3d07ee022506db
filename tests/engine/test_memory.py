"""Memory modes on the CPU: plan selection (pure), layer streaming (cpu->meta placement, cpu->cpu
parity), fp8's missing-torchao error, and out-of-memory handling with a SIMULATED OOM."""

import pytest
import torch
from torch import nn

from engine import memory
from engine.errors import EngineError
from engine.loading import load_pipeline
from engine.memory import GiB, LayerStreamer, Plan, apply_plan, make_plan, plan_for
from engine.pipeline import GenerateRequest

TARGET_GIB = {"16gb": 15.5, "12gb": 11.5, "8gb": 7.5}


@pytest.fixture(scope="module")
def sizes():
    return memory.z_image_turbo_sizes()


def test_real_sizes_match_the_reference(sizes):
    assert 11.3 < sizes.dit / GiB < 11.6  # 12.31 GB of bf16
    assert 7.4 < sizes.text_encoder / GiB < 7.6  # Qwen3-4B without the LM head
    assert sizes.dit_layers == 30 and sizes.te_layers == 36


@pytest.mark.parametrize("fp8", [True, False])
@pytest.mark.parametrize("mode", ["16gb", "12gb", "8gb"])
def test_each_mode_estimate_is_within_its_target(sizes, mode, fp8):
    plan = make_plan(mode, fp8=fp8, sizes=sizes)
    assert plan.peak_gib(1024, 1024) <= TARGET_GIB[mode]
    assert plan.text_encoder == "stream"


def test_mode_contents(sizes):
    assert make_plan("max", sizes=sizes).text_encoder == "resident"
    p16 = make_plan("16gb", fp8=True, sizes=sizes)
    assert (p16.dit_fp8, p16.dit_streamed) == (False, 0)  # bf16 DiT fits 16 GB
    p12 = make_plan("12gb", fp8=True, sizes=sizes)
    assert p12.dit_fp8 and p12.dit_streamed == 0
    assert make_plan("12gb", fp8=False, sizes=sizes).dit_streamed > 0  # no fp8: stream instead
    p8 = make_plan("8gb", fp8=True, sizes=sizes)
    assert p8.dit_fp8 and p8.dit_streamed > 0 and p8.tile_decode(1024, 1024)
    assert not make_plan("max", sizes=sizes).tile_decode(2048, 2048)  # no budget known: never


@pytest.mark.parametrize("free,fp8,mode", [
    (None, True, "max"), (79, True, "max"), (23, False, "max"), (15.5, True, "16gb"),
    (11.6, True, "12gb"), (11.6, False, "12gb"), (7.6, True, "8gb"), (5, False, "8gb"),
])
def test_auto_picks_from_free_memory(sizes, free, fp8, mode):
    plan = plan_for(None if free is None else int(free * GiB), fp8_available=fp8, sizes=sizes)
    assert plan.mode == mode
    if free is not None and mode != "8gb":
        assert plan.peak_gib() <= free


def test_fixed_mode_on_a_smaller_card_streams_more(sizes):
    nominal = plan_for(None, sizes=sizes, mode="12gb")
    tight = plan_for(int(9 * GiB), sizes=sizes, mode="12gb")
    assert tight.dit_streamed > nominal.dit_streamed


def test_bad_mode_and_forced_fp8_without_torchao(sizes):
    with pytest.raises(EngineError) as e:
        plan_for(None, sizes=sizes, mode="4gb")
    assert e.value.code == "invalid_params" and "8gb" in e.value.message
    with pytest.raises(EngineError) as e:
        plan_for(int(12 * GiB), sizes=sizes, fp8=True, fp8_available=False)
    assert e.value.code == "invalid_params"


def test_fp8_needs_torchao_with_a_clear_error():
    pytest.importorskip("torch")
    try:
        import torchao  # noqa: F401
        pytest.skip("torchao is installed here")
    except ImportError:
        pass
    assert "torchao" in memory.fp8_unavailable_reason()
    with pytest.raises(EngineError) as e:
        memory.quantize_fp8(nn.Linear(16, 16), torch.device("cpu"))
    assert "torchao" in e.value.message and "[fp8]" in e.value.message
    with pytest.raises(EngineError):
        memory.choose_plan("auto", torch.device("cpu"), fp8=True)


def test_cpu_ignores_memory_modes():
    assert memory.choose_plan("8gb", torch.device("cpu")).mode == "max"


def test_streamer_placement_cpu_to_meta():
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)])
    streamer = LayerStreamer(blocks, "meta")
    seen = []
    for b in blocks:  # registered after the streamer's hooks, so it sees the streamed state
        b.register_forward_pre_hook(lambda m, a: seen.append(m.weight.device.type))
    assert memory.device_of(blocks) == {"cpu"}
    out = blocks(torch.zeros(2, 8, device="meta"))
    assert out.device.type == "meta" and seen == ["meta"] * 3
    assert memory.device_of(blocks) == {"cpu"}  # dropped after running
    assert streamer.copies == 3 + 1  # three blocks plus the prefetch of the next step's first
    streamer.remove(to="meta")
    assert memory.device_of(blocks) == {"meta"}


def test_streamer_parity_cpu_to_cpu():
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
    x = torch.randn(3, 8)
    ref = blocks(x)
    LayerStreamer([blocks[1], blocks[3]], "cpu")
    assert torch.equal(blocks(x), ref)


def test_streamed_layers_spread_out():
    assert memory.streamed_dit_layers(30, 0) == []
    ids = memory.streamed_dit_layers(30, 7)
    assert len(ids) == 7 and len(set(ids)) == 7 and ids[0] > 0 and ids[-1] < 30
    assert memory.streamed_dit_layers(4, 9) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")


REQ = GenerateRequest("a lighthouse at dusk", 64, 64, steps=2, seed=7)


def test_streaming_plan_keeps_parity_and_the_prompt_cache(pipe, sizes):
    ref = pipe.generate(REQ).images[0]
    pipe.text_encoder.clear_cache()
    plan = Plan("8gb", dit_streamed=1, text_encoder="stream", budget_gib=7.0)
    apply_plan(pipe, plan, torch.device("cpu"))
    try:
        te = pipe.memory.streamers["text_encoder"]
        runs, copies = pipe.text_encoder.runs, te.copies
        out = pipe.generate(REQ).images[0]
        assert (out == ref).all()
        assert pipe.text_encoder.runs == runs + 1 and te.copies > copies
        copies = te.copies
        pipe.generate(REQ)  # the same prompt: the text encoder neither runs nor moves
        assert pipe.text_encoder.runs == runs + 1 and te.copies == copies
        assert pipe.memory.streamers["transformer"].copies > 0
    finally:
        apply_plan(pipe, Plan("max"), torch.device("cpu"))
    assert pipe.memory.streamers == {}
    assert (pipe.generate(REQ).images[0] == ref).all()


def test_apply_plan_placement_on_meta(tiny_model_dir):
    p = load_pipeline(str(tiny_model_dir), device="cpu", dtype="float32")
    apply_plan(p, Plan("8gb", dit_streamed=1, text_encoder="stream"), torch.device("meta"))
    t, te = p.transformer, p.text_encoder.model
    streamed = memory.streamed_dit_layers(len(t.layers), 1)
    for i, layer in enumerate(t.layers):
        assert memory.device_of(layer) == ({"cpu"} if i in streamed else {"meta"})
    assert memory.device_of(t.noise_refiner) == {"meta"} and t.x_pad_token.device.type == "meta"
    assert memory.device_of(te.layers) == {"cpu"} and memory.device_of(te.embed_tokens) == {"meta"}
    assert memory.device_of(p.vae) == {"meta"}


class SimulatedOOM(nn.Module):
    """A SIMULATION of a GPU running out of memory: the wrapped transformer raises
    torch.OutOfMemoryError on its first `fail` calls, then behaves normally."""

    def __init__(self, inner, fail=1):
        super().__init__()
        self.inner, self.fail = inner, fail

    def forward(self, *args, **kwargs):
        if self.fail > 0:
            self.fail -= 1
            raise torch.OutOfMemoryError("SIMULATED: CUDA out of memory (test)")
        return self.inner(*args, **kwargs)


def test_simulated_oom_names_a_mode_that_fits_and_the_engine_keeps_running(pipe, sizes):
    ref = pipe.generate(REQ).images[0]
    inner = pipe.transformer
    pipe.transformer = SimulatedOOM(inner)
    pipe.memory.plan = make_plan("16gb", sizes=sizes)
    try:
        with pytest.raises(EngineError) as e:
            pipe.generate(REQ)
        assert e.value.code == "out_of_memory"
        assert "--memory 12gb" in e.value.message and "64x64" in e.value.message
        assert (pipe.generate(REQ).images[0] == ref).all()  # same pipeline, next request works
    finally:
        pipe.transformer, pipe.memory.plan = inner, None


def test_oom_inside_a_streamed_layer_puts_it_back(pipe):
    ref = pipe.generate(REQ).images[0]
    apply_plan(pipe, Plan("8gb", dit_streamed=2, text_encoder="stream"), torch.device("cpu"))
    streamer = pipe.memory.streamers["transformer"]
    layer = streamer.blocks[1]
    state = {"fail": True}

    def boom(module, args):
        if state.pop("fail", False):
            raise torch.OutOfMemoryError("SIMULATED: out of memory inside a streamed layer")

    handle = layer.register_forward_pre_hook(boom)
    try:
        with pytest.raises(EngineError) as e:
            pipe.generate(REQ)
        assert e.value.code == "out_of_memory" and "8gb" in e.value.message
        assert streamer._loaded == set() and not streamer._pending
        assert (pipe.generate(REQ).images[0] == ref).all()
    finally:
        handle.remove()
        apply_plan(pipe, Plan("max"), torch.device("cpu"))


def test_oom_message_from_free_memory(sizes):
    err = memory.oom_error(make_plan("max", sizes=sizes), 2048, 2048, 2, int(15.5 * GiB))
    assert err.code == "out_of_memory" and "--memory 16gb" in err.message
    assert "fewer images" in err.message
    err = memory.oom_error(make_plan("8gb", sizes=sizes), 2048, 2048, 1)
    assert "smaller size" in err.message


def test_unload_then_the_next_job_restores_the_plan_and_the_image(pipe):
    """"Free VRAM": streaming undone, weights in host memory, and the next job puts them back
    where the plan says (cpu->cpu here: the state machine and the numerics, not the bytes)."""
    ref = pipe.generate(REQ).images[0]
    apply_plan(pipe, Plan("8gb", dit_streamed=1, text_encoder="stream"), torch.device("cpu"))
    hooked = lambda: [m for m in (*pipe.transformer.layers, *pipe.text_encoder.model.layers)  # noqa: E731
                      if m._forward_pre_hooks]
    try:
        assert hooked()
        pipe.unload()
        assert not pipe.memory.resident and pipe.memory.streamers == {}
        assert not hooked()  # no streaming hooks left behind
        assert pipe.unload() == 0  # twice is harmless
        assert (pipe.generate(REQ).images[0] == ref).all()
        assert pipe.memory.resident and set(pipe.memory.streamers) == {"transformer", "text_encoder"}
    finally:
        apply_plan(pipe, Plan("max"), torch.device("cpu"))
