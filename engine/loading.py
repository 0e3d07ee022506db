"""Build a ZImagePipeline from a resolved model source: modules on the meta device, then every
tensor straight from its safetensors file into its final dtype and device (engine.weights)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from engine import devices
from engine.config import SchedulerParams, TransformerParams, VaeParams
from engine.errors import EngineError
from engine.model.controlnet import ZImageControlNet
from engine.model.transformer import ZImageTransformer
from engine.model.vae import AutoEncoder
from engine.pipeline import ZImagePipeline
from engine.text_encoder import TextEncoder
from engine.weights import Target, load_safetensors_into, meta_tensors, read_header

log = logging.getLogger(__name__)


def read_params(cls, config: Path):
    """A params dataclass from a config.json; a config this engine cannot run is a clear error."""
    try:
        return cls.from_json(config)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise EngineError("model_unavailable", f"{config} is not a Z-Image-Turbo config this "
                          f"engine can run: {e}") from None


def load_transformer(config: Path, files, *, dtype, device, key_map=None) -> ZImageTransformer:
    with torch.device("meta"):
        model = ZImageTransformer(read_params(TransformerParams, config))
    load_safetensors_into(model, files, dtype=dtype, device=device, key_map=key_map)
    return model.eval().requires_grad_(False)


def load_vae(config: Path, files, *, dtype, device, key_map=None) -> AutoEncoder:
    with torch.device("meta"):
        model = AutoEncoder(read_params(VaeParams, config))
    load_safetensors_into(model, files, dtype=dtype, device=device, key_map=key_map or "identity")
    return model.eval().requires_grad_(False)


# The ControlNet (Z-Image-Turbo-Fun-Controlnet-Union): one released .safetensors file, its
# version told by its structure (engine/model/controlnet.py)

CONTROL_EMBED_KEY = "control_all_x_embedder.{}.weight"


CONTROL_EMBED_KEY = "control_all_x_embedder.{}.weight"


def inspect_controlnet(path: str | Path, p: TransformerParams) -> dict:
    """Read a ControlNet file's header (and one small tensor) and describe it:
    {version, control_in_dim, n_control_layers, drop_refiner}. Raises EngineError
    (model_unavailable, field "controlnet") when the file is not a Z-Image ControlNet Union or
    does not fit the base model."""
    path = Path(path)

    def unavailable(message: str) -> EngineError:
        return EngineError("model_unavailable", f"ControlNet {path}: {message}",
                           field="controlnet")

    if not path.is_file():
        raise unavailable("file not found (give the .safetensors file of "
                          "Z-Image-Turbo-Fun-Controlnet-Union)")
    header = read_header(path)
    embed = header.get(CONTROL_EMBED_KEY.format(p.patch_key))
    if embed is None:
        raise unavailable("not a Z-Image ControlNet Union file "
                          f"(no {CONTROL_EMBED_KEY.format(p.patch_key)})")
    dim, patch_in = embed[1]
    if dim != p.dim:
        raise unavailable(f"made for a transformer of width {dim}, but the loaded model has "
                          f"{p.dim}")
    per_patch = p.f_patch_size * p.patch_size * p.patch_size
    control_in_dim = patch_in // per_patch
    layers = sorted({int(m.group(1)) for k in header
                     if (m := re.match(r"control_layers\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))) or len(layers) > p.n_layers:
        raise unavailable(f"unexpected control layers {layers[:8]} for a {p.n_layers}-layer model")
    refiner = sorted({int(m.group(1)) for k in header
                      if (m := re.match(r"control_noise_refiner\.(\d+)\.", k))})
    before = "control_noise_refiner.0.before_proj.weight"
    if before in header:
        with safe_open(str(path), framework="pt") as f:
            zero = bool(torch.all(f.get_tensor(before) == 0))
        version = "2.0" if zero else "2.1"
    elif "control_noise_refiner.0.after_proj.weight" in header or not refiner:
        version = "2.0"
    else:
        version = "1.0"
    if version != "2.0" and refiner != list(range(p.n_refiner_layers)):
        raise unavailable(f"{len(refiner)} control refiner blocks, the model has "
                          f"{p.n_refiner_layers} refiner layers")
    return {"version": version, "control_in_dim": control_in_dim,
            "n_control_layers": len(layers), "drop_refiner": version == "2.0" and bool(refiner)}


def load_controlnet(path: str | Path, transformer: ZImageTransformer, *, dtype: torch.dtype,
                    device: torch.device | str,
                    layers_places: list[int] | None = None) -> ZImageControlNet:
    p = transformer.params
    info = inspect_controlnet(path, p)
    with torch.device("meta"):
        model = ZImageControlNet(p, control_in_dim=info["control_in_dim"],
                                 n_control_layers=info["n_control_layers"],
                                 version=info["version"], layers_places=layers_places)

    def key_map(key: str, shape: tuple[int, ...]) -> list[Target]:
        if info["drop_refiner"] and key.startswith("control_noise_refiner."):
            return []
        return [Target(key)]

    load_safetensors_into(model, path, dtype=dtype, device=device, key_map=key_map)
    return model.eval().requires_grad_(False)


def load_qwen3(config_json: Path, files, *, dtype, device, key_map="qwen3"):
    """transformers' Qwen3Model with our strict loader (any Qwen3 file naming, no LM head)."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config.from_json_file(str(config_json))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Qwen3Model(config)
    load_safetensors_into(model, files, dtype=dtype, device=device, key_map=key_map)
    # The rotary table is a non-persistent buffer, so it is not in the files: rebuild it.
    with torch.device("cpu"):
        model.rotary_emb = type(model.rotary_emb)(config).to(device)
    left = meta_tensors(model)
    if left:
        raise EngineError("model_unavailable", f"text encoder tensors were never loaded: {left[:5]}")
    return model.eval().requires_grad_(False)


