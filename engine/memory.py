"""Memory modes: where each component's weights live, and the machinery that moves them.

Modes (`--memory`); `Plan.peak_gib` estimates each one's peak of allocated GPU memory from the real
model's weight sizes (from the configs) and activation estimates (`_dit_act_gib`, `_vae_act_gib`):

  max   DiT bf16 resident; text encoder (Qwen3-4B) bf16 resident; whole-image VAE decode.
  16gb  DiT bf16 resident; text encoder layers in pinned host memory, streamed in only on a
        prompt-cache miss; VAE decode tiled when the budget needs it (large images).
  12gb  DiT fp8 (torchao) resident, or without fp8 bf16 with some main layers streamed from
        pinned host memory; text encoder streamed; tiled decode when needed.
  8gb   DiT fp8 with some main layers streamed (bf16 and more streamed without fp8); text
        encoder streamed; tiled decode at 1024x1024 and up.

`auto` picks the largest mode whose estimate fits the card's free memory (CPU and MPS: `max`).
Only `plan_for` / `make_plan` decide; they are pure functions of sizes and free bytes, so the CPU
tests cover the selection. The peaks in `Plan.peak_gib` are ESTIMATES until a GPU session measures
them (scripts/bench_engine.py --preset full records the measured peaks in docs/benchmarks.md).

Streaming (`LayerStreamer`) works with any device pair: blocks keep a host copy of their tensors
(pinned when the device is CUDA) and get device copies just before they run (forward pre-hook,
the next streamed block prefetched on a side CUDA stream), dropped right after (forward hook).
The CPU tests use cpu->cpu (parity) and cpu->meta (placement).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from engine.errors import EngineError

log = logging.getLogger(__name__)

GiB = 1024**3
MODES = ("auto", "max", "16gb", "12gb", "8gb")
# What each fixed mode may use (GiB of allocated GPU memory, the targets), and the safety
# margin kept below it for the estimates' error.
MODE_LIMIT_GIB = {"16gb": 15.5, "12gb": 11.5, "8gb": 7.5}
MARGIN_GIB = 0.5
# cuBLAS/cuDNN workspaces and allocator slack: free memory (measured after the CUDA context
# exists) that the plan must not count on.
CONTEXT_GIB = 0.4
STREAM_PREFETCH = 2  # streamed blocks on the device at once: the running one and the prefetched


# ------------------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class ModelSizes:
    """Weight bytes per part, in bf16 (2 bytes a parameter). fp8 halves the DiT's quantized part."""

    dit_layer: int  # one main layer (`layers.N`)
    dit_layers: int  # number of main layers
    dit_other: int  # refiners, embedders, final layer
    dit_dim: int
    dit_ffn: int
    te_layer: int  # one Qwen3 decoder layer
    te_layers: int
    te_other: int  # token embedding, final norm
    vae: int

    @property
    def dit(self) -> int:
        return self.dit_layer * self.dit_layers + self.dit_other

    @property
    def text_encoder(self) -> int:
        return self.te_layer * self.te_layers + self.te_other

    @classmethod
    def of(cls, transformer: nn.Module, text_model: nn.Module, vae: nn.Module) -> ModelSizes:
        """Sizes of built modules (meta is fine), counted at 2 bytes a parameter."""

        def n(m: nn.Module) -> int:
            return 2 * sum(p.numel() for p in m.parameters())

        layer = n(transformer.layers[0]) if len(transformer.layers) else 0
        te_layer = n(text_model.layers[0]) if len(text_model.layers) else 0
        p = transformer.params
        return cls(
            dit_layer=layer, dit_layers=len(transformer.layers),
            dit_other=n(transformer) - layer * len(transformer.layers),
            dit_dim=p.dim, dit_ffn=p.ffn_hidden_dim,
            te_layer=te_layer, te_layers=len(text_model.layers),
            te_other=n(text_model) - te_layer * len(text_model.layers),
            vae=n(vae),
        )


