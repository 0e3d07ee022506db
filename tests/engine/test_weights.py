"""engine.weights: strict loading, sharded indexes, key maps (checked against diffusers'
converters), and errors that name the tensors and the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import tiny
from engine.config import TransformerParams
from engine.errors import EngineError
from engine.model.transformer import ZImageTransformer
from engine.weights import (bfl_vae_inverse, comfyui_transformer_inverse, load_safetensors_into,
                            meta_tensors, read_header)


def all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def meta_transformer(model_dir: Path) -> ZImageTransformer:
    with torch.device("meta"):
        return ZImageTransformer(
            TransformerParams.from_json(model_dir / "transformer" / "config.json"))


def assert_state_equal(module: torch.nn.Module, expected: dict[str, torch.Tensor], dtype=None):
    sd = module.state_dict()
    assert set(sd) == set(expected)
    for k, v in expected.items():
        want = v.to(dtype) if dtype is not None else v
        assert sd[k].dtype == want.dtype, k
        assert torch.equal(sd[k], want), k


@pytest.fixture(scope="module")
def dit_state(tiny_engine_model_dir) -> dict[str, torch.Tensor]:
    return all_tensors(tiny_engine_model_dir / "transformer")


# --------------------------------------------------------------------------------------------
# official layout

def test_fusing_on_load_frees_each_part_at_once(tiny_engine_model_dir, monkeypatch):
    """The checkpoint's to_q/to_k/to_v and w1/w3 are fused into qkv and w13 while loading; the
    parts must be gone as soon as they are fused (else the load peak is twice the projections)."""
    import weakref

    from engine import weights

    parts, alive = [], []
    read = weights._read_tensors

    def recording(*args, **kwargs):
        state = read(*args, **kwargs)
        parts.extend(weakref.ref(v) for k, v in state.items()
                     if k.endswith((".to_q.weight", ".w1.weight")))
        return state

    monkeypatch.setattr(weights, "_read_tensors", recording)
    model = meta_transformer(tiny_engine_model_dir)
    # runs after fuse_on_load's hook, before any block is loaded
    model.register_load_state_dict_pre_hook(
        lambda *a: alive.append(sum(r() is not None for r in parts)))
    load_safetensors_into(model, tiny_engine_model_dir / "transformer", dtype=torch.float32,
                          device="cpu")
    assert len(parts) == 2 * (2 + 2 + 2) and alive == [0]
    assert model.layers[0].attention.qkv.weight.shape[0] == 3 * model.params.dim


@pytest.mark.parametrize("how", ["index", "folder", "list"])
def test_sharded_transformer_loads_strictly(tiny_engine_model_dir, dit_state, how):
    folder = tiny_engine_model_dir / "transformer"
    assert len(list(folder.glob("diffusion_pytorch_model-0000*-of-00002.safetensors"))) == 2
    source = {"index": folder / "diffusion_pytorch_model.safetensors.index.json",
              "folder": folder,
              "list": sorted(folder.glob("*.safetensors"))}[how]
    model = meta_transformer(tiny_engine_model_dir)
    load_safetensors_into(model, source, dtype=torch.float32, device="cpu")
    assert_state_equal(model, dit_state)
    assert meta_tensors(model) == []


def test_dtype_conversion_on_load(tiny_engine_model_dir, dit_state):
    model = meta_transformer(tiny_engine_model_dir)
    load_safetensors_into(model, tiny_engine_model_dir / "transformer", dtype=torch.bfloat16,
                          device="cpu")
    assert_state_equal(model, dit_state, dtype=torch.bfloat16)


def test_diffusers_saved_shards_load_into_our_transformer(tiny_model_dir):
    """The oracle's own save_pretrained output (shards + index) loads strictly into engine.model."""
    folder = tiny_model_dir / "transformer"
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list(folder.glob("*.safetensors"))) >= 2
    model = meta_transformer(tiny_model_dir)
    load_safetensors_into(model, folder / "diffusion_pytorch_model.safetensors.index.json",
                          dtype=torch.float32, device="cpu")
    assert_state_equal(model, all_tensors(folder))


def test_module_not_on_meta_is_fine(tiny_engine_model_dir, dit_state):
    model = ZImageTransformer(TransformerParams.from_json(
        tiny_engine_model_dir / "transformer" / "config.json"))
    load_safetensors_into(model, tiny_engine_model_dir / "transformer", dtype=torch.float32,
                          device="cpu")
    assert_state_equal(model, dit_state)


