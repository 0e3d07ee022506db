"""engine.sources: official folders, the HF cache (offline, fast), ComfyUI split files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import sources
from engine.config import SchedulerParams, TransformerParams, VaeParams
from engine.errors import EngineError
from engine.sources import CONFIG_DIR, DEFAULT_REPO, hub_reachable, resolve_model
from engine.weights import bfl_vae_inverse, comfyui_transformer_inverse

never = lambda: False  # noqa: E731  (a hub that cannot be reached)


def expect_error(fn) -> str:
    with pytest.raises(EngineError) as info:
        fn()
    assert info.value.code == "model_unavailable"
    return info.value.message


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture
def model_copy(tmp_path, tiny_engine_model_dir) -> Path:
    dst = tmp_path / "Z-Image-Turbo"
    shutil.copytree(tiny_engine_model_dir, dst)
    return dst


# --------------------------------------------------------------------------------------------
# (a) folder

def test_official_folder(tiny_engine_model_dir):
    src = resolve_model(str(tiny_engine_model_dir))
    root = tiny_engine_model_dir.resolve()
    assert src.kind == "folder" and src.root == root and src.model_id == str(root)
    assert src.transformer_files == (
        root / "transformer" / "diffusion_pytorch_model.safetensors.index.json",)
    assert src.text_encoder_files == (root / "text_encoder" / "model.safetensors.index.json",)
    assert src.vae_files == (root / "vae" / "diffusion_pytorch_model.safetensors",)
    assert src.tokenizer_dir == root / "tokenizer"
    for p in (src.transformer_config, src.vae_config, src.scheduler_config,
              src.text_encoder_config):
        assert p.is_file()
    assert src.key_maps == {"transformer": "identity", "text_encoder": "qwen3", "vae": "identity"}
    assert resolve_model(tiny_engine_model_dir / "model_index.json").root == root


def test_incomplete_folder_lists_what_is_missing(model_copy):
    (model_copy / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    (model_copy / "vae" / "config.json").unlink()
    for f in ("tokenizer.json", "vocab.json"):
        (model_copy / "tokenizer" / f).unlink()
    shutil.rmtree(model_copy / "scheduler")
    msg = expect_error(lambda: resolve_model(model_copy))
    for part in ("diffusion_pytorch_model-00002-of-00002.safetensors", "vae/config.json",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert part in msg
    assert "text_encoder" not in msg.split("missing:")[1].split("It must")[0]


def test_pickle_only_weights_are_named(model_copy):
    for f in (model_copy / "vae").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    msg = expect_error(lambda: resolve_model(model_copy))
    assert "vae" in msg and "safetensors only" in msg


def test_unknown_paths(tmp_path):
    nowhere = str(tmp_path / "x" / "y" / "z")
    assert "no such file or folder" in expect_error(lambda: resolve_model(nowhere))
    assert "model_index.json" in expect_error(lambda: resolve_model(tmp_path))


# --------------------------------------------------------------------------------------------
# (b) repo id

def test_offline_repo_id_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    msg = expect_error(lambda: resolve_model(None, cache_dir=tmp_path))
    assert time.monotonic() - t0 < 5
    assert DEFAULT_REPO in msg and "33 GB" in msg and "--model PATH" in msg
    assert "HF_HUB_OFFLINE" in msg and str(tmp_path) in msg


def test_unreachable_hub_is_detected_fast(tmp_path, monkeypatch):
    """Not flagged offline, but nothing listens: the probe fails in well under the timeout."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for var in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.monotonic()
    assert hub_reachable(timeout=2) is False
    msg = expect_error(lambda: resolve_model("someone/some-model", cache_dir=tmp_path))
    assert time.monotonic() - t0 < 5
    assert "someone/some-model" in msg and "cannot be reached" in msg and "size is unknown" in msg


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path | None) -> Path:
    """The huggingface_hub cache layout: refs/main -> snapshots/<commit>/..."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    if model_dir is not None:
        shutil.copytree(model_dir, snap)
    else:
        snap.mkdir(parents=True)
    return snap


def test_repo_id_from_the_cache(tmp_path, tiny_engine_model_dir):
    snap = fake_hub_cache(tmp_path, DEFAULT_REPO, tiny_engine_model_dir)
    src = resolve_model(DEFAULT_REPO, cache_dir=tmp_path, reachable=never)
    assert src.kind == "hub" and src.model_id == DEFAULT_REPO and src.root == snap


def test_partial_cache_offline_names_the_missing_part(tmp_path, tiny_engine_model_dir):
    snap = fake_hub_cache(tmp_path, DEFAULT_REPO, tiny_engine_model_dir)
    shutil.rmtree(snap / "transformer")
    msg = expect_error(lambda: resolve_model(DEFAULT_REPO, cache_dir=tmp_path, reachable=never))
    assert "transformer" in msg and "24.6 GB" in msg and "--model PATH" in msg
    assert "text_encoder/" not in msg


# --------------------------------------------------------------------------------------------
# (c) ComfyUI

@pytest.fixture
def comfy_models(tmp_path, tiny_engine_model_dir) -> Path:
    """ComfyUI/models with the tiny model's weights in ComfyUI/BFL/Qwen3 naming."""
    models = tmp_path / "ComfyUI" / "models"
    for d in ("diffusion_models", "text_encoders", "vae"):
        (models / d).mkdir(parents=True)
    save_file(comfyui_transformer_inverse(tensors(tiny_engine_model_dir / "transformer")),
              str(models / "diffusion_models" / "z_image_turbo_bf16.safetensors"))
    te = {f"model.{k}": v for k, v in tensors(tiny_engine_model_dir / "text_encoder").items()}
    save_file(te, str(models / "text_encoders" / "qwen_3_4b.safetensors"))
    save_file(bfl_vae_inverse(tensors(tiny_engine_model_dir / "vae")),
              str(models / "vae" / "ae.safetensors"))
    return models


