"""LoRA files for the S3-DiT: read the layouts people share, place them on our modules, apply them.

A LoRA changes one Linear as  y = W x + weight * (alpha / rank) * B (A x),  A = down [rank, in],
B = up [out, rank]. The layouts in the wild differ only in how they name A, B, alpha and the module:

  PEFT / diffusers   [transformer.]layers.0.attention.to_q.lora_A.weight, .lora_B.weight
                     (alpha / rank in the `lora_adapter_metadata` JSON, else 1)
  kohya / sd-scripts lora_unet_layers_0_attention_to_q.lora_down.weight, .lora_up.weight, .alpha
  ComfyUI / musubi   [diffusion_model.]layers.0.attention.qkv.lora_A.weight: the original module
                     tree, with fused attention.qkv, attention.out, x_embedder, final_layer
  dotted (Anime-Z)   ….lora.down.weight / ….lora.up.weight

`read_lora` turns any of them into `Lora.pairs`: one (A, B) per module in the diffusers naming
(the checkpoint keys), alpha / rank folded into B; a fused qkv pair becomes three pairs sharing A.

`LoraSet.apply` puts the active LoRAs on a live transformer: per Linear, every LoRA that touches it
is stacked into one low-rank pair (A rows stacked, B columns stacked with each weight folded in,
row blocks for our fused qkv / w13 projections), which that Linear's forward adds
(engine.model.layers.Linear: torch.compile guards on it, as it would not on a forward hook). The
base weights are never written, so clearing the set gives back the base model bit for bit and
switching sets never reloads it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.model.layers import Linear

MAX_LORAS = 8  # active at once; each adds a low-rank matmul per targeted Linear
MAX_WEIGHT = 4.0  # |weight| above this is a typo, not a style
MAX_INFO_CHARS = 200  # metadata strings shown to clients are cut here
MAX_NAME_CHARS = 200  # a LoRA's name is its file stem
MAX_LISTED = 256  # LoRAs a welcome lists (its size stays far below the client's header bound)

# The original module tree (ComfyUI, musubi-tuner) spells some modules differently; qkv is fused.
_ORIGINAL_SPELLING = (
    ("all_x_embedder.2-1", "x_embedder"),
    ("all_final_layer.2-1", "final_layer"),
    (".attention.to_out.0", ".attention.out"),
)
_FUSED_IN_FILE = {"attention.qkv": ("attention.to_q", "attention.to_k", "attention.to_v")}
# Our live model fuses these at load: module suffix -> the diffusers modules stacked in its rows.
_FUSED_LIVE = {
    "attention.qkv": ("attention.to_q", "attention.to_k", "attention.to_v"),
    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
}
_DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight", ".lora_A.default.weight")
_UP = (".lora_B.weight", ".lora_up.weight", ".lora.up.weight", ".lora_B.default.weight")
_REFUSED = {  # key fragment -> what the file is
    "lokr_": "a LoKr", "hada_": "a LoHa", "dora_scale": "a DoRA", "lora_magnitude_vector": "a DoRA",
    ".diff": "a full-weight difference", "lora_B.bias": "a LoRA with biases",
}
_TEXT_ENCODER = ("lora_te", "text_encoder.", "te1.", "te2.", "text_encoders.")


def _err(code: str, message: str) -> EngineError:
    return EngineError(code, message)


@dataclass(frozen=True)
class LoraInfo:
    """What the welcome shows about one file: never its path."""

    name: str
    size: int
    rank: int
    trigger_words: str = ""
    base_model: str = ""

    def to_wire(self) -> dict:
        return {"name": self.name, "size": self.size, "rank": self.rank,
                "trigger_words": self.trigger_words, "base_model": self.base_model}


@dataclass
class Lora:
    name: str
    pairs: dict[str, tuple[Tensor, Tensor]]  # diffusers module name -> (A [r, in], B*alpha/r [out, r])
    info: LoraInfo


def read_lora(path: str | Path, module_names: Iterable[str]) -> Lora:
    """Read one LoRA file and name its pairs after `module_names` (the diffusers Linear names).

    Raises EngineError: lora_corrupt (not a readable safetensors file), lora_unsupported (LoKr,
    LoHa, DoRA, text-encoder LoRAs), lora_invalid (mismatched ranks, non-finite values),
    lora_incompatible (a key that is no module of this model, e.g. an SDXL or Flux LoRA).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
        metadata = _read_metadata(path)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise _err("lora_corrupt", f"LoRA {path.name} is not a readable .safetensors file ({e}).")
    if not tensors:
        raise _err("lora_corrupt", f"LoRA {path.name} holds no tensors.")
    pairs = _pairs(tensors, metadata, set(module_names), path.name)
    rank = max(a.shape[0] for a, _ in pairs.values())
    return Lora(path.stem, pairs, _info(path, rank, metadata))


