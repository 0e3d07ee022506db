"""Resolve `--model` to files: an official folder, a Hugging Face repo id, ComfyUI split files or a
ComfyUI all-in-one checkpoint (DiT + Qwen3 + VAE in one file, recognised by its key prefixes).

    source = resolve_model("Tongyi-MAI/Z-Image-Turbo")      # cache first, then download
    source = resolve_model("/models/Z-Image-Turbo")         # a folder in the official layout
    source = resolve_model("ComfyUI/models/diffusion_models/z_image_turbo_bf16.safetensors")
    source = resolve_model("ComfyUI/models/checkpoints/z_image_turbo_aio.safetensors")
    load_safetensors_into(dit, source.transformer_files, dtype=..., device=...,
                          key_map=source.key_maps["transformer"])

Every failure is an EngineError("model_unavailable") that says what is missing and what to do.
Nothing here loads tensors; only safetensors headers are read (to recognise key naming).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from engine.errors import EngineError
from engine.weights import checkpoint_prefix, read_header, read_index

log = logging.getLogger(__name__)

DEFAULT_REPO = "Tongyi-MAI/Z-Image-Turbo"
CONFIG_DIR = Path(__file__).parent / "configs" / "z-image-turbo"
CODE = "model_unavailable"

COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
# Approximate download sizes of the real repo (transformer stored in float32, Qwen3 and the VAE in
# bf16). ComfyUI's vae/ae.safetensors is the same VAE in float32: 0.3 GB.
APPROX_SIZE_GB = {"transformer": 24.6, "text_encoder": 8.0, "vae": 0.17, "tokenizer": 0.011,
                  "scheduler": 0.0}
COMFY_VAE_GB = 0.3
APPROX_TOTAL = "about 33 GB"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
HUB_PATTERNS = ["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*",
                "transformer/*", "vae/*"]
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSource:
    """Where each part of the model lives. `*_files` go straight to weights.load_safetensors_into
    (an index json, or the .safetensors files) with `key_maps[component]` (a weights.key_map_for
    name: "identity", "comfyui-transformer", "bfl-vae", "qwen3", or "checkpoint:<part>:<map>" for
    one part of an all-in-one file)."""

    kind: str  # "folder" | "hub" | "comfyui" | "checkpoint" (ComfyUI all-in-one file)
    name: str  # what to show the user: repo id, folder or file name
    root: Path  # the model folder / hub snapshot / the ComfyUI models folder (or the file's folder)
    transformer_files: tuple[Path, ...]
    text_encoder_files: tuple[Path, ...]
    vae_files: tuple[Path, ...]
    tokenizer_dir: Path
    transformer_config: Path  # diffusers config.json: TransformerParams.from_json
    vae_config: Path  # VaeParams.from_json
    scheduler_config: Path  # SchedulerParams.from_json
    text_encoder_config: Path  # transformers Qwen3Config json (AutoConfig.from_pretrained takes it)
    text_encoder_dir: Path | None = None  # a transformers folder (from_pretrained), if there is one
    vae_used: Path | None = None  # ComfyUI modes: the VAE file picked (named in logs and errors)
    key_maps: Mapping[str, str] = field(default_factory=lambda: {
        "transformer": "identity", "text_encoder": "qwen3", "vae": "identity"})

    @property
    def model_id(self) -> str:
        return self.name


def _err(message: str) -> EngineError:
    return EngineError(CODE, message)


# --------------------------------------------------------------------------------------------
# (a) a folder in the official layout

def _weights_in(folder: Path, missing: list[str]) -> tuple[Path, ...]:
    """The index json (its shards checked) or the .safetensors files of a component folder."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            read_index(indexes[0])
        except EngineError:
            shards = _listed_shards(indexes[0])
            missing += [str(p) for p in shards if not p.is_file()] or [f"{indexes[0]} (unreadable)"]
        return (indexes[0],)
    files = tuple(sorted(folder.glob("*.safetensors")))
    if not files:
        has_bin = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
        missing.append(f"{folder}/*.safetensors" + (" (only pickle .bin/.pt weights are there; "
                                                     "this engine loads safetensors only)"
                                                     if has_bin else ""))
    return files