@functools.lru_cache(maxsize=1)
def z_image_turbo_sizes() -> ModelSizes:
    """The real model's sizes, from the shipped configs (modules built on the meta device)."""
    from pathlib import Path

    from transformers import Qwen3Config, Qwen3Model

    from engine.config import TransformerParams, VaeParams
    from engine.model.transformer import ZImageTransformer
    from engine.model.vae import AutoEncoder

    cfg = Path(__file__).parent / "configs" / "z-image-turbo"
    with torch.device("meta"):
        dit = ZImageTransformer(TransformerParams.from_json(cfg / "transformer.json"))
        te = Qwen3Model(Qwen3Config.from_json_file(str(cfg / "text_encoder.json")))
        vae = AutoEncoder(VaeParams.from_json(cfg / "vae.json"))
    return ModelSizes.of(dit, te, vae)


def _dit_act_gib(sizes: ModelSizes, pixels: int) -> float:
    """DiT activations for one image (bf16): hidden states, the fused QKV and SwiGLU intermediates
    of one block, flash attention (no N^2 term). Rough: ~10 hidden-size and ~3 FFN-size rows/token.
    """
    tokens = pixels / 256 + 512  # 16x16 pixels a token, plus the longest caption
    return tokens * (sizes.dit_dim * 2 * 10 + sizes.dit_ffn * 2 * 3) / GiB


# VAE decode activations per megapixel (bf16): the last up block at full resolution holds several
# 128-channel maps at once (GroupNorm upcasts to float32). ESTIMATE, not yet measured on a GPU.
VAE_ACT_GIB_PER_MP = 2.0
VAE_TILE = 64  # latent cells per tile side (512 pixels)
VAE_TILE_OVERLAP = 8  # latent cells shared by neighbouring tiles (64 pixels)


def _vae_act_gib(pixels: int, tiled: bool) -> float:
    if tiled:
        side = (VAE_TILE + 2 * VAE_TILE_OVERLAP) * 8
        pixels = min(pixels, side * side)
    return VAE_ACT_GIB_PER_MP * pixels / 2**20


# ------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class Plan:
    mode: str
    dit_fp8: bool = False
    dit_streamed: int = 0  # main layers kept in host memory, streamed in for each step
    text_encoder: str = "resident"  # "resident" | "stream"
    budget_gib: float | None = None  # allocated GPU memory the plan may use; None: no limit
    sizes: ModelSizes | None = None

    def weights_gib(self) -> float:
        """Weights that stay on the device (streamed layers count by their prefetch window)."""
        s = self.sizes
        if s is None:
            return 0.0
        layer = s.dit_layer / (2 if self.dit_fp8 else 1)
        other = s.dit_other / (2 if self.dit_fp8 else 1)  # refiners are quantized too
        dit = other + layer * (s.dit_layers - self.dit_streamed)
        if self.dit_streamed:
            dit += layer * min(STREAM_PREFETCH, self.dit_streamed)
        te = s.text_encoder if self.text_encoder == "resident" else s.te_other
        return (dit + te + s.vae) / GiB

    def tile_decode(self, width: int, height: int) -> bool:
        """Decode in tiles when the whole-image decode would not fit the budget."""
        if self.budget_gib is None or self.sizes is None:
            return False
        return self._peak(width * height, tiled=False) > self.budget_gib

    def peak_gib(self, width: int = 1024, height: int = 1024) -> float:
        """Estimated peak allocated GPU memory for one image of this size."""
        pixels = width * height
        return self._peak(pixels, tiled=self.tile_decode(width, height))

    def _peak(self, pixels: int, tiled: bool) -> float:
        s = self.sizes
        if s is None:
            return 0.0
        te_run = 0.0
        if self.text_encoder == "stream":
            te_run = STREAM_PREFETCH * s.te_layer / GiB
        dit_act = _dit_act_gib(s, pixels) + (0.5 if self.dit_fp8 else 0.0)  # fp8 activation copies
        return self.weights_gib() + max(te_run + 0.1, dit_act, _vae_act_gib(pixels, tiled))

    def load_device(self, component: str, device: torch.device) -> torch.device:
        """Where load_pipeline puts a component's weights before `apply_plan`."""
        host = torch.device("cpu")
        if component == "transformer":
            return device if not (self.dit_fp8 or self.dit_streamed) else host
        if component == "text_encoder":
            return device if self.text_encoder == "resident" else host
        return device

    def describe(self) -> str:
        dit = ("fp8" if self.dit_fp8 else "bf16") + (
            f", {self.dit_streamed} main layers streamed" if self.dit_streamed else ", resident")
        te = "resident" if self.text_encoder == "resident" else "streamed from pinned host memory"
        est = f", estimated peak {self.peak_gib():.1f} GiB at 1024x1024" if self.sizes else ""
        return f"memory mode {self.mode}: DiT {dit}; text encoder {te}{est}"