# --------------------------------------------------------------------------------------------
# ComfyUI DiT

@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_comfyui_transformer_file_loads_identically(tmp_path, tiny_engine_model_dir, dit_state,
                                                    prefix):
    comfy = comfyui_transformer_inverse(dit_state, prefix=prefix)
    comfy[f"{prefix}norm_final.weight"] = torch.ones(dit_state["x_pad_token"].shape[1])
    assert f"{prefix}layers.0.attention.qkv.weight" in comfy
    assert f"{prefix}x_embedder.weight" in comfy and f"{prefix}final_layer.linear.weight" in comfy
    assert not any(".to_q." in k or "all_x_embedder" in k for k in comfy)
    path = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file(comfy, str(path))
    model = meta_transformer(tiny_engine_model_dir)
    load_safetensors_into(model, path, dtype=torch.float32, device="cpu",
                          key_map="comfyui-transformer")
    assert_state_equal(model, dit_state)


def test_comfyui_inverse_agrees_with_diffusers_converter(dit_state):
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers)

    comfy = comfyui_transformer_inverse(dit_state)
    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(comfy))
    assert set(converted) == set(dit_state)
    assert all(torch.equal(converted[k], dit_state[k]) for k in dit_state)


# --------------------------------------------------------------------------------------------
# BFL VAE

@pytest.fixture(scope="module")
def diffusers_vae_2_blocks():
    """A diffusers AutoencoderKL with a channel change (so nin_shortcut exists) and 2 up blocks."""
    from diffusers import AutoencoderKL

    cfg = tiny.tiny_vae_config(block_out_channels=[32, 64],
                               down_block_types=["DownEncoderBlock2D"] * 2,
                               up_block_types=["UpDecoderBlock2D"] * 2)
    vae = AutoencoderKL(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    tiny.randomize_(vae, 7)
    return cfg, {k: v.clone() for k, v in vae.state_dict().items()}


def test_bfl_inverse_agrees_with_diffusers_converter(diffusers_vae_2_blocks):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg, sd = diffusers_vae_2_blocks
    bfl = bfl_vae_inverse(sd, num_up_blocks=2)
    assert any("nin_shortcut" in k for k in bfl)
    assert bfl["decoder.mid.attn_1.q.weight"].ndim == 4
    # BFL numbering is reversed: decoder.up.1 is diffusers' up_blocks.0 (the first one run).
    assert torch.equal(bfl["decoder.up.1.block.0.conv1.weight"],
                       sd["decoder.up_blocks.0.resnets.0.conv1.weight"])
    converted = convert_ldm_vae_checkpoint(dict(bfl), cfg)
    assert set(converted) == set(sd)
    assert all(torch.equal(converted[k], sd[k]) for k in sd)


def test_bfl_vae_file_loads_identically(tmp_path, diffusers_vae_2_blocks):
    from diffusers import AutoencoderKL

    cfg, sd = diffusers_vae_2_blocks
    path = tmp_path / "ae.safetensors"
    save_file(bfl_vae_inverse(sd, num_up_blocks=2), str(path))
    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    load_safetensors_into(vae, path, dtype=torch.float32, device="cpu", key_map="bfl-vae")
    assert_state_equal(vae, sd)


def test_bfl_vae_into_our_vae(tmp_path, tiny_engine_model_dir):
    vae_mod = pytest.importorskip("engine.model.vae")
    from engine.config import VaeParams

    sd = load_file(str(tiny_engine_model_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    path = tmp_path / "ae.safetensors"
    save_file(bfl_vae_inverse(sd), str(path))
    with torch.device("meta"):
        vae = vae_mod.AutoEncoder(
            VaeParams.from_json(tiny_engine_model_dir / "vae" / "config.json"))
    load_safetensors_into(vae, path, dtype=torch.float32, device="cpu", key_map="bfl-vae")
    assert_state_equal(vae, sd)


# --------------------------------------------------------------------------------------------
# Qwen3 (ComfyUI qwen_3_4b.safetensors naming)

def test_qwen3_prefixed_file_loads_into_qwen3model(tmp_path, tiny_engine_model_dir):
    from transformers import AutoConfig, Qwen3Model

    te_dir = tiny_engine_model_dir / "text_encoder"
    sd = all_tensors(te_dir)
    comfy = {f"model.{k}": v for k, v in sd.items()}
    comfy["lm_head.weight"] = sd["embed_tokens.weight"].clone()  # a causal-LM file may carry it
    path = tmp_path / "qwen_3_4b.safetensors"
    save_file(comfy, str(path))
    with torch.device("meta"):
        model = Qwen3Model(AutoConfig.from_pretrained(str(te_dir)))
    load_safetensors_into(model, path, dtype=torch.float32, device="cpu", key_map="qwen3")
    assert_state_equal(model, sd)
    # only non-persistent buffers (the rotary table) are left for the builder to make
    assert meta_tensors(model) and all(n.startswith("rotary_emb.") for n in meta_tensors(model))


# --------------------------------------------------------------------------------------------
# errors

def expect_error(fn) -> str:
    with pytest.raises(EngineError) as info:
        fn()
    err = info.value
    assert err.code == "model_unavailable"
    assert err.__cause__ is None and err.__suppress_context__ or err.__context__ is None
    return err.message


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path, tiny_engine_model_dir,
                                                            dit_state):
    bad = dict(dit_state)
    del bad["layers.0.attention.to_q.weight"]
    bad["layers.0.attention.bogus.weight"] = torch.zeros(3)
    bad["layers.1.ffn_norm1.weight"] = torch.zeros(5)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), path, dtype=torch.float32, device="cpu"))
    assert "bad.safetensors" in msg
    assert "1 missing tensor(s): layers.0.attention.to_q.weight" in msg
    assert "1 unexpected tensor(s)" in msg and "layers.0.attention.bogus.weight" in msg
    assert "layers.1.ffn_norm1.weight [5]" in msg and "expected [64]" in msg