def lora_info(path: str | Path) -> LoraInfo:
    """Name, size, rank and metadata without loading the tensors (for the welcome's list)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            ranks = [f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith(_DOWN)]
        metadata = _read_metadata(path)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise _err("lora_corrupt", f"LoRA {path.name} is not a readable .safetensors file ({e}).")
    return _info(path, max(ranks, default=0), metadata)


def scan_lora_dir(directory: str | Path) -> dict[str, Path]:
    """name (file stem) -> path of every .safetensors file directly in `directory`."""
    d = Path(directory)
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.safetensors")) if p.is_file()}


def check_weight(weight: float) -> float:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight)
            and abs(weight) <= MAX_WEIGHT):
        raise _err("invalid_params", f"A LoRA weight must be a number from -{MAX_WEIGHT:g} to "
                                     f"{MAX_WEIGHT:g}, not {weight!r}.")
    return float(weight)


# --- reading -----------------------------------------------------------------------------------

def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _info(path: Path, rank: int, meta: dict[str, str]) -> LoraInfo:
    def first(*keys: str) -> str:
        for k in keys:
            if meta.get(k):
                return str(meta[k])[:MAX_INFO_CHARS]
        return ""

    words = first("modelspec.trigger_phrase", "trigger_phrase", "trigger_words", "ss_trigger_words")
    if not words and meta.get("ss_tag_frequency"):
        words = _top_tags(meta["ss_tag_frequency"])
    base = first("modelspec.architecture", "ss_base_model_version", "base_model",
                 "ss_sd_model_name")
    return LoraInfo(path.stem, path.stat().st_size, int(rank), words, base)


def _top_tags(raw: str, n: int = 3) -> str:
    try:
        freq: dict[str, int] = {}
        for tags in json.loads(raw).values():
            for tag, count in tags.items():
                freq[tag.strip()] = freq.get(tag.strip(), 0) + int(count)
    except (ValueError, AttributeError, TypeError):
        return ""
    top = sorted(freq, key=lambda t: -freq[t])[:n]
    return ", ".join(top)[:MAX_INFO_CHARS]


def _strip_prefix(key: str) -> str:
    for prefix in ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_key(key: str) -> tuple[str, str] | None:
    """'layers.0.attention.to_q.lora_A.weight' -> ('layers.0.attention.to_q', 'down')."""
    for suffixes, part in ((_DOWN, "down"), (_UP, "up"), ((".alpha",), "alpha")):
        for s in suffixes:
            if key.endswith(s):
                return key[: -len(s)], part
    return None


def _spellings(known: set[str]) -> dict[str, str]:
    """Every accepted spelling of a module (diffusers or original, dotted or kohya's underscores)
    -> its diffusers name, or `<block>.attention.qkv` for a LoRA on the fused qkv."""
    names: dict[str, str] = {}
    for name in known:
        original = name
        for ours, theirs in _ORIGINAL_SPELLING:
            original = original.replace(ours, theirs)
        for spelling in (name, original):
            names[spelling] = names[spelling.replace(".", "_")] = name
        if name.endswith(".attention.to_q"):
            qkv = name[: -len("to_q")] + "qkv"
            names[qkv] = names[qkv.replace(".", "_")] = qkv
    return names


def _alphas_from_metadata(meta: dict[str, str]) -> tuple[float | None, dict[str, float], int | None]:
    """PEFT's saved LoraConfig: (lora_alpha, alpha_pattern, r); keys may carry 'transformer.'."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None, {}, None
    cfg = json.loads(raw)
    cfg = {k.removeprefix("transformer."): v for k, v in cfg.items()}
    return cfg.get("lora_alpha"), dict(cfg.get("alpha_pattern") or {}), cfg.get("r")


def _pairs(tensors: dict[str, Tensor], meta: dict[str, str], known: set[str],
           filename: str) -> dict[str, tuple[Tensor, Tensor]]:
    for key in tensors:
        low = key.lower()
        for frag, what in _REFUSED.items():
            if frag in low:
                raise _err("lora_unsupported", f"{filename} is {what} file ({key}); only plain LoRAs "
                                               "(down/up pairs) are supported.")
        if low.startswith(_TEXT_ENCODER) or _strip_prefix(low).startswith(_TEXT_ENCODER):
            raise _err("lora_unsupported", f"{filename} changes the text encoder ({key}); "
                                           "text-encoder LoRAs are not supported.")

    spellings = _spellings(known)
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        split = _split_key(_strip_prefix(key))
        if split is None:
            raise _err("lora_incompatible", f"{filename}: no LoRA tensor of this model is named "
                                            f"{key!r}.")
        raw, part = split
        name = spellings.get(raw.removeprefix("lora_unet_"))
        if name is None:
            raise _err("lora_incompatible", f"{filename} is not a Z-Image LoRA: it changes "
                                            f"{key!r}, which this model does not have.")
        grouped.setdefault(name, {})[part] = t

    lora_alpha, alpha_pattern, meta_r = _alphas_from_metadata(meta)
    pairs: dict[str, tuple[Tensor, Tensor]] = {}
    for name, parts in grouped.items():
        if "down" not in parts or "up" not in parts:
            missing = "up" if "down" in parts else "down"
            raise _err("lora_invalid", f"{filename}: {name} has no {missing} matrix.")
        a, b = parts["down"].float(), parts["up"].float()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise _err("lora_invalid", f"{filename}: the ranks of {name} do not match (down "
                                       f"{tuple(a.shape)}, up {tuple(b.shape)}).")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise _err("lora_invalid", f"{filename}: {name} holds non-finite values.")
        rank = a.shape[0]
        if "alpha" in parts:
            alpha = float(parts["alpha"].float().reshape(-1)[0])
        else:
            alpha = next((float(v) for k, v in alpha_pattern.items()
                          if name == k or name.endswith("." + k)), None)
            if alpha is None:
                alpha = float(lora_alpha) if lora_alpha is not None else float(meta_r or rank)
        b = b * (alpha / rank)
        fused = next((f for f in _FUSED_IN_FILE if name.endswith("." + f)), None)
        if fused is None:
            pairs[name] = (a, b)
            continue
        block = name[: -len(fused)]
        for sub, b_chunk in zip(_FUSED_IN_FILE[fused], b.chunk(len(_FUSED_IN_FILE[fused]))):
            pairs[block + sub] = (a, b_chunk)
    return pairs


# --- applying ----------------------------------------------------------------------------------

@dataclass
class _Slot:
    """Where a diffusers-named Linear lives in the live model: a module and its output rows."""

    module: nn.Linear
    rows: slice


def module_slots(transformer: nn.Module) -> dict[str, _Slot]:
    """diffusers Linear name -> (live module, rows), seeing through our fused qkv and w13."""
    slots: dict[str, _Slot] = {}
    for name, mod in transformer.named_modules():
        if not isinstance(mod, Linear):
            continue
        fused = next((f for f in _FUSED_LIVE if name.endswith(f)), None)
        if fused is None:
            slots[name] = _Slot(mod, slice(0, mod.out_features))
            continue
        parts = _FUSED_LIVE[fused]
        step = mod.out_features // len(parts)
        block = name[: -len(fused)]
        for i, sub in enumerate(parts):
            slots[block + sub] = _Slot(mod, slice(i * step, (i + 1) * step))
    return slots


@dataclass
class LoraSet:
    """The LoRAs active on one transformer (see the module docstring)."""

    transformer: nn.Module
    active: tuple[tuple[str, float], ...] = ()  # (name, weight), for reports
    _current: tuple = ()  # the (Lora, weight) pairs applied: same objects -> nothing to do
    _modules: list = field(default_factory=list)  # the Linears that carry a low-rank term
    _slots: dict[str, _Slot] | None = None

    @property
    def slots(self) -> dict[str, _Slot]:
        if self._slots is None:
            self._slots = module_slots(self.transformer)
        return self._slots

    def clear(self) -> None:
        for mod in self._modules:
            del mod.lora_down, mod.lora_up  # back to the class's None: plain nn.Linear
        self._modules = []
        self._current = ()
        self.active = ()

    def apply(self, loras: Sequence[tuple[Lora, float]], *, device: torch.device,
              dtype: torch.dtype) -> None:
        """Make exactly `loras` (each with its weight) active; the same set again costs nothing."""
        current = tuple((lora, float(w)) for lora, w in loras)
        if len(current) == len(self._current) and all(
                a is b and wa == wb for (a, wa), (b, wb) in zip(current, self._current)):
            return
        per_module: dict[int, tuple[nn.Linear, list]] = {}
        for lora, weight in loras:
            for name, (a, b) in lora.pairs.items():
                slot = self.slots.get(name)
                if slot is None:
                    raise _err("lora_incompatible", f"LoRA {lora.name} changes {name}, which "
                                                    "this model does not have.")
                if a.shape[1] != slot.module.in_features or b.shape[0] != slot.rows.stop - slot.rows.start:
                    raise _err("lora_incompatible", f"LoRA {lora.name} does not fit {name}: it maps "
                                                    f"{a.shape[1]} -> {b.shape[0]} features, the "
                                                    f"model {slot.module.in_features} -> "
                                                    f"{slot.rows.stop - slot.rows.start}.")
                per_module.setdefault(id(slot.module), (slot.module, []))[1].append(
                    (a, b * weight, slot.rows))
        self.clear()
        for mod, parts in per_module.values():
            down = torch.cat([a for a, _, _ in parts])
            up = torch.zeros(mod.out_features, down.shape[0])
            col = 0
            for a, b, rows in parts:
                up[rows, col:col + a.shape[0]] = b
                col += a.shape[0]
            mod.lora_down = down.to(device=device, dtype=dtype)
            mod.lora_up = up.to(device=device, dtype=dtype)
            self._modules.append(mod)
        self._current = current
        self.active = tuple((lora.name, w) for lora, w in current)


class LoraLibrary:
    """The LoRAs an engine may use, by name: the .safetensors files in its --lora-dir (looked at
    again whenever the folder changes, so new files show up without a restart) plus files named on
    the command line. Clients only ever send names. Read files are cached by (path, mtime, size)."""

    CACHE = 8  # read LoRAs kept in host memory (a rank-32 LoRA of the full model is ~0.3 GB)

    def __init__(self, directory: str | Path | None = None, files: Iterable[str | Path] = ()):
        import threading

        self._lock = threading.Lock()  # the server's I/O thread lists, its worker reads
        self.directory = Path(directory) if directory else None
        self.files = {Path(f).stem: Path(f) for f in files}
        self._dir_stamp: float | None = None
        self._dir_files: dict[str, Path] = {}
        self._infos: dict[Path, tuple[tuple, LoraInfo]] = {}
        self._read: dict[Path, tuple[tuple, Lora]] = {}

    def paths(self) -> dict[str, Path]:
        with self._lock:
            return self._paths()

    def _paths(self) -> dict[str, Path]:
        if self.directory is not None:
            try:
                stamp = self.directory.stat().st_mtime_ns
            except OSError:
                stamp = None
            if stamp != self._dir_stamp:
                self._dir_stamp, self._dir_files = stamp, scan_lora_dir(self.directory)
        return dict(sorted({**self._dir_files, **self.files}.items()))

    def infos(self) -> list[LoraInfo]:
        """What the welcome lists (by name, at most MAX_LISTED); unreadable files are left out."""
        with self._lock:
            return self._infos_locked()

    def _infos_locked(self) -> list[LoraInfo]:
        out = []
        for path in list(self._paths().values())[:MAX_LISTED]:
            stamp = _stamp(path)
            cached = self._infos.get(path)
            if cached is None or cached[0] != stamp:
                try:
                    cached = (stamp, lora_info(path))
                except EngineError:
                    cached = (stamp, None)
                self._infos[path] = cached
            if cached[1] is not None:
                out.append(cached[1])
        return out

    def read(self, name: str, module_names: Iterable[str]) -> Lora:
        with self._lock:
            path = self._paths().get(name)
            cached = self._read.get(path) if path is not None else None
        if path is None:
            raise EngineError("invalid_params", f"No LoRA named {name!r} is available on this "
                                                "engine.", field="loras")
        stamp = _stamp(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        lora = read_lora(path, module_names)  # outside the lock: listing never waits on a read
        with self._lock:
            self._read[path] = (stamp, lora)
            while len(self._read) > self.CACHE:
                self._read.pop(next(iter(self._read)))
        return lora


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size)
