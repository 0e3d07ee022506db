"""engine/tiny.py: the official layout, a real Qwen3 chat template, transformers/diffusers/engine
all load it, and every weight is random (nothing zero)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine import tiny
from engine.config import TransformerParams
from engine.model.transformer import ZImageTransformer
from engine.weights import load_safetensors_into


def expected_text(prompt: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_engine_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_engine_model_dir / "tokenizer"))


def test_layout(tiny_engine_model_dir):
    d = tiny_engine_model_dir
    index = json.loads((d / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert {k: v for k, v in index.items() if not k.startswith("_")} == {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["shift"], sched["use_dynamic_shifting"], sched["num_train_timesteps"]) == (
        3.0, False, 1000)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (d / "tokenizer" / f).is_file()
    assert (d / "text_encoder" / "model.safetensors.index.json").is_file()
    assert len(list((d / "text_encoder").glob("model-*-of-*.safetensors"))) >= 2
    assert sorted(p.name for p in (d / "transformer").glob("*.safetensors")) == [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors"]
    t_index = json.loads((d / "transformer" / "diffusion_pytorch_model.safetensors.index.json")
                         .read_text())
    assert set(t_index["weight_map"].values()) == {
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors"}
    assert (d / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    t_cfg = json.loads((d / "transformer" / "config.json").read_text())
    te_cfg = json.loads((d / "text_encoder" / "config.json").read_text())
    assert t_cfg["_class_name"] == "ZImageTransformer2DModel"
    assert t_cfg["cap_feat_dim"] == te_cfg["hidden_size"] == 32
    assert (t_cfg["dim"], t_cfg["n_heads"], t_cfg["axes_dims"]) == (64, 2, [8, 12, 12])
    vae_cfg = json.loads((d / "vae" / "config.json").read_text())
    assert vae_cfg["_class_name"] == "AutoencoderKL" and vae_cfg["scaling_factor"] == 0.3611


@pytest.mark.parametrize("prompt", [
    "a red fox in the snow",
    "一只红色的狐狸坐在雪地里，清晨的阳光",
    "mixed 中文 and English, emoji ✨ and symbols <>&\"'",
])
def test_chat_template_is_qwen3s(tokenizer, prompt):
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True)
    assert text == expected_text(prompt)
    no_think = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    assert no_think == expected_text(prompt) + "<think>\n\n</think>\n\n"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert tokenizer.decode(ids) == text  # byte level: any UTF-8 round-trips


def test_tokenizer_specials(tokenizer):
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length >= 512
    assert tokenizer.bos_token is None
    batch = tokenizer(["a", "a much longer prompt"], padding=True)
    assert batch["input_ids"][0][-1] == tokenizer.pad_token_id  # right padding


def test_text_encoder_loads_with_transformers(tiny_engine_model_dir, tokenizer):
    from transformers import Qwen3Model

    model = Qwen3Model.from_pretrained(str(tiny_engine_model_dir / "text_encoder"))
    assert model.config.vocab_size == len(tokenizer)
    ids = torch.tensor([tokenizer(expected_text("一只猫"))["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert out.hidden_states[-2].shape == (1, ids.shape[1], 32)
    assert torch.isfinite(out.hidden_states[-2]).all()


def test_transformer_and_vae_load_strictly_into_engine_model(tiny_engine_model_dir):
    d = tiny_engine_model_dir
    with torch.device("meta"):
        dit = ZImageTransformer(TransformerParams.from_json(d / "transformer" / "config.json"))
    load_safetensors_into(dit, d / "transformer", dtype=torch.float32, device="cpu")
    vae_mod = pytest.importorskip("engine.model.vae")
    from engine.config import VaeParams

    with torch.device("meta"):
        vae = vae_mod.AutoEncoder(VaeParams.from_json(d / "vae" / "config.json"))
    load_safetensors_into(vae, d / "vae", dtype=torch.float32, device="cpu")


def test_weights_are_random_not_zero(tiny_engine_model_dir, tiny_model_dir):
    for d in (tiny_engine_model_dir, tiny_model_dir):
        for comp in ("transformer", "vae", "text_encoder"):
            for f in (d / comp).glob("*.safetensors"):
                for k, v in load_file(str(f)).items():
                    assert v.abs().min() > 0 or v.std() > 0.01, f"{comp}/{k} looks constant"
                    assert v.abs().max() > 0, f"{comp}/{k} is zero"
                    if k.endswith(("pad_token",)):
                        assert v.std() > 0.1, k
                    if v.ndim == 1 and k.endswith("weight"):  # norm scales
                        assert 0.5 < v.mean() < 1.5, k


@pytest.mark.parametrize("overrides", [{}, {"dim": 96, "n_heads": 3, "n_kv_heads": 3,
                                            "n_layers": 1, "axes_dims": [8, 12, 12]}])
def test_shape_tables_match_diffusers(overrides):
    from diffusers import AutoencoderKL, ZImageTransformer2DModel

    cfg = tiny.tiny_transformer_config(**overrides)
    ref = ZImageTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    assert tiny.transformer_shapes(cfg) == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    vcfg = tiny.tiny_vae_config(block_out_channels=[32, 64, 64],
                                down_block_types=["DownEncoderBlock2D"] * 3,
                                up_block_types=["UpDecoderBlock2D"] * 3)
    vref = AutoencoderKL(**{k: v for k, v in vcfg.items() if not k.startswith("_")})
    assert tiny.vae_shapes(vcfg) == {k: tuple(v.shape) for k, v in vref.state_dict().items()}


def test_diffusers_reads_the_tiny_model(tiny_engine_model_dir):
    """The oracle accepts engine/tiny.py's layout as a real ZImagePipeline folder."""
    from tests.fixtures.zimage import load_reference_pipeline

    pipe = load_reference_pipeline(tiny_engine_model_dir)
    sd = {}
    for f in (tiny_engine_model_dir / "transformer").glob("*.safetensors"):
        sd.update(load_file(str(f)))
    assert all(torch.equal(v, sd[k]) for k, v in pipe.transformer.state_dict().items())


def test_deterministic(tmp_path):
    a = tiny.random_state_dict({"x.weight": (4, 3), "n.weight": (3,)}, seed=5)
    b = tiny.random_state_dict({"x.weight": (4, 3), "n.weight": (3,)}, seed=5)
    c = tiny.random_state_dict({"x.weight": (4, 3), "n.weight": (3,)}, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["x.weight"], c["x.weight"])
    t1 = tiny.build_tokenizer(tmp_path / "t1")
    t2 = tiny.build_tokenizer(tmp_path / "t2")
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (t1 / f).read_bytes() == (t2 / f).read_bytes()