def make_plan(mode: str, *, fp8: bool = False, sizes: ModelSizes | None = None,
              free_gib: float | None = None) -> Plan:
    """The plan for a fixed mode. `fp8`: use fp8 DiT weights where the mode wants them (the caller
    knows whether torchao and the card support it). `free_gib` bounds `max`'s budget."""
    if mode == "max":
        budget = None if free_gib is None else free_gib - CONTEXT_GIB
        return Plan("max", dit_fp8=False, budget_gib=budget, sizes=sizes)
    if mode not in MODE_LIMIT_GIB:
        raise EngineError("invalid_params", f"unknown memory mode {mode!r}: use one of "
                          f"{', '.join(MODES)}", field="memory")
    budget = MODE_LIMIT_GIB[mode] - MARGIN_GIB
    if free_gib is not None:
        budget = min(budget, free_gib - CONTEXT_GIB)
    use_fp8 = fp8 and mode in ("12gb", "8gb")
    plan = Plan(mode, dit_fp8=use_fp8, text_encoder="stream", budget_gib=budget, sizes=sizes)
    if sizes is None:
        return plan
    # Stream as few main layers as keep the 1024x1024 estimate (tiled decode allowed) in budget.
    for k in range(sizes.dit_layers + 1):
        candidate = replace(plan, dit_streamed=k)
        if candidate._peak(1024 * 1024, tiled=True) <= budget:
            return candidate
    return replace(plan, dit_streamed=sizes.dit_layers)


def plan_for(free_bytes: int | None, *, fp8_available: bool = False,
             sizes: ModelSizes | None = None, mode: str = "auto",
             fp8: bool | None = None) -> Plan:
    """Choose the plan. `free_bytes`: the card's free memory (None: not a CUDA device, no limit).

    mode "auto" picks the first of max, 16gb, 12gb, 8gb whose 1024x1024 estimate fits the free
    memory (without a limit: max). `fp8`: None lets the mode decide (fp8 DiT in 12gb/8gb when
    available), True forces it (an error when unavailable), False never uses it.
    """
    if mode not in MODES:
        raise EngineError("invalid_params", f"unknown memory mode {mode!r}: use one of "
                          f"{', '.join(MODES)}", field="memory")
    if fp8 and not fp8_available:
        raise EngineError("invalid_params", "fp8 weights were asked for, but " +
                          fp8_unavailable_reason(), field="fp8")
    sizes = sizes or z_image_turbo_sizes()
    use_fp8 = fp8_available if fp8 is None else fp8
    free_gib = None if free_bytes is None else free_bytes / GiB
    if mode != "auto":
        plan = make_plan(mode, fp8=use_fp8, sizes=sizes, free_gib=free_gib)
        return replace(plan, dit_fp8=True) if fp8 and not plan.dit_fp8 else plan
    if free_gib is None:
        return make_plan("max", sizes=sizes)
    for name in ("max", "16gb", "12gb", "8gb"):
        nominal = make_plan(name, fp8=use_fp8, sizes=sizes)  # as sized for its card
        if nominal.peak_gib() <= free_gib - CONTEXT_GIB:
            break
    else:
        log.warning("only %.1f GiB of GPU memory is free; trying the 8gb mode, streaming more",
                    free_gib)
    plan = make_plan(name, fp8=use_fp8, sizes=sizes, free_gib=free_gib)
    return replace(plan, dit_fp8=True) if fp8 and not plan.dit_fp8 else plan


def lower_mode(mode: str) -> str | None:
    order = ["max", "16gb", "12gb", "8gb"]
    return order[order.index(mode) + 1] if mode in order[:-1] else None


def oom_error(plan: Plan | None, width: int, height: int, num_images: int,
              free_bytes: int | None = None) -> EngineError:
    """The out_of_memory error for a failed request: names a mode (or a size) that would fit."""
    what = f"{width}x{height} x{num_images}"
    mode = plan.mode if plan is not None else "max"
    hint = []
    if free_bytes is not None and plan is not None and plan.sizes is not None:
        fits = plan_for(free_bytes, fp8_available=plan.dit_fp8, sizes=plan.sizes)
        if fits.mode != mode:
            hint.append(f"--memory {fits.mode} should fit the {free_bytes / GiB:.1f} GiB free")
    if not hint:
        lower = lower_mode(mode)
        if lower is not None:
            hint.append(f"--memory {lower} uses less")
    if num_images > 1:
        hint.append("fewer images per request")
    hint.append("a smaller size")
    return EngineError("out_of_memory", f"the GPU ran out of memory at {what} in memory mode "
                       f"{mode}; try " + ", or ".join(hint) + " (the engine keeps running)")


