"""Build a ZImagePipeline from a resolved model source: modules on the meta device, then every
tensor straight from its safetensors file into its final dtype and device (engine.weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine import devices
from engine.config import SchedulerParams, TransformerParams, VaeParams
from engine.errors import EngineError
from engine.model.transformer import ZImageTransformer
from engine.model.vae import AutoEncoder
from engine.pipeline import ZImagePipeline
from engine.text_encoder import TextEncoder
from engine.weights import load_safetensors_into, meta_tensors

log = logging.getLogger(__name__)


def load_transformer(config: Path, files, *, dtype, device, key_map=None) -> ZImageTransformer:
    with torch.device("meta"):
        model = ZImageTransformer(TransformerParams.from_json(config))
    load_safetensors_into(model, files, dtype=dtype, device=device, key_map=key_map)
    return model.eval().requires_grad_(False)


def load_vae(config: Path, files, *, dtype, device, key_map=None) -> AutoEncoder:
    with torch.device("meta"):
        model = AutoEncoder(VaeParams.from_json(config))
    load_safetensors_into(model, files, dtype=dtype, device=device, key_map=key_map or "identity")
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
                  tokenizer: str | None = None, cache_size: int = 32) -> ZImagePipeline:
    from engine.sources import resolve_model

    dev = devices.pick_device(device)
    dt = devices.pick_dtype(dtype, dev)
    src = resolve_model(model, tokenizer=tokenizer)
    try:
        transformer = load_transformer(src.transformer_config, src.transformer_files, dtype=dt,
                                       device=dev, key_map=src.key_maps.get("transformer"))
        vae = load_vae(src.vae_config, src.vae_files, dtype=dt, device=dev,
                       key_map=src.key_maps.get("vae"))
        text_model = load_qwen3(src.text_encoder_config, src.text_encoder_files, dtype=dt,
                                device=dev, key_map=src.key_maps.get("text_encoder", "qwen3"))
    except torch.OutOfMemoryError:
        devices.empty_cache(dev)
        raise EngineError("out_of_memory", f"the model does not fit in {dev}'s memory in "
                          f"{str(dt).removeprefix('torch.')}; try a lower --memory mode") from None
    tokenizer = load_tokenizer(src.tokenizer_dir)
    shift = SchedulerParams.from_json(src.scheduler_config).shift
    return ZImagePipeline(transformer, vae, TextEncoder(tokenizer, text_model, cache_size),
                          shift=shift, device=dev, dtype=dt, model_id=src.name)
