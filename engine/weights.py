"""Strict safetensors loading: every tensor accounted for, shapes checked, dtype/device on load.

    model = build_on_meta(...)                     # e.g. `with torch.device("meta"): Model(params)`
    load_safetensors_into(model, "transformer/diffusion_pytorch_model.safetensors.index.json",
                          dtype=torch.bfloat16, device="cuda")

Files are read one tensor at a time with `safe_open` (straight onto `device` where safetensors can),
then converted to `dtype`, so the peak is the model in its target dtype plus one tensor: a full
float32 copy of a bf16 checkpoint is never made. The result has `load_state_dict(strict=True,
assign=True)` semantics. Any missing, unexpected or misshaped tensor raises an EngineError whose
message names the tensors (the first few and a count) and the file; a truncated or corrupt file
raises one naming the file.

Key maps translate other checkpoint namings to ours (diffusers naming = engine.model module names):
`comfyui_transformer_key_map` (ComfyUI / original single-file DiT), `bfl_vae_key_map` (BFL/LDM
`ae.safetensors`) and `qwen3_key_map` (Qwen3 `model.`-prefixed files such as ComfyUI's
`qwen_3_4b.safetensors`, for a transformers `Qwen3Model`); `checkpoint_key_map` takes one part
out of a ComfyUI all-in-one checkpoint (`model.diffusion_model.`, `text_encoders.<name>.transformer.`
and `vae.` prefixes) and drops the rest. A key map is a function
`(source_key, source_shape) -> list[Target]`; an empty list drops the source tensor.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import EngineError

# The code for weights that are missing, corrupt or do not fit (protocol/errors.py CODES).
ERROR_CODE = "model_unavailable"
SHOW = 5  # tensor names listed in an error message before "... and N more"


@dataclass(frozen=True)
class Target:
    """Where (part of) a source tensor goes.

    name: destination key in the module's state dict.
    rows: (start, stop) along dim 0 of the source (splitting fused qkv), or None for all of it.
    squeeze: drop trailing size-1 dims (1x1 conv weight -> linear weight).
    """

    name: str
    rows: tuple[int, int] | None = None
    squeeze: bool = False


KeyMap = Callable[[str, tuple[int, ...]], Sequence[Target]]


def identity_key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
    return [Target(key)]


# --------------------------------------------------------------------------------------------
# Files

def _names(items: Iterable[str], total: int | None = None) -> str:
    items = list(items)
    total = len(items) if total is None else total
    shown = ", ".join(items[:SHOW])
    return shown + (f" ... and {total - SHOW} more" if total > SHOW else "")


def _corrupt(path: Path, detail: object) -> EngineError:
    return EngineError(
        ERROR_CODE,
        f"{path}: not a readable safetensors file ({detail}); it is probably truncated or "
        "corrupt (an interrupted download?). Delete it and download it again.",
    )


def read_index(index_path: str | Path) -> dict[str, Path]:
    """`*.safetensors.index.json` -> {tensor name: shard path}; every shard must exist."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except FileNotFoundError:
        raise EngineError(ERROR_CODE, f"{index_path}: file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EngineError(ERROR_CODE,
                          f"{index_path}: not a valid safetensors index ({e})") from None
    shards = {name: index_path.parent / fname for name, fname in weight_map.items()}
    missing = sorted({str(p) for p in shards.values() if not p.is_file()})
    if missing:
        raise EngineError(ERROR_CODE, f"{index_path} lists {len(missing)} shard file(s) that do "
                                      f"not exist: {_names(missing)}")
    return shards