# ------------------------------------------------------------------------------------------------
# fp8 through torchao (optional extra: pip install 'zimage-studio[fp8]')


def fp8_unavailable_reason(device: torch.device | None = None) -> str:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return ("torchao is not installed: pip install 'zimage-studio[fp8]' (torchao>=0.10), "
                "or use --memory 16gb / --fp8 off")
    if device is None or device.type != "cuda":
        return "fp8 matrix products need an NVIDIA GPU (compute capability 8.9+: Ada, Hopper)"
    if torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"{name} has no fp8 matrix units (needs compute capability 8.9+: Ada, Hopper)"
    return ""


def fp8_available(device: torch.device) -> bool:
    return fp8_unavailable_reason(device) == ""


def _is_quantizable(module: nn.Module, fqn: str) -> bool:
    """The big projections of the transformer blocks; not adaLN, embedders or the final layer."""
    return (isinstance(module, nn.Linear) and "adaLN" not in fqn
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def quantize_fp8(transformer: nn.Module, device: torch.device) -> None:
    """fp8 weights and fp8 matmuls (torchao dynamic activation quantization, per-row scales) for
    every block's attention and feed-forward Linears. Blocks are moved to `device` one at a time
    for the conversion and left there (apply_plan streams them back to host if the plan says so).
    """
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise EngineError("invalid_params", "fp8 weights need " + fp8_unavailable_reason()
                          ) from None
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for block in [*transformer.noise_refiner, *transformer.context_refiner, *transformer.layers]:
        block.to(device)
        quantize_(block, config, filter_fn=_is_quantizable)
    transformer.to(device)


# ------------------------------------------------------------------------------------------------
# Streaming blocks from host memory


def _tensor_slots(module: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute name, is_parameter) for every tensor of the module."""
    slots = []
    for mod in module.modules():
        slots += [(mod, name, True) for name, p in mod._parameters.items() if p is not None]
        slots += [(mod, name, False) for name, b in mod._buffers.items() if b is not None]
    return slots


def _set(slot: tuple[nn.Module, str, bool], tensor: torch.Tensor) -> None:
    mod, name, is_param = slot
    if is_param:
        mod._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        mod._buffers[name] = tensor


def _get(slot: tuple[nn.Module, str, bool]) -> torch.Tensor:
    mod, name, is_param = slot
    t = mod._parameters[name] if is_param else mod._buffers[name]
    return t.data if is_param and type(t) is nn.Parameter else t


def _pin(t: torch.Tensor) -> torch.Tensor:
    try:
        return t.pin_memory()
    except (RuntimeError, NotImplementedError, TypeError):  # some tensor subclasses cannot pin
        return t


def _record_stream(t: torch.Tensor, stream) -> None:
    """Tensor.record_stream; for wrapper subclasses (torchao fp8) on their inner tensors."""
    try:
        t.record_stream(stream)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        if not hasattr(t, "__tensor_flatten__"):
            raise
        for name in t.__tensor_flatten__()[0]:
            _record_stream(getattr(t, name), stream)


class LayerStreamer:
    """Keeps `blocks` in host memory and gives each a device copy only while it runs.

    Host copies are pinned when the device is CUDA, and the next streamed block is copied on a side
    stream while the current one computes. Works for any (host, device) pair: cpu->meta shows the
    placement in tests, cpu->cpu the numerics.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device | str,
                 host: torch.device | str = "cpu"):
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.host = torch.device(host)
        cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._slots = [_tensor_slots(b) for b in self.blocks]
        self._host: list[list[torch.Tensor]] = []
        for block, slots in zip(self.blocks, self._slots):
            tensors = [_get(s).to(self.host) for s in slots]
            if cuda and self.host.type == "cpu":
                tensors = [_pin(t) for t in tensors]
            self._host.append(tensors)
            for s, t in zip(slots, tensors):
                _set(s, t)
        self._pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self._loaded: set[int] = set()
        self.copies = 0  # block copies to the device so far (tests and logs)
        self._hooks = []
        for i, block in enumerate(self.blocks):
            self._hooks.append(block.register_forward_pre_hook(functools.partial(self._pre, i)))
            self._hooks.append(block.register_forward_hook(functools.partial(self._post, i)))

    # The next streamed block to prefetch after block i (cyclic: the last prefetches the first,
    # which the next denoising step needs).
    def _next(self, i: int) -> int:
        return (i + 1) % len(self.blocks)

    def _start_copy(self, i: int) -> None:
        if i in self._pending or i in self._loaded:
            return
        self.copies += 1
        if self.copy_stream is None:
            self._pending[i] = ([t.to(self.device) for t in self._host[i]], None)
            return
        with torch.cuda.stream(self.copy_stream):
            tensors = [t.to(self.device, non_blocking=True) for t in self._host[i]]
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self._pending[i] = (tensors, event)

    def _pre(self, i: int, module, args):
        self._start_copy(i)
        tensors, event = self._pending.pop(i)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in tensors:
                _record_stream(t, current)  # freed only after the compute stream used it
        for s, t in zip(self._slots[i], tensors):
            _set(s, t)
        self._loaded.add(i)
        if len(self.blocks) > 1:
            self._start_copy(self._next(i))
        return None

    def _post(self, i: int, module, args, output):
        self._evict(i)
        return None

    def _evict(self, i: int) -> None:
        for s, t in zip(self._slots[i], self._host[i]):
            _set(s, t)
        self._loaded.discard(i)

    def evict_all(self) -> None:
        """Back to the resting state (after an exception interrupted a forward)."""
        for i in list(self._loaded):
            self._evict(i)
        self._pending.clear()

    def remove(self, to: torch.device | str | None = None) -> None:
        """Stop streaming: hooks removed, every block moved to `to` (default: the device)."""
        self.evict_all()
        for h in self._hooks:
            h.remove()
        target = torch.device(to) if to is not None else self.device
        for slots, host in zip(self._slots, self._host):
            for s, t in zip(slots, host):
                _set(s, t.to(target))
        self._hooks.clear()