def test_many_missing_tensors_are_counted(tmp_path, tiny_engine_model_dir, dit_state):
    part = {k: v for k, v in dit_state.items() if not k.startswith("layers.")}
    path = tmp_path / "part.safetensors"
    save_file(part, str(path))
    n = len(dit_state) - len(part)
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), path, dtype=torch.float32, device="cpu"))
    assert f"{n} missing tensor(s)" in msg and f"and {n - 5} more" in msg


def test_wrong_model_file_names_the_file(tmp_path, tiny_engine_model_dir):
    """A VAE file given as the transformer: everything is missing and everything is unexpected."""
    vae_file = tiny_engine_model_dir / "vae" / "diffusion_pytorch_model.safetensors"
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), vae_file, dtype=torch.float32, device="cpu"))
    assert str(vae_file) in msg and "missing" in msg and "unexpected" in msg


@pytest.mark.parametrize("keep", [0.5, 0.01, 4])
def test_truncated_file_gives_a_clear_error(tmp_path, tiny_engine_model_dir, keep):
    src = next((tiny_engine_model_dir / "transformer").glob("*-00001-of-00002.safetensors"))
    data = src.read_bytes()
    n = int(len(data) * keep) if keep < 1 else keep
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_engine_model_dir / "transformer", folder)
    (folder / src.name).write_bytes(data[:n])
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), folder, dtype=torch.float32, device="cpu"))
    assert src.name in msg and "truncated or corrupt" in msg


def test_garbage_file(tmp_path, tiny_engine_model_dir):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    msg = expect_error(lambda: read_header(path))
    assert "garbage.safetensors" in msg


def test_index_with_a_missing_shard(tmp_path, tiny_engine_model_dir):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_engine_model_dir / "transformer", folder)
    gone = folder / "diffusion_pytorch_model-00002-of-00002.safetensors"
    gone.unlink()
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), folder, dtype=torch.float32, device="cpu"))
    assert gone.name in msg and "do not exist" in msg


def test_index_listing_a_tensor_its_shards_lack(tmp_path, tiny_engine_model_dir):
    folder = tmp_path / "transformer"
    shutil.copytree(tiny_engine_model_dir / "transformer", folder)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["layers.9.ghost.weight"] = (
        "diffusion_pytorch_model-00001-of-00002.safetensors")
    index.write_text(json.dumps(data))
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), index, dtype=torch.float32, device="cpu"))
    assert "layers.9.ghost.weight" in msg


def test_missing_file(tmp_path, tiny_engine_model_dir):
    msg = expect_error(lambda: load_safetensors_into(
        meta_transformer(tiny_engine_model_dir), tmp_path / "nope.safetensors",
        dtype=torch.float32, device="cpu"))
    assert "nope.safetensors" in msg