def test_comfyui_file(comfy_models, tiny_engine_model_dir):
    dit = comfy_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    src = resolve_model(dit, tokenizer=tiny_engine_model_dir / "tokenizer", reachable=never)
    assert src.kind == "comfyui" and src.root == comfy_models.resolve()
    assert src.transformer_files == (dit.resolve(),)
    te = comfy_models.resolve() / "text_encoders" / "qwen_3_4b.safetensors"
    assert src.text_encoder_files == (te,)
    assert src.vae_files == (comfy_models.resolve() / "vae" / "ae.safetensors",)
    assert src.key_maps == {"transformer": "comfyui-transformer", "text_encoder": "qwen3",
                            "vae": "bfl-vae"}
    assert src.tokenizer_dir == tiny_engine_model_dir / "tokenizer"
    assert src.transformer_config.parent == CONFIG_DIR
    # the models folder itself works too
    assert resolve_model(comfy_models, tokenizer=tiny_engine_model_dir / "tokenizer",
                         reachable=never).transformer_files == (dit.resolve(),)


def test_comfyui_files_side_by_side(tmp_path, comfy_models, tiny_engine_model_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in comfy_models.rglob("*.safetensors"):
        shutil.copy(f, flat / f.name)
    src = resolve_model(flat / "z_image_turbo_bf16.safetensors",
                        tokenizer=tiny_engine_model_dir / "tokenizer", reachable=never)
    assert src.vae_files == (flat.resolve() / "ae.safetensors",)


def test_comfyui_missing_parts_and_tokenizer(comfy_models, tmp_path, tiny_engine_model_dir):
    dit = comfy_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    msg = expect_error(lambda: resolve_model(dit, cache_dir=tmp_path / "hf", reachable=never))
    assert "--tokenizer PATH" in msg and "11 MB" in msg
    # tokenizer from the HF cache
    snap = fake_hub_cache(tmp_path / "hf2", DEFAULT_REPO, None)
    shutil.copytree(tiny_engine_model_dir / "tokenizer", snap / "tokenizer")
    src = resolve_model(dit, cache_dir=tmp_path / "hf2", reachable=never)
    assert src.tokenizer_dir == snap / "tokenizer"
    # missing text encoder and VAE
    (comfy_models / "text_encoders" / "qwen_3_4b.safetensors").unlink()
    (comfy_models / "vae" / "ae.safetensors").unlink()
    msg = expect_error(lambda: resolve_model(dit, tokenizer=tiny_engine_model_dir / "tokenizer",
                                             reachable=never))
    assert "qwen_3_4b.safetensors" in msg and "ae.safetensors" in msg


def test_comfyui_rejects_non_zimage_and_scaled_files(comfy_models, tiny_engine_model_dir):
    tok = tiny_engine_model_dir / "tokenizer"
    msg = expect_error(lambda: resolve_model(comfy_models / "vae" / "ae.safetensors",
                                             tokenizer=tok, reachable=never))
    assert "not a Z-Image diffusion model" in msg
    dit = comfy_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    sd = load_file(str(dit))
    sd["model.diffusion_model.layers.0.attention.qkv.scale_weight"] = torch.ones(1)
    save_file(sd, str(dit))
    assert "scaled/quantised" in expect_error(lambda: resolve_model(dit, tokenizer=tok,
                                                                    reachable=never))


# --------------------------------------------------------------------------------------------
# ComfyUI all-in-one checkpoints (models/checkpoints) and the VAE pick

TE_PREFIX = "text_encoders.qwen3_4b.transformer."


def write_checkpoint(path: Path, model_dir: Path, *, vae: bool = True) -> Path:
    """The tiny model's weights as ComfyUI saves a checkpoint: the DiT under model.diffusion_model.
    (fused qkv), Qwen3 under text_encoders.qwen3_4b.transformer.model., the VAE under vae. (BFL)."""
    sd = comfyui_transformer_inverse(tensors(model_dir / "transformer"))
    sd.update({f"{TE_PREFIX}model.{k}": v for k, v in tensors(model_dir / "text_encoder").items()})
    if vae:
        sd.update({f"vae.{k}": v for k, v in bfl_vae_inverse(tensors(model_dir / "vae")).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


@pytest.fixture
def tiny_configs(tmp_path, tiny_engine_model_dir, monkeypatch):
    """ComfyUI files carry no configs; the engine uses the shipped Turbo ones. For the tiny test
    model, the shipped configs are replaced by the tiny model's own."""
    d = tmp_path / "tiny-configs"
    d.mkdir()
    for src, dst in (("transformer/config.json", "transformer.json"),
                     ("vae/config.json", "vae.json"),
                     ("scheduler/scheduler_config.json", "scheduler.json"),
                     ("text_encoder/config.json", "text_encoder.json")):
        shutil.copy(tiny_engine_model_dir / src, d / dst)
    monkeypatch.setattr(sources, "CONFIG_DIR", d)
    return d


def test_all_in_one_checkpoint_is_recognised(tmp_path, tiny_engine_model_dir):
    ckpt = write_checkpoint(tmp_path / "models" / "checkpoints" / "zit_aio.safetensors",
                            tiny_engine_model_dir)
    src = resolve_model(ckpt, tokenizer=tiny_engine_model_dir / "tokenizer", reachable=never)
    assert src.kind == "checkpoint" and src.root == (tmp_path / "models").resolve()
    assert src.transformer_files == src.text_encoder_files == src.vae_files == (ckpt.resolve(),)
    assert src.key_maps == {"transformer": "checkpoint:transformer:comfyui-transformer",
                            "text_encoder": "checkpoint:text_encoder:qwen3",
                            "vae": "checkpoint:vae:bfl-vae"}
    # the models folder finds it in checkpoints/ too
    assert resolve_model(tmp_path / "models", tokenizer=tiny_engine_model_dir / "tokenizer",
                         reachable=never).kind == "checkpoint"


def test_all_in_one_checkpoint_gives_the_folders_pixels(tmp_path, tiny_engine_model_dir,
                                                        tiny_configs):
    import numpy as np

    from engine.loading import load_pipeline
    from engine.pipeline import GenerateRequest

    ckpt = write_checkpoint(tmp_path / "checkpoints" / "zit_aio.safetensors",
                            tiny_engine_model_dir)
    req = GenerateRequest("a lighthouse at dusk", 96, 64, steps=3, seed=11)
    ours = load_pipeline(str(ckpt), device="cpu", dtype="float32",
                         tokenizer=str(tiny_engine_model_dir / "tokenizer")).generate(req)
    folder = load_pipeline(str(tiny_engine_model_dir), device="cpu", dtype="float32").generate(req)
    assert np.array_equal(ours.images[0], folder.images[0])
    assert ours.images[0].std() > 5


def test_checkpoint_without_vae_uses_the_one_beside_it(tmp_path, tiny_engine_model_dir):
    models = tmp_path / "models"
    ckpt = write_checkpoint(models / "checkpoints" / "zit.safetensors", tiny_engine_model_dir,
                            vae=False)
    (models / "vae").mkdir()
    save_file(bfl_vae_inverse(tensors(tiny_engine_model_dir / "vae")),
              str(models / "vae" / "ae.safetensors"))
    src = resolve_model(ckpt, tokenizer=tiny_engine_model_dir / "tokenizer", reachable=never)
    assert src.vae_files == ((models / "vae" / "ae.safetensors").resolve(),)
    assert src.key_maps["vae"] == "bfl-vae"
    assert src.key_maps["text_encoder"] == "checkpoint:text_encoder:qwen3"


def _decoy_vaes(folder: Path) -> None:
    """VAEs ComfyUI users keep beside the FLUX one, by their tensor layout (tiny shapes)."""
    z = torch.zeros
    save_file({"decoder.conv1.weight": z(8, 16, 3, 3, 3), "encoder.conv1.weight": z(8, 3, 3, 3, 3),
               "conv1.weight": z(32, 32, 1, 1, 1)}, str(folder / "qwen_image_vae.safetensors"))
    save_file({"decoder.conv_in.weight": z(8, 16, 3, 3, 3),
               "encoder.conv_out.weight": z(32, 8, 3, 3, 3)},
              str(folder / "wan_2.1_vae.safetensors"))
    save_file({"decoder.conv_in.weight": z(8, 8, 3, 3), "encoder.conv_out.weight": z(16, 8, 3, 3)},
              str(folder / "ace_step_vae.safetensors"))


@pytest.mark.parametrize("flux_name", ["ae.safetensors", "flux_vae.safetensors",
                                       "my_vae.safetensors"])
def test_vae_pick_skips_decoys_and_names_the_file(comfy_models, tiny_engine_model_dir, caplog,
                                                  flux_name):
    vae_dir = comfy_models / "vae"
    (vae_dir / "ae.safetensors").rename(vae_dir / flux_name)
    _decoy_vaes(vae_dir)
    dit = comfy_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    with caplog.at_level("INFO", logger="engine.sources"):
        src = resolve_model(dit, tokenizer=tiny_engine_model_dir / "tokenizer", reachable=never)
    assert src.vae_files == ((vae_dir / flux_name).resolve(),)
    assert src.vae_used == (vae_dir / flux_name).resolve()
    assert f"VAE: {(vae_dir / flux_name).resolve()}" in caplog.text
    said = [r for r in caplog.records if r.getMessage().startswith("VAE: ")]
    if flux_name == "my_vae.safetensors":  # a decoy ranked first was checked, skipped, named
        assert said[0].levelname == "WARNING" and "ace_step_vae" in said[0].getMessage()
    else:  # the exact name, or a name saying flux, is checked first and fits
        assert said[0].levelname == "INFO"


def test_only_decoy_vaes_is_a_clear_error(comfy_models, tiny_engine_model_dir):
    vae_dir = comfy_models / "vae"
    (vae_dir / "ae.safetensors").unlink()
    _decoy_vaes(vae_dir)
    dit = comfy_models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    msg = expect_error(lambda: resolve_model(dit, tokenizer=tiny_engine_model_dir / "tokenizer",
                                             reachable=never))
    assert "FLUX VAE ae.safetensors (0.3 GB" in msg
    for name in ("qwen_image_vae", "wan_2.1_vae", "ace_step_vae"):
        assert name in msg


def test_flux_vae_problem_names_the_reason():
    def header(**shapes):
        return {k.replace("__", "."): ("F32", v) for k, v in shapes.items()}

    ok = header(decoder__conv_in__weight=(512, 16, 3, 3), encoder__conv_out__weight=(32, 512, 3, 3))
    assert sources.flux_vae_problem(ok) == ""
    assert "latent channels" in sources.flux_vae_problem(header(
        decoder__conv_in__weight=(512, 4, 3, 3), encoder__conv_out__weight=(8, 512, 3, 3)))
    assert "3-D" in sources.flux_vae_problem(header(
        decoder__conv_in__weight=(5, 16, 3, 3, 3), encoder__conv_out__weight=(32, 5, 3, 3, 3)))
    assert "quant convs" in sources.flux_vae_problem({**ok, "quant_conv.weight": ("F32", (32,))})


# --------------------------------------------------------------------------------------------
# shipped configs

def test_shipped_turbo_configs():
    assert TransformerParams.from_json(CONFIG_DIR / "transformer.json") == TransformerParams()
    vae = VaeParams.from_json(CONFIG_DIR / "vae.json")
    assert vae.block_out_channels == (128, 256, 512, 512) and vae.scaling_factor == 0.3611
    assert vae.shift_factor == 0.1159 and vae.layers_per_block == 2
    sched = SchedulerParams.from_json(CONFIG_DIR / "scheduler.json")
    assert sched.shift == 3.0 and not sched.use_dynamic_shifting
    te = json.loads((CONFIG_DIR / "text_encoder.json").read_text())
    assert (te["hidden_size"], te["num_hidden_layers"], te["vocab_size"]) == (2560, 36, 151936)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(CONFIG_DIR / "text_encoder.json"))
    assert cfg.model_type == "qwen3" and cfg.head_dim == 128 and cfg.num_key_value_heads == 8


def test_repo_id_detection():
    assert sources.looks_like_repo_id("Tongyi-MAI/Z-Image-Turbo")
    for s in ("./a/b", "a/b/c", "/abs", "~/x", "a b/c"):
        assert not sources.looks_like_repo_id(s)