def device_of(module: nn.Module) -> set[str]:
    """Device types of a module's parameters (tests and logs)."""
    return {p.device.type for p in module.parameters()}


# ------------------------------------------------------------------------------------------------
# Applying a plan to a pipeline


@dataclass
class MemoryState:
    """Where a pipeline's weights are: the one record of it, declared on ZImagePipeline as
    `pipe.memory` and changed only by the functions below."""

    plan: Plan | None = None  # None until apply_plan (a pipeline built by hand: all resident)
    streamers: dict[str, LayerStreamer] = field(default_factory=dict)  # component -> streamer
    resident: bool = True  # False between unload() and the next ensure_resident()
    dit_fp8: bool = False  # the DiT's blocks hold torchao fp8 weights (one-way)

    @property
    def streaming(self) -> bool:
        return bool(self.streamers)


def streamed_dit_layers(n_layers: int, k: int) -> list[int]:
    """Which k of n main layers to stream: spread evenly, so resident layers between two streamed
    ones give the copy engine time to prefetch."""
    if k <= 0:
        return []
    if k >= n_layers:
        return list(range(n_layers))
    return sorted({math.floor((j + 0.5) * n_layers / k) for j in range(k)})


def apply_plan(pipe, plan: Plan, device: torch.device | str | None = None) -> None:
    """Put the pipeline's weights where `plan` says. Components may start anywhere (load_pipeline
    puts them on `plan.load_device`); applying a second plan first undoes the first's streaming.
    Records the plan and the streamers in pipe.memory. The fp8 conversion is one-way.
    """
    device = torch.device(device) if device is not None else pipe.device
    release(pipe)
    state: MemoryState = pipe.memory
    transformer, text_model = pipe.transformer, pipe.text_encoder.model
    if plan.dit_fp8 and not state.dit_fp8:
        quantize_fp8(transformer, device)
        state.dit_fp8 = True
    streamers = {}
    ids = streamed_dit_layers(len(transformer.layers), plan.dit_streamed)
    streamed = {id(transformer.layers[i]) for i in ids}
    for m in transformer.children():
        if isinstance(m, nn.ModuleList):
            for block in m:
                if id(block) not in streamed:
                    block.to(device)
        else:
            m.to(device)
    for name, p in list(transformer._parameters.items()):
        if p is not None and p.device != device:
            transformer._parameters[name] = nn.Parameter(p.data.to(device), requires_grad=False)
    if ids:
        streamers["transformer"] = LayerStreamer([transformer.layers[i] for i in ids], device)
    if plan.text_encoder == "stream":
        for name, m in text_model.named_children():
            if name != "layers":
                m.to(device)
        streamers["text_encoder"] = LayerStreamer(text_model.layers, device)
    else:
        text_model.to(device)
    pipe.vae.to(device)
    if pipe.controlnet is not None:  # resident in every plan
        pipe.controlnet.to(device)
    state.plan, state.streamers = plan, streamers
    log.info("%s", plan.describe())