def _listed_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted({index.parent / f for f in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def check_folder(root: Path) -> tuple[dict, list[str]]:
    """(parts, missing) for a folder in the official layout; missing lists paths."""
    missing: list[str] = []
    need = lambda p: p if p.exists() else missing.append(str(p))  # noqa: E731
    need(root / "model_index.json")
    parts: dict = {}
    for comp in ("transformer", "vae"):
        need(root / comp / "config.json")
        parts[comp] = _weights_in(root / comp, missing) if (root / comp).is_dir() else ()
        if not (root / comp).is_dir():
            missing.append(f"{root / comp}/ (diffusion_pytorch_model*.safetensors)")
    need(root / "text_encoder" / "config.json")
    te = root / "text_encoder"
    parts["text_encoder"] = _weights_in(te, missing) if te.is_dir() else ()
    if not te.is_dir():
        missing.append(f"{te}/ (model*.safetensors)")
    need(root / "scheduler" / "scheduler_config.json")
    tok = root / "tokenizer"
    if not (tok / "tokenizer.json").exists() and not (
            (tok / "vocab.json").exists() and (tok / "merges.txt").exists()):
        missing.append(f"{tok}/tokenizer.json")
    need(tok / "tokenizer_config.json")
    return parts, missing


def _missing_message(what: str, missing: list[str]) -> str:
    shown = "\n  ".join(missing[:12]) + (f"\n  ... and {len(missing) - 12} more"
                                         if len(missing) > 12 else "")
    return f"{what} is incomplete; missing:\n  {shown}"


def _check_model_type(root: Path) -> None:
    """Refuse other diffusers pipelines early, before any shape errors could confuse the user."""
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
        cls = index.get("_class_name", "")
        transformer = json.loads((root / "transformer" / "config.json").read_text("utf-8"))
    except (OSError, ValueError, AttributeError) as e:
        raise _err(f"{root}: model_index.json or transformer/config.json is unreadable ({e})")
    t_cls = transformer.get("_class_name", "ZImageTransformer2DModel")
    if not str(cls).startswith("ZImage") or t_cls != "ZImageTransformer2DModel":
        raise _err(f"{root} holds a {cls or 'unknown'} model ({t_cls}), not Z-Image; this engine "
                   f"runs Z-Image-Turbo ({DEFAULT_REPO}).")


def resolve_folder(root: Path, *, kind: str = "folder", name: str | None = None) -> ModelSource:
    parts, missing = check_folder(root)
    if missing:
        raise _err(_missing_message(f"the model folder {root}", missing)
                   + "\nIt must have the layout of the Hugging Face repo " + DEFAULT_REPO
                   + " (model_index.json, scheduler/, text_encoder/, tokenizer/, transformer/,"
                   " vae/).")
    _check_model_type(root)
    return ModelSource(
        kind=kind, name=name or str(root), root=root,
        transformer_files=parts["transformer"], text_encoder_files=parts["text_encoder"],
        vae_files=parts["vae"], tokenizer_dir=root / "tokenizer",
        transformer_config=root / "transformer" / "config.json",
        vae_config=root / "vae" / "config.json",
        scheduler_config=root / "scheduler" / "scheduler_config.json",
        text_encoder_config=root / "text_encoder" / "config.json",
        text_encoder_dir=root / "text_encoder",
        # Qwen3 files come with or without the causal LM's "model." prefix; qwen3 takes both.
        key_maps={"transformer": "identity", "text_encoder": "qwen3", "vae": "identity"},
    )


# --------------------------------------------------------------------------------------------
# (b) a Hugging Face repo id

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """False at once when HF_HUB_OFFLINE is set; else a TCP connect to the hub (or the proxy)."""
    from huggingface_hub import constants

    if _env_true("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE:
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else endpoint)
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_snapshot(repo_id: str, cache_dir: Path | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def _cache_location(cache_dir: Path | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _size_hint(repo_id: str, missing_components: set[str]) -> str:
    if repo_id != DEFAULT_REPO:
        return "The download size is unknown for this repo."
    if not missing_components or missing_components >= {"transformer", "text_encoder"}:
        return (f"The download is {APPROX_TOTAL} (transformer ~24.6 GB, text encoder ~8.0 GB, "
                "VAE ~0.17 GB, tokenizer ~11 MB; approximate).")
    parts = ", ".join(f"{c} ~{APPROX_SIZE_GB[c]:g} GB" for c in sorted(missing_components))
    return f"Still to download (approximate): {parts}."


def resolve_hub(repo_id: str, *, cache_dir: str | Path | None = None, allow_download: bool = True,
                reachable: Callable[[], bool] = hub_reachable) -> ModelSource:
    cache_dir = Path(cache_dir) if cache_dir else None
    snapshot = _cached_snapshot(repo_id, cache_dir)
    missing: list[str] = ["everything (nothing of this repo is in the cache)"]
    if snapshot is not None:
        _parts, missing = check_folder(snapshot)
        if not missing:
            return resolve_folder(snapshot, kind="hub", name=repo_id)
    if snapshot is None:
        missing_components = set(COMPONENTS)
    else:
        missing_components = {c for c in COMPONENTS for m in missing
                              if m.startswith(str(snapshot / c))}
    if not allow_download or not reachable():
        why = ("downloads are off" if not allow_download else
               "the Hugging Face hub cannot be reached (offline"
               + (", HF_HUB_OFFLINE is set" if _env_true("HF_HUB_OFFLINE") else "") + ")")
        what = [m.replace(str(snapshot) + "/", "") if snapshot else m for m in missing]
        raise _err(
            f"the model {repo_id} is not in the local Hugging Face cache "
            f"({_cache_location(cache_dir)}) and {why}. Missing: {', '.join(what[:8])}"
            + (f" ... and {len(what) - 8} more" if len(what) > 8 else "") + ". "
            + _size_hint(repo_id, missing_components)
            + " Connect to the internet to download it once, or pass --model PATH to use a local "
              "folder (the official layout) or a ComfyUI diffusion-model .safetensors file.")
    from engine import download_progress

    try:  # reports bytes per file to download_progress's listeners (CLI, server)
        path = download_progress.download(repo_id, allow_patterns=HUB_PATTERNS,
                                          cache_dir=cache_dir)
    except Exception as e:  # network errors, 404, disk full, auth: all end the same way for a user
        raise _err(f"downloading {repo_id} from the Hugging Face hub failed: "
                   f"{type(e).__name__}: {e}. Pass --model PATH to use a local folder.") from None
    return resolve_folder(path, kind="hub", name=repo_id)


# --------------------------------------------------------------------------------------------
# (c) ComfyUI split files

COMFY_DIT_DIRS = ("diffusion_models", "unet", "checkpoints")
COMFY_TE_DIRS = ("text_encoders", "clip")
COMFY_VAE_DIRS = ("vae",)
FLUX_VAE_NAME = "ae.safetensors"  # Comfy-Org's name for the FLUX VAE that Z-Image uses
LATENT_CHANNELS = 16


def _is_zimage_dit(keys: set[str]) -> str | None:
    """Key-map name for a Z-Image DiT file, None if it is not one."""
    for prefix in ("model.diffusion_model.", ""):
        if f"{prefix}layers.0.adaLN_modulation.0.weight" in keys and (
                f"{prefix}cap_pad_token" in keys or f"{prefix}x_pad_token" in keys):
            if f"{prefix}all_x_embedder.2-1.weight" in keys and not prefix:
                return "identity"
            return "comfyui-transformer"
    return None


def checkpoint_parts(keys: set[str]) -> set[str]:
    """The parts of a ComfyUI all-in-one checkpoint that a file holds besides its DiT
    ("text_encoder", "vae"); empty for a plain diffusion-model file."""
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return set()
    return {part for part in ("text_encoder", "vae")
            if any(checkpoint_prefix(part, k) for k in keys)}


def _header_keys(path: Path) -> set[str]:
    return set(read_header(path))


def _looks_like_vae(path: Path) -> bool:
    try:
        return any(k.startswith(("decoder.", "first_stage_model.decoder.", "vae.decoder."))
                   for k in _header_keys(path))
    except EngineError:
        return False


def flux_vae_problem(header: dict[str, tuple[str, tuple[int, ...]]], prefix: str = "") -> str:
    """Why a safetensors header is not a FLUX-layout image VAE with 16 latent channels, or ""
    when it is. The checks read shapes only: 2-D convs (video VAEs such as Wan 2.1 and
    Qwen-Image's have 5-D weights), a 16-channel latent in and out, no quant convs."""
    def shape(name: str) -> tuple[int, ...] | None:
        entry = header.get(prefix + name)
        return tuple(entry[1]) if entry else None

    conv_in, conv_out = shape("decoder.conv_in.weight"), shape("encoder.conv_out.weight")
    if conv_in is None or conv_out is None:
        return "no decoder.conv_in / encoder.conv_out tensors (not a FLUX-layout VAE)"
    if len(conv_in) != 4 or len(conv_out) != 4:
        return f"{len(conv_in) - 2}-D convolutions (a video or audio VAE, not FLUX's 2-D one)"
    if conv_in[1] != LATENT_CHANNELS or conv_out[0] != 2 * LATENT_CHANNELS:
        return (f"{conv_in[1]} latent channels (Z-Image uses the FLUX VAE's "
                f"{LATENT_CHANNELS})")
    if shape("quant_conv.weight") is not None or shape("post_quant_conv.weight") is not None:
        return "quant convs (an SD-style VAE, not FLUX's)"
    return ""


def _vae_key_map(path: Path, prefix: str = "") -> str:
    keys = {k[len(prefix):] for k in _header_keys(path) if k.startswith(prefix)}
    if any(k.startswith("decoder.up_blocks.") for k in keys):
        return "identity"
    if any(".up.0.block." in k or k.startswith("decoder.up.") for k in keys):
        return "bfl-vae"
    raise _err(f"{path} does not look like a FLUX/Z-Image VAE (no decoder.up.* or "
               "decoder.up_blocks.* tensors).")


def pick_vae(candidates: list[Path]) -> tuple[Path | None, list[Path]]:
    """(the FLUX VAE to use, the candidates skipped as not one). The exact name ae.safetensors
    first, then names that say flux / z_image, then the rest; each checked by its tensors."""
    def rank(p: Path) -> tuple:
        n = p.name.lower()
        return (n != FLUX_VAE_NAME, not any(s in n for s in ("flux", "z_image", "zimage")), n)

    skipped = []
    for p in sorted(candidates, key=rank):
        try:
            why = flux_vae_problem(read_header(p))
        except EngineError as e:
            why = e.message
        if not why:
            return p, skipped
        log.info("not using %s as the VAE: %s", p, why)
        skipped.append(p)
    return None, skipped


def _check_unquantised(path: Path, what: str) -> None:
    keys = _header_keys(path)
    scales = [k for k in keys if k.endswith(("scale_weight", "weight_scale", "scale_input",
                                             "input_scale", "comfy_quant"))]
    if scales or "scaled_fp8" in keys:
        raise _err(f"{path} is a scaled/quantised {what} file ({len(scales)} scale tensors, e.g. "
                   f"{sorted(scales)[:2]}); this engine loads bf16/fp16/fp32 files. Use the bf16 "
                   "file (e.g. qwen_3_4b.safetensors / z_image_turbo_bf16.safetensors).")


def _pick(candidates: list[Path], prefer: tuple[str, ...],
          avoid: tuple[str, ...] = ()) -> Path | None:
    if not candidates:
        return None

    def rank(p: Path) -> tuple:
        n = p.name.lower()
        return (any(a in n for a in avoid), next((i for i, s in enumerate(prefer) if s in n),
                                                  len(prefer)), n)

    return sorted(candidates, key=rank)[0]


def _comfy_models_dir(dit: Path) -> Path:
    parent = dit.parent
    if parent.name in COMFY_DIT_DIRS:
        return parent.parent
    if parent.parent.name in COMFY_DIT_DIRS:  # models/diffusion_models/<subfolder>/file
        return parent.parent.parent
    return parent


def _find(models: Path, beside: Path, dirs: tuple[str, ...], pattern: str) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        if (models / d).is_dir():
            found += sorted((models / d).rglob(pattern))
    if not found:
        found = sorted(beside.glob(pattern))
    return found


def find_tokenizer(tokenizer: str | Path | None, *, repo_id: str = DEFAULT_REPO,
                   cache_dir: str | Path | None = None, allow_download: bool = True,
                   reachable: Callable[[], bool] = hub_reachable) -> Path:
    """--tokenizer PATH, else tokenizer/ of the HF repo from the cache, else download (11 MB)."""
    if tokenizer is not None:
        p = Path(tokenizer).expanduser()
        if p.is_dir() and (p / "tokenizer" / "tokenizer.json").exists():
            p = p / "tokenizer"
        if not (p / "tokenizer.json").exists() and not (p / "vocab.json").exists():
            raise _err(f"--tokenizer {p}: no tokenizer.json there; give the tokenizer/ folder of "
                       f"{repo_id}.")
        return p
    from huggingface_hub import snapshot_download

    cache_dir = Path(cache_dir) if cache_dir else None
    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=["tokenizer/*"],
                                      local_files_only=True, cache_dir=cache_dir))
        if all((snap / "tokenizer" / f).exists()
               for f in ("tokenizer.json", "tokenizer_config.json")):
            return snap / "tokenizer"
    except Exception:  # not cached
        pass
    if allow_download and reachable():
        try:
            snap = Path(snapshot_download(repo_id, allow_patterns=["tokenizer/*"],
                                          cache_dir=cache_dir))
            return snap / "tokenizer"
        except Exception as e:
            raise _err(f"downloading the tokenizer of {repo_id} failed ({type(e).__name__}: {e}); "
                       "pass --tokenizer PATH (the tokenizer/ folder of that repo).") from None
    raise _err(f"ComfyUI files carry no tokenizer, and the tokenizer of {repo_id} (tokenizer/, "
               f"about 11 MB) is not in the Hugging Face cache ({_cache_location(cache_dir)}) and "
               "the hub cannot be reached. Connect once to fetch it, or pass --tokenizer PATH "
               "(a copy of the tokenizer/ folder of that repo).")


def resolve_comfyui(path: Path, *, tokenizer: str | Path | None = None,
                    text_encoder: str | Path | None = None, vae: str | Path | None = None,
                    cache_dir: str | Path | None = None, allow_download: bool = True,
                    reachable: Callable[[], bool] = hub_reachable) -> ModelSource:
    """A ComfyUI diffusion-model file (or a ComfyUI models/ folder) + qwen_3_4b + ae beside it."""
    if path.is_dir():
        models = path
        cands = [p for d in COMFY_DIT_DIRS if (path / d).is_dir()
                 for p in sorted((path / d).rglob("*.safetensors"))]
        cands = [p for p in cands if _is_zimage_dit(_header_keys(p))]
        if not cands:
            raise _err(f"{path}: no Z-Image diffusion model in {'/ or '.join(COMFY_DIT_DIRS)}/ "
                       "(looked for .safetensors files with Z-Image tensor names).")
        dit = _pick(cands, ("z_image_turbo_bf16", "z_image_turbo", "z_image", "zimage"))
        if len(cands) > 1:
            others = [p.name for p in cands if p != dit]
            log.info("using %s (also found: %s)", dit.name, ", ".join(others))
    else:
        dit = path
        models = _comfy_models_dir(dit)
    dit_keys = _header_keys(dit)
    dit_map = _is_zimage_dit(dit_keys)
    if dit_map is None:
        raise _err(f"{dit} is not a Z-Image diffusion model (no layers.0.adaLN_modulation / pad "
                   "token tensors). Pass the z_image_turbo_*.safetensors file from "
                   "ComfyUI/models/diffusion_models.")
    _check_unquantised(dit, "diffusion-model")
    inside = checkpoint_parts(dit_keys)  # an all-in-one checkpoint: these parts are in the file
    key_maps = {"transformer": dit_map, "text_encoder": "qwen3"}
    if inside:
        key_maps["transformer"] = f"checkpoint:transformer:{dit_map}"

    missing, skipped = [], []
    if text_encoder is None and "text_encoder" in inside:
        te = dit
        key_maps["text_encoder"] = "checkpoint:text_encoder:qwen3"
    elif text_encoder is not None:
        te = Path(text_encoder).expanduser()
        if not te.is_file():
            raise _err(f"text encoder file {te} not found")
    else:
        te = _pick(_find(models, dit.parent, COMFY_TE_DIRS, "qwen_3_4b*.safetensors"),
                   ("qwen_3_4b.safetensors", "bf16"), avoid=("fp8", "fp4", "int8", "gguf"))
        if te is None:
            missing.append(f"the text encoder qwen_3_4b.safetensors (8.0 GB; looked in "
                           f"{models}/{{{','.join(COMFY_TE_DIRS)}}} and {dit.parent})")
    if vae is None and "vae" in inside:
        ae = dit
        problem = flux_vae_problem(read_header(dit), prefix="vae.")
        if problem:
            raise _err(f"the VAE inside {dit.name} is not the FLUX VAE Z-Image uses: {problem}.")
        key_maps["vae"] = f"checkpoint:vae:{_vae_key_map(dit, prefix='vae.')}"
    elif vae is not None:
        ae = Path(vae).expanduser()
        if not ae.is_file():
            raise _err(f"VAE file {ae} not found")
    else:
        cands = [p for p in _find(models, dit.parent, COMFY_VAE_DIRS, "*.safetensors")
                 if p != dit and _looks_like_vae(p)]
        ae, skipped = pick_vae(cands)
        if ae is not None:  # said louder when other VAEs were there: the pick was not obvious
            log.log(logging.WARNING if skipped else logging.INFO, "VAE: %s%s", ae,
                    f" (skipped, not a FLUX VAE: {', '.join(p.name for p in skipped)})"
                    if skipped else "")
        if ae is None:
            missing.append(f"the FLUX VAE ae.safetensors ({COMFY_VAE_GB:g} GB; looked in "
                           f"{models}/vae and {dit.parent}"
                           + (f"; skipped, not a FLUX VAE: {', '.join(p.name for p in skipped)}"
                              if skipped else "") + ")")
    if missing:
        raise _err(f"ComfyUI model {dit.name}: missing " + "; ".join(missing) + ". Put them in "
                   "ComfyUI's models/text_encoders and models/vae folders (Comfy-Org/z_image_turbo "
                   "split_files), or pass --model with an official folder or repo id.")
    _check_unquantised(te, "text-encoder")
    te_keys = _header_keys(te)
    if not any(k.endswith("layers.0.self_attn.q_norm.weight") for k in te_keys):
        raise _err(f"{te} is not a Qwen3 text encoder (no layers.0.self_attn.q_norm.weight).")
    tok = find_tokenizer(tokenizer, cache_dir=cache_dir, allow_download=allow_download,
                         reachable=reachable)
    key_maps.setdefault("vae", _vae_key_map(ae))
    return ModelSource(
        kind="checkpoint" if inside else "comfyui", name=dit.name, root=models,
        transformer_files=(dit,), text_encoder_files=(te,), vae_files=(ae,),
        tokenizer_dir=tok,
        transformer_config=CONFIG_DIR / "transformer.json",
        vae_config=CONFIG_DIR / "vae.json",
        scheduler_config=CONFIG_DIR / "scheduler.json",
        text_encoder_config=CONFIG_DIR / "text_encoder.json",
        text_encoder_dir=None,
        key_maps=key_maps, vae_used=ae,
    )


# --------------------------------------------------------------------------------------------

def looks_like_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))
            and all(c.isalnum() or c in "-_." for c in spec.replace("/", "")))