def resolve_files(
    files_or_index: str | Path | Iterable[str | Path],
) -> tuple[list[Path], dict | None]:
    """A .safetensors file, an index json, a folder (its index or its .safetensors files) or a
    list of files -> (files, index weight_map or None)."""
    if isinstance(files_or_index, (str, os.PathLike)):
        p = Path(files_or_index)
        if p.is_dir():
            indexes = sorted(p.glob("*.safetensors.index.json"))
            if len(indexes) == 1:
                p = indexes[0]
            else:
                files = sorted(p.glob("*.safetensors"))
                if not files:
                    raise EngineError(ERROR_CODE, f"{p}: no .safetensors files in this folder")
                return files, None
        if p.name.endswith(".json"):
            shards = read_index(p)
            return sorted(set(shards.values())), {k: v for k, v in shards.items()}
        if not p.is_file():
            raise EngineError(ERROR_CODE, f"{p}: file not found")
        return [p], None
    files = [Path(f) for f in files_or_index]
    if not files:
        raise EngineError(ERROR_CODE, "no weight files given")
    if len(files) == 1 and files[0].name.endswith(".json"):
        return resolve_files(files[0])
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EngineError(ERROR_CODE, f"weight file(s) not found: {_names(missing)}")
    return files, None


def _open(path: Path, device: str = "cpu"):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device=device)
    except FileNotFoundError:
        raise EngineError(ERROR_CODE, f"{path}: file not found") from None
    except Exception as e:  # SafetensorError, OSError, ...: a bad header or a short file
        raise _corrupt(path, e) from None


def read_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{key: (dtype, shape)} of one safetensors file, from its header only (no tensor data)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            size = path.stat().st_size
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise EngineError(ERROR_CODE, f"{path}: file not found") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, e) from None
    out = {}
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            out[key] = (info["dtype"], tuple(int(s) for s in info["shape"]))
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise _corrupt(path, f"bad header entry {key!r}: {e}") from None
    if 8 + n + end > size:
        raise _corrupt(path, f"the header describes {8 + n + end} bytes but the file has {size}")
    return out


# --------------------------------------------------------------------------------------------
# Loading

@dataclass
class _Plan:
    file: Path
    src: str
    target: Target
    shape: tuple[int, ...]  # after rows/squeeze


def _target_shape(src_shape: tuple[int, ...], t: Target) -> tuple[int, ...]:
    shape = src_shape
    if t.rows is not None:
        a, b = t.rows
        shape = (b - a, *shape[1:])
    if t.squeeze:
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
    return shape


def plan_load(expected: dict[str, tuple[int, ...]], files: list[Path],
              key_map: KeyMap | None = None,
              weight_map: dict[str, Path] | None = None) -> list[_Plan]:
    """Match the files' tensors to `expected` {name: shape}; raise EngineError on any mismatch."""
    key_map = key_map or identity_key_map
    plans: dict[str, _Plan] = {}
    unexpected: list[tuple[str, Path]] = []
    duplicate: list[str] = []
    misplaced: list[str] = []
    seen: set[str] = set()
    for path in files:
        for src, (_dtype, shape) in read_header(path).items():
            seen.add(src)
            if weight_map is not None and weight_map.get(src) not in (None, path):
                misplaced.append(src)
            for t in key_map(src, shape):
                if t.name in plans:
                    duplicate.append(f"{t.name} ({plans[t.name].file.name}, {path.name})")
                    continue
                if t.name not in expected:
                    unexpected.append((src if t.name == src else f"{src} -> {t.name}", path))
                    continue
                plans[t.name] = _Plan(path, src, t, _target_shape(shape, t))
    if weight_map is not None:
        listed_absent = sorted(k for k in weight_map if k not in seen)
        if listed_absent:
            raise EngineError(ERROR_CODE, f"the index lists {len(listed_absent)} tensor(s) that "
                                          f"are not in its shard files: {_names(listed_absent)}")
    where = _where(files)
    problems = []
    missing = [k for k in expected if k not in plans]
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_names(missing)}")
    if unexpected:
        files_u = sorted({p.name for _, p in unexpected})
        problems.append(f"{len(unexpected)} unexpected tensor(s) (in {', '.join(files_u)}): "
                        f"{_names([u for u, _ in unexpected])}")
    bad_shape = [f"{k} {list(p.shape)} in {p.file.name}, expected {list(expected[k])}"
                 for k, p in plans.items() if tuple(expected[k]) != p.shape]
    if bad_shape:
        problems.append(f"{len(bad_shape)} tensor(s) with the wrong shape: {_names(bad_shape)}")
    if duplicate:
        problems.append(f"{len(duplicate)} tensor(s) given twice: {_names(duplicate)}")
    if misplaced:
        problems.append(f"{len(misplaced)} tensor(s) in a different shard than the index says: "
                        f"{_names(misplaced)}")
    if problems:
        raise EngineError(ERROR_CODE, f"{where} does not match the model: " + "; ".join(problems)
                          + ". Is this the right file for this model, and is it complete?")
    return list(plans.values())