def release(pipe) -> None:
    """Undo streaming (blocks back on the device); used before applying another plan."""
    for streamer in pipe.memory.streamers.values():
        streamer.remove()
    pipe.memory.streamers = {}


def _components(pipe) -> list[nn.Module]:
    parts = [pipe.transformer, pipe.vae, pipe.text_encoder.model]
    return parts + ([pipe.controlnet] if pipe.controlnet is not None else [])


def unload(pipe, host: torch.device | str = "cpu") -> int:
    """Free the GPU between jobs ("free VRAM"): streaming undone and every component moved to host
    memory; `ensure_resident` re-applies the pipeline's plan before the next job. The prompt cache stays
    (a few hundred KB), so a repeated prompt still skips the text encoder. Returns the device
    bytes freed (0 where the device keeps no count)."""
    state: MemoryState = pipe.memory
    if not state.resident:
        return 0
    before = _allocated(pipe.device)
    for streamer in state.streamers.values():
        streamer.remove(to=host)
    state.streamers = {}
    for m in _components(pipe):
        m.to(host)
    state.resident = False
    if pipe.device.type == "cuda":
        torch.cuda.empty_cache()
    return max(0, before - _allocated(pipe.device))


def ensure_resident(pipe) -> None:
    """Undo `unload`: weights back where the pipeline's plan puts them."""
    state: MemoryState = pipe.memory
    if state.resident:
        return
    if state.plan is not None:
        apply_plan(pipe, state.plan, pipe.device)
    else:
        for m in _components(pipe):
            m.to(pipe.device)
    state.resident = True


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def reset_after_error(pipe) -> None:
    """After an exception (OOM, cancel) mid-forward: streamed blocks back to host memory."""
    for streamer in pipe.memory.streamers.values():
        streamer.evict_all()


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device; None for devices without a fixed budget (CPU, MPS)."""
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def choose_plan(mode: str, device: torch.device, fp8: bool | None = None) -> Plan:
    """The plan for this device: `mode` from --memory, fp8 from --fp8 (None: auto)."""
    if mode not in MODES:
        raise EngineError("invalid_params", f"unknown memory mode {mode!r}: use one of "
                          f"{', '.join(MODES)}", field="memory")
    if device.type != "cuda":
        if mode not in ("auto", "max"):
            log.warning("--memory %s applies to CUDA GPUs; on %s everything stays in memory",
                        mode, device)
        if fp8:
            raise EngineError("invalid_params", "fp8 weights were asked for, but " +
                              fp8_unavailable_reason(device), field="fp8")
        return Plan("max")
    avail = fp8_available(device)
    if fp8 and not avail:
        raise EngineError("invalid_params", "fp8 weights were asked for, but " +
                          fp8_unavailable_reason(device), field="fp8")
    return plan_for(free_bytes(device), fp8_available=avail, mode=mode, fp8=fp8)


def decode_latents(pipe, latents: torch.Tensor, wrap: str = "") -> torch.Tensor:
    """VAE decode, tiled when the pipeline's plan says the whole image would not fit. Seamless
    textures (`wrap`) decode whole: tiles would wrap within themselves."""
    plan = pipe.memory.plan
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    if plan is not None and plan.tile_decode(w, h) and not wrap:
        from engine.tiled_vae import tiled_decode

        return tiled_decode(pipe.vae, latents, tile=VAE_TILE, overlap=VAE_TILE_OVERLAP)
    return pipe.vae.decode(latents, wrap=wrap)