def load_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as e:
        raise EngineError("model_unavailable",
                          f"the tokenizer in {tokenizer_dir} could not be read ({e})") from None
    if tokenizer.padding_side != "right":
        tokenizer.padding_side = "right"
    return tokenizer


def load_pipeline(model: str, *, device: str = "auto", dtype: str = "auto",
                  tokenizer: str | None = None, cache_size: int = 32, memory: str = "auto",
                  compile: bool | None = None, fp8: bool | None = None,
                  controlnet: str | None = None) -> ZImagePipeline:
    """memory: auto | max | 16gb | 12gb | 8gb (engine/memory.py); compile: None = on for CUDA;
    fp8: None = the memory mode decides; controlnet: path of a Z-Image-Turbo-Fun-Controlnet-Union
    single .safetensors file (2.1, lite, 2.0 or 1.0), enabling the control.* capabilities."""
    from engine import compile as compiling
    from engine import memory as memory_modes
    from engine.sources import resolve_model

    dev = devices.pick_device(device)
    dt = devices.pick_dtype(dtype, dev)
    plan = memory_modes.choose_plan(memory, dev, fp8=fp8)
    src = resolve_model(model, tokenizer=tokenizer)
    try:
        transformer = load_transformer(src.transformer_config, src.transformer_files, dtype=dt,
                                       device=plan.load_device("transformer", dev),
                                       key_map=src.key_maps.get("transformer"))
        vae = load_vae(src.vae_config, src.vae_files, dtype=dt, device=dev,
                       key_map=src.key_maps.get("vae"))
        text_model = load_qwen3(src.text_encoder_config, src.text_encoder_files, dtype=dt,
                                device=plan.load_device("text_encoder", dev),
                                key_map=src.key_maps.get("text_encoder", "qwen3"))
        control_model = None
        if controlnet:
            control_model = load_controlnet(controlnet, transformer, dtype=dt, device=dev)
    except torch.OutOfMemoryError:
        devices.empty_cache(dev)
        raise EngineError("out_of_memory", f"the model does not fit in {dev}'s memory in "
                          f"{str(dt).removeprefix('torch.')}; try a lower --memory mode") from None
    tokenizer = load_tokenizer(src.tokenizer_dir)
    shift = read_params(SchedulerParams, src.scheduler_config).shift
    pipe = ZImagePipeline(transformer, vae, TextEncoder(tokenizer, text_model, cache_size),
                          shift=shift, device=dev, dtype=dt, model_id=src.name,
                          controlnet=control_model)
    try:
        memory_modes.apply_plan(pipe, plan, dev)
    except torch.OutOfMemoryError:
        devices.empty_cache(dev)
        raise memory_modes.oom_error(plan, 1024, 1024, 1, memory_modes.free_bytes(dev)) from None
    if compiling.should_compile(compile, dev):
        compiling.compile_pipeline(pipe)
        pipe.compile_seconds = compiling.warm_up(pipe)
        log.info("compiled and warmed up at 1024x1024 in %.1f s", pipe.compile_seconds)
    return pipe