def _where(files: list[Path]) -> str:
    if len(files) == 1:
        return str(files[0])
    return f"{files[0].parent} ({len(files)} files: {_names([f.name for f in files])})"


def _expected(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict(keep_vars=True))


@torch.no_grad()
def load_safetensors_into(
    module: torch.nn.Module,
    files_or_index_path: str | Path | Iterable[str | Path],
    *,
    dtype: torch.dtype | None,
    device: str | torch.device,
    key_map: KeyMap | str | None = None,
) -> None:
    """Load safetensors weights into `module` (best built on the meta device), strictly.

    files_or_index_path: a .safetensors file, a `*.safetensors.index.json`, a folder holding
        either, or a list of .safetensors files.
    dtype: floating-point tensors are converted to it (None keeps the file's dtype); integer
        tensors keep theirs.
    key_map: a KeyMap, the name of one in KEY_MAPS, or None for the file's own names.
    Non-persistent buffers are not in state dicts: a module built on meta must create them itself.
    """
    files, weight_map = resolve_files(files_or_index_path)
    if isinstance(key_map, str):
        key_map = key_map_for(key_map, module)
    current = _expected(module)
    expected = {k: tuple(v.shape) for k, v in current.items()}
    plans = plan_load(expected, files, key_map, weight_map)

    # No reference to the tensors is kept here: load_state_dict holds the only one, so a module
    # that fuses tensors on load (model.layers.fuse_on_load) frees each part once fused.
    module.load_state_dict(_read_tensors(plans, dtype, torch.device(device)), strict=True,
                           assign=True)


def _read_tensors(plans: list[_Plan], dtype: torch.dtype | None,
                  device: torch.device) -> dict[str, torch.Tensor]:
    open_device = str(device) if device.type in ("cpu", "cuda") else "cpu"
    by_file: dict[Path, list[_Plan]] = {}
    for p in plans:
        by_file.setdefault(p.file, []).append(p)
    state: dict[str, torch.Tensor] = {}
    for path, items in by_file.items():
        f = _open(path, open_device)
        try:
            with f:
                for p in items:
                    if p.target.rows is not None:
                        a, b = p.target.rows
                        t = f.get_slice(p.src)[a:b]
                    else:
                        t = f.get_tensor(p.src)
                    t = t.reshape(p.shape) if p.target.squeeze else t
                    to_dtype = dtype if (dtype is not None and t.is_floating_point()) else None
                    state[p.target.name] = t.to(device=device, dtype=to_dtype).contiguous()
        except EngineError:
            raise
        except Exception as e:  # data region unreadable: truncated after the header, I/O error
            raise _corrupt(path, e) from None
    return state