def resolve_model(spec: str | os.PathLike | None = None, *, tokenizer: str | Path | None = None,
                  text_encoder: str | Path | None = None, vae: str | Path | None = None,
                  cache_dir: str | Path | None = None, allow_download: bool = True,
                  reachable: Callable[[], bool] = hub_reachable) -> ModelSource:
    """`--model` -> ModelSource. spec: None (the default repo), a repo id, a folder in the
    official layout (or its model_index.json), a ComfyUI diffusion-model .safetensors file, or a
    ComfyUI models/ folder. tokenizer/text_encoder/vae override what ComfyUI mode finds."""
    spec = DEFAULT_REPO if spec is None or str(spec) == "" else spec
    p = Path(os.fspath(spec)).expanduser()
    if p.exists():
        if p.is_file() and p.name == "model_index.json":
            p = p.parent
        if p.is_dir() and (p / "model_index.json").exists():
            return resolve_folder(p.resolve())
        if p.is_file() and p.suffix == ".safetensors":
            return resolve_comfyui(p.resolve(), tokenizer=tokenizer, text_encoder=text_encoder,
                                   vae=vae, cache_dir=cache_dir, allow_download=allow_download,
                                   reachable=reachable)
        if p.is_dir() and any((p / d).is_dir() for d in COMFY_DIT_DIRS):
            return resolve_comfyui(p.resolve(), tokenizer=tokenizer, text_encoder=text_encoder,
                                   vae=vae, cache_dir=cache_dir, allow_download=allow_download,
                                   reachable=reachable)
        if p.is_dir():
            raise _err(f"{p} has no model_index.json: it is neither a model folder in the official "
                       f"layout ({DEFAULT_REPO}) nor a ComfyUI models folder (diffusion_models/).")
        raise _err(f"{p}: not a model folder or a .safetensors file")
    s = os.fspath(spec)
    if looks_like_repo_id(s):
        return resolve_hub(s, cache_dir=cache_dir, allow_download=allow_download,
                           reachable=reachable)
    raise _err(f"--model {s}: no such file or folder, and not a Hugging Face repo id "
               f"(like {DEFAULT_REPO}).")


resolve = resolve_model