def meta_tensors(module: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers (non-persistent ones included) still on the meta device."""
    names = [n for n, p in module.named_parameters() if p.is_meta]
    names += [n for n, b in module.named_buffers() if b.is_meta]
    return names


# --------------------------------------------------------------------------------------------
# Key maps

COMFY_PREFIX = "model.diffusion_model."
_COMFY_ATTN = {"out.weight": "to_out.0.weight", "out.bias": "to_out.0.bias",
               "q_norm.weight": "norm_q.weight", "k_norm.weight": "norm_k.weight"}


def comfyui_transformer_key_map(patch_key: str = "2-1") -> KeyMap:
    """ComfyUI / original single-file Z-Image DiT -> diffusers names.

    Prefix `model.diffusion_model.` optional; x_embedder -> all_x_embedder.2-1; final_layer ->
    all_final_layer.2-1; attention.qkv [3D, D] -> to_q/to_k/to_v (equal row blocks);
    attention.out -> to_out.0; q_norm/k_norm -> norm_q/norm_k; norm_final (an unused Lumina-2
    leftover) dropped.
    """

    def key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
        k = key[len(COMFY_PREFIX):] if key.startswith(COMFY_PREFIX) else key
        if k.startswith("norm_final."):
            return []
        if k.startswith("x_embedder."):
            k = f"all_x_embedder.{patch_key}." + k[len("x_embedder."):]
        elif k.startswith("final_layer."):
            k = f"all_final_layer.{patch_key}." + k[len("final_layer."):]
        if ".attention." in k:
            head, leaf = k.split(".attention.", 1)
            if leaf == "qkv.weight" and shape and shape[0] % 3 == 0:
                n = shape[0] // 3
                return [Target(f"{head}.attention.to_{c}.weight", rows=(i * n, (i + 1) * n))
                        for i, c in enumerate("qkv")]
            leaf = _COMFY_ATTN.get(leaf, leaf)
            k = f"{head}.attention.{leaf}"
        return [Target(k)]

    return key_map


def comfyui_transformer_inverse(state: dict[str, torch.Tensor], patch_key: str = "2-1",
                                prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """diffusers-named DiT state dict -> ComfyUI naming (fused qkv). For tests and converters."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if ".attention.to_k." in k or ".attention.to_v." in k:
            continue
        if ".attention.to_q.weight" in k:
            head = k.split(".attention.")[0]
            qkv = [state[f"{head}.attention.to_{c}.weight"] for c in "qkv"]
            out[f"{prefix}{head}.attention.qkv.weight"] = torch.cat(qkv, 0)
            continue
        n = k.replace(f"all_x_embedder.{patch_key}.", "x_embedder.")
        n = n.replace(f"all_final_layer.{patch_key}.", "final_layer.")
        n = n.replace(".attention.to_out.0.", ".attention.out.")
        n = n.replace(".attention.norm_q.", ".attention.q_norm.")
        n = n.replace(".attention.norm_k.", ".attention.k_norm.")
        out[prefix + n] = v
    return out


_BFL_PREFIXES = ("first_stage_model.", "vae.")
_BFL_RESNET = {"nin_shortcut": "conv_shortcut"}
_BFL_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def bfl_vae_key_map(num_up_blocks: int = 4) -> KeyMap:
    """BFL/LDM VAE names (FLUX `ae.safetensors`) -> diffusers AutoencoderKL names.

    encoder.down.i.block.j -> encoder.down_blocks.i.resnets.j; down.i.downsample ->
    downsamplers.0; mid.block_1/2 -> mid_block.resnets.0/1; mid.attn_1.{norm,q,k,v,proj_out} ->
    mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} (1x1 conv weights -> linear);
    decoder.up.i -> decoder.up_blocks.(n-1-i) (reversed order), upsample -> upsamplers.0;
    norm_out -> conv_norm_out; nin_shortcut -> conv_shortcut. Prefixes first_stage_model./vae.
    are stripped.
    """
    rx_block = re.compile(
        r"^(encoder|decoder)\.(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)$")
    rx_mid = re.compile(r"^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)$")

    def key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
        k = key
        for p in _BFL_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        m = rx_block.match(k)
        if m:
            part, direction, i, kind, rest = m.groups()
            i = int(i)
            if direction == "up":
                i = num_up_blocks - 1 - i
            blocks = "down_blocks" if direction == "down" else "up_blocks"
            if kind == "block":
                j, leaf = rest.split(".", 1)
                sub, wb = leaf.rsplit(".", 1)
                sub = _BFL_RESNET.get(sub, sub)
                return [Target(f"{part}.{blocks}.{i}.resnets.{j}.{sub}.{wb}")]
            sampler = "downsamplers" if kind == "downsample" else "upsamplers"
            return [Target(f"{part}.{blocks}.{i}.{sampler}.0.{rest}")]
        m = rx_mid.match(k)
        if m:
            part, sub, leaf, wb = m.groups()
            if sub.startswith("block_"):
                return [Target(f"{part}.mid_block.resnets.{int(sub[-1]) - 1}.{leaf}.{wb}")]
            name = f"{part}.mid_block.attentions.0.{_BFL_ATTN.get(leaf, leaf)}.{wb}"
            return [Target(name, squeeze=(wb == "weight" and leaf != "norm"))]
        m = re.match(r"^(encoder|decoder)\.norm_out\.(weight|bias)$", k)
        if m:
            return [Target(f"{m.group(1)}.conv_norm_out.{m.group(2)}")]
        return [Target(k)]

    return key_map


def bfl_vae_inverse(state: dict[str, torch.Tensor],
                    num_up_blocks: int = 4) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> BFL naming (attention as 1x1 convs). For tests."""
    inv_attn = {v: k for k, v in _BFL_ATTN.items()}
    out = {}
    for k, v in state.items():
        n = k
        m = re.match(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(.*)$", n)
        if m:
            part, direction, i, rest = m.groups()
            i = int(i)
            if direction == "up":
                i = num_up_blocks - 1 - i
            rest = re.sub(r"^resnets\.", "block.", rest)
            rest = re.sub(r"^(down|up)samplers\.0\.", lambda mm: f"{mm.group(1)}sample.", rest)
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            n = f"{part}.{direction}.{i}.{rest}"
        m = re.match(
            r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)\.(weight|bias)$", n)
        if m:
            part, kind, i, leaf, wb = m.groups()
            if kind == "resnets":
                n = f"{part}.mid.block_{int(i) + 1}.{leaf}.{wb}"
            else:
                n = f"{part}.mid.attn_1.{inv_attn[leaf]}.{wb}"
                if wb == "weight" and leaf != "group_norm":
                    v = v[:, :, None, None]
        n = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", n)
        out[n] = v
    return out


def qwen3_key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
    """Qwen3 causal-LM file (`model.layers.N...`, optional `lm_head`) -> transformers Qwen3Model."""
    if key == "lm_head.weight":
        return []  # tied to embed_tokens in Qwen3-4B; a text encoder has no LM head
    return [Target(key[len("model."):] if key.startswith("model.") else key)]


# ComfyUI all-in-one checkpoints (models/checkpoints/*.safetensors) hold the three parts under
# these prefixes, each in ComfyUI's own naming (fused-qkv DiT, Qwen3 causal LM, BFL VAE).
CHECKPOINT_PREFIXES = {"transformer": COMFY_PREFIX,
                       "text_encoder": re.compile(r"^text_encoders\.[^.]+\.transformer\."),
                       "vae": "vae."}


def checkpoint_prefix(component: str, key: str) -> str | None:
    """The all-in-one prefix of `key` if it belongs to `component`, else None."""
    prefix = CHECKPOINT_PREFIXES[component]
    if isinstance(prefix, str):
        return prefix if key.startswith(prefix) else None
    m = prefix.match(key)
    return m.group(0) if m else None


def checkpoint_key_map(component: str, inner: KeyMap) -> KeyMap:
    """One part of an all-in-one checkpoint: its tensors (prefix stripped) through `inner`, every
    other part's tensors dropped."""

    def key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
        prefix = checkpoint_prefix(component, key)
        if prefix is None:
            return []
        return list(inner(key[len(prefix):], shape))

    return key_map


def _count_up_blocks(module: torch.nn.Module) -> int:
    ids = {int(m.group(1)) for k in module.state_dict()
           if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))}
    return len(ids) or 4


def key_map_for(name: str, module: torch.nn.Module | None = None) -> KeyMap:
    """A key map by name (what `ModelSource.key_maps` carries), adapted to `module`."""
    if name == "comfyui-transformer":
        return comfyui_transformer_key_map()
    if name == "bfl-vae":
        return bfl_vae_key_map(_count_up_blocks(module) if module is not None else 4)
    if name == "qwen3":
        return qwen3_key_map
    if name in ("", "diffusers", "identity"):
        return identity_key_map
    if name.startswith("checkpoint:"):  # "checkpoint:<component>:<key map of that part>"
        _, component, inner = name.split(":", 2)
        if component in CHECKPOINT_PREFIXES:
            return checkpoint_key_map(component, key_map_for(inner, module))
    raise ValueError(f"unknown key map {name!r}; known: {sorted(KEY_MAPS)}")


KEY_MAPS = ("comfyui-transformer", "bfl-vae", "qwen3", "identity",
            "checkpoint:<transformer|text_encoder|vae>:<one of the above>")
