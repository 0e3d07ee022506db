"""A tiny RANDOM Z-Image model in the official Hugging Face folder layout.

The tiny model draws noise: every weight is random. It exists for smoke runs (`python -m engine
tiny-model DIR`, then `--model DIR`), for tests, and for developing host apps (the Blender add-on)
without the 33 GB download. It has exactly the official layout and file formats:

    model_index.json                  ZImagePipeline, the same five components as the real repo
    scheduler/scheduler_config.json   FlowMatchEulerDiscreteScheduler, shift 3.0
    text_encoder/                     a tiny Qwen3 (transformers save_pretrained, sharded + index)
    tokenizer/                        a byte-level BPE Qwen2Tokenizer with Qwen3's chat template
    transformer/                      ZImageTransformer2DModel config + 2 safetensors shards + index
    vae/                              AutoencoderKL config (FLUX values, scaled down) + safetensors

No diffusers here (it is a test-only oracle): the transformer and VAE tensor names and shapes come
from `transformer_shapes` / `vae_shapes`, which follow the diffusers checkpoint naming that our
engine.model classes use; the tests check both against diffusers and against engine.model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch

# --------------------------------------------------------------------------------------------
# Qwen3's stock chat template (Qwen/Qwen3-* tokenizer_config.json). With add_generation_prompt and
# enable_thinking=True it ends in "<|im_start|>assistant\n" and adds no <think> block.
QWEN3_CHAT_TEMPLATE = (  # noqa: E501  (verbatim data)
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\nYou may "
    "call one or more functions to assist with the user query.\\n\\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n"
    "\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments"
    "\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if "
    "messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0].content + "
    "'<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = namespace(multi_step_tool=true, "
    "last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}\n    {%- set index "
    "= (messages|length - 1) - loop.index0 %}\n    {%- if ns.multi_step_tool and message.role == "
    "\"user\" and message.content is string and not(message.content.startswith('<tool_response>') and "
    "message.content.endswith('</tool_response>')) %}\n        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message "
    "in messages %}\n    {%- if message.content is string %}\n        {%- set content = message.content "
    "%}\n    {%- else %}\n        {%- set content = '' %}\n    {%- endif %}\n    {%- if (message.role == "
    "\"user\") or (message.role == \"system\" and not loop.first) %}\n        {{- '<|im_start|>' + "
    "message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == "
    "\"assistant\" %}\n        {%- set reasoning_content = '' %}\n        {%- if "
    "message.reasoning_content is string %}\n            {%- set reasoning_content = "
    "message.reasoning_content %}\n        {%- else %}\n            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')."
    "split('<think>')[-1].lstrip('\\n') %}\n                {%- set content = "
    "content.split('</think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not "
    "loop.last and reasoning_content) %}\n                {{- '<|im_start|>' + message.role + "
    "'\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n        {%- else %}\n            {{- '<|im_start|>' + message.role + "
    "'\\n' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n            {%- for "
    "tool_call in message.tool_calls %}\n                {%- if (loop.first and content) or (not "
    "loop.first) %}\n                    {{- '\\n' }}\n                {%- endif %}\n                {%- "
    "if tool_call.function %}\n                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n                    {{- "
    "tool_call.arguments }}\n                {%- else %}\n                    {{- tool_call.arguments | "
    "tojson }}\n                {%- endif %}\n                {{- '}\\n</tool_call>' }}\n            {%- "
    "endfor %}\n        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == "
    "\"tool\" %}\n        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or "
    "(messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- "
    "endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- "
    "'<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false "
    "%}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
)

# Qwen2's pre-tokenizer split (as in transformers' Qwen2Tokenizer and the real tokenizer.json).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# A small built-in corpus so the byte-level BPE learns some English and Chinese merges. Any UTF-8
# text tokenizes regardless (byte level); the merges only make the token sequences shorter.
_CORPUS = """
A red fox sits in the snow under a pine tree at dawn, soft light, photograph.
A cat sleeping on a windowsill in the afternoon sun, warm colors, detailed fur.
An astronaut riding a horse on the moon, cinematic lighting, high detail.
A bowl of ramen with an egg and green onions on a wooden table, food photography.
Portrait of an old fisherman with a grey beard, dramatic shadows, black and white.
A futuristic city at night with neon signs and rain on the streets, wide angle.
Mountains reflected in a calm lake, morning mist, landscape painting in oil.
The quick brown fox jumps over the lazy dog. A small house by the river with a garden.
Watercolor illustration of a lighthouse on a cliff, seagulls, blue sky and clouds.
Close-up of a dewdrop on a green leaf, macro lens, shallow depth of field.
一只红色的狐狸坐在雪地里，清晨的阳光，摄影作品。
一只猫在窗台上睡觉，午后的阳光，温暖的色彩。
宇航员在月球上骑马，电影感的光线，高细节。
一碗拉面，上面有鸡蛋和葱花，放在木桌上，美食摄影。
夜晚的未来城市，霓虹灯和雨中的街道，广角镜头。
山峰倒映在平静的湖面上，晨雾，油画风景。
一位留着灰色胡子的老渔夫的肖像，戏剧性的阴影，黑白照片。
水彩插画：悬崖上的灯塔，海鸥，蓝天白云。
中国传统水墨画，竹子和熊猫，宣纸，留白。
故宫的红墙和金色屋顶，冬天的雪，游客很少。
Numbers 0123456789, punctuation: .,;:!?'"()[]{}<>-_/\\@#$%^&*+=~`|
"""


def build_tokenizer(out_dir: str | Path, *, vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE on the built-in corpus; save it as a Qwen2Tokenizer folder.

    Files: tokenizer.json, tokenizer_config.json (with Qwen3's chat template, like the real repo),
    vocab.json, merges.txt. Special tokens come last: <|endoftext|> (pad), <|im_start|>,
    <|im_end|> (eos). Deterministic: the same files every time.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    tok.train_from_iterator(lines * 3, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.save(str(out / "tokenizer.json"))

    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                       "rstrip": False, "single_word": False, "special": True}
             for t in SPECIAL_TOKENS}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                               encoding="utf-8")
    return out


def tokenizer_size(tokenizer_dir: str | Path) -> int:
    """Number of token ids (vocab + special tokens) of a tokenizer.json."""
    data = json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data["added_tokens"]]
    return max(ids) + 1


# --------------------------------------------------------------------------------------------
# Random weights

def random_tensor(name: str, shape: Iterable[int], generator: torch.Generator) -> torch.Tensor:
    """A float32 tensor for parameter `name`: norms near 1, small biases, weights ~ 1/sqrt(fan_in).

    Nothing is zero: the libraries zero-initialise pad tokens and some layers, which would hide
    loading and indexing bugs in parity tests.
    """
    shape = tuple(int(s) for s in shape)
    t = torch.randn(shape, generator=generator, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("pad_token"):
        return t * 0.5
    if len(shape) == 1 and leaf == "weight":  # RMSNorm / GroupNorm / QK-norm scales
        return 1.0 + 0.1 * t
    if leaf == "bias":
        return 0.05 * t
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return t / math.sqrt(max(fan_in, 1))


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: random_tensor(name, shape, g) for name, shape in shapes.items()}


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter and persistent buffer of `module` (floating point) in place."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict(keep_vars=True).items():
        if tensor.is_floating_point():
            tensor.copy_(random_tensor(name, tensor.shape, g).to(tensor.dtype))
    return module


# --------------------------------------------------------------------------------------------
# Configs and tensor shapes (diffusers naming = checkpoint keys = engine.model module names)

def tiny_transformer_config(**overrides) -> dict:
    config = {
        "_class_name": "ZImageTransformer2DModel",
        "_diffusers_version": "0.36.0.dev0",
        "all_f_patch_size": [1],
        "all_patch_size": [2],
        "axes_dims": [8, 12, 12],
        "axes_lens": [1536, 512, 512],
        "cap_feat_dim": 32,
        "dim": 64,
        "in_channels": 16,
        "n_heads": 2,
        "n_kv_heads": 2,
        "n_layers": 2,
        "n_refiner_layers": 2,
        "norm_eps": 1e-05,
        "qk_norm": True,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
    }
    config.update(overrides)
    return config


def tiny_vae_config(**overrides) -> dict:
    config = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.36.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [32, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 16,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    }
    config.update(overrides)
    return config


def tiny_text_encoder_config(vocab_size: int, *, pad_id: int, eos_id: int, **overrides) -> dict:
    config = {
        "architectures": ["Qwen3Model"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": pad_id,
        "eos_token_id": eos_id,
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 40960,
        "max_window_layers": 3,
        "model_type": "qwen3",
        "num_attention_heads": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    config.update(overrides)
    return config


SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "_diffusers_version": "0.36.0.dev0",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}

MODEL_INDEX = {
    "_class_name": "ZImagePipeline",
    "_diffusers_version": "0.36.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "ZImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

ADALN_EMBED_DIM = 256
FREQUENCY_EMBEDDING_SIZE = 256
T_EMBED_MID = 1024


def transformer_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys and shapes of ZImageTransformer2DModel for a config (diffusers naming)."""
    d = config["dim"]
    heads = kv_heads = config["n_heads"]  # diffusers builds plain MHA and ignores n_kv_heads
    head_dim = d // heads
    adaln = min(d, ADALN_EMBED_DIM)
    ffn = int(d / 3 * 8)
    c_in = config["in_channels"]
    c_out = config.get("out_channels") or c_in
    cap = config["cap_feat_dim"]
    s: dict[str, tuple[int, ...]] = {"x_pad_token": (1, d), "cap_pad_token": (1, d)}
    for p, f in zip(config["all_patch_size"], config["all_f_patch_size"]):
        k = f"{p}-{f}"
        s[f"all_x_embedder.{k}.weight"] = (d, f * p * p * c_in)
        s[f"all_x_embedder.{k}.bias"] = (d,)
        s[f"all_final_layer.{k}.linear.weight"] = (p * p * f * c_out, d)
        s[f"all_final_layer.{k}.linear.bias"] = (p * p * f * c_out,)
        s[f"all_final_layer.{k}.adaLN_modulation.1.weight"] = (d, adaln)
        s[f"all_final_layer.{k}.adaLN_modulation.1.bias"] = (d,)
    s["t_embedder.mlp.0.weight"] = (T_EMBED_MID, FREQUENCY_EMBEDDING_SIZE)
    s["t_embedder.mlp.0.bias"] = (T_EMBED_MID,)
    s["t_embedder.mlp.2.weight"] = (adaln, T_EMBED_MID)
    s["t_embedder.mlp.2.bias"] = (adaln,)
    s["cap_embedder.0.weight"] = (cap,)
    s["cap_embedder.1.weight"] = (d, cap)
    s["cap_embedder.1.bias"] = (d,)

    def block(prefix: str, modulated: bool) -> None:
        a = f"{prefix}.attention"
        s[f"{a}.to_q.weight"] = (heads * head_dim, d)
        s[f"{a}.to_k.weight"] = (kv_heads * head_dim, d)
        s[f"{a}.to_v.weight"] = (kv_heads * head_dim, d)
        s[f"{a}.to_out.0.weight"] = (d, heads * head_dim)
        if config.get("qk_norm", True):
            s[f"{a}.norm_q.weight"] = (head_dim,)
            s[f"{a}.norm_k.weight"] = (head_dim,)
        for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            s[f"{prefix}.{n}.weight"] = (d,)
        s[f"{prefix}.feed_forward.w1.weight"] = (ffn, d)
        s[f"{prefix}.feed_forward.w2.weight"] = (d, ffn)
        s[f"{prefix}.feed_forward.w3.weight"] = (ffn, d)
        if modulated:
            s[f"{prefix}.adaLN_modulation.0.weight"] = (4 * d, adaln)
            s[f"{prefix}.adaLN_modulation.0.bias"] = (4 * d,)

    for i in range(config["n_refiner_layers"]):
        block(f"noise_refiner.{i}", True)
    for i in range(config["n_refiner_layers"]):
        block(f"context_refiner.{i}", False)
    for i in range(config["n_layers"]):
        block(f"layers.{i}", True)
    return s


def vae_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys and shapes of diffusers' AutoencoderKL (Down/UpDecoderBlock2D blocks)."""
    ch = list(config["block_out_channels"])
    n = len(ch)
    lpb = config["layers_per_block"]
    lat = config["latent_channels"]
    s: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_out: int, c_in: int, k: int = 3) -> None:
        s[f"{name}.weight"] = (c_out, c_in, k, k)
        s[f"{name}.bias"] = (c_out,)

    def norm(name: str, c: int) -> None:
        s[f"{name}.weight"] = (c,)
        s[f"{name}.bias"] = (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_out, c_in)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out)
        if c_in != c_out:
            conv(f"{name}.conv_shortcut", c_out, c_in, 1)

    def mid(name: str, c: int) -> None:
        resnet(f"{name}.resnets.0", c, c)
        if config.get("mid_block_add_attention", True):
            a = f"{name}.attentions.0"
            norm(f"{a}.group_norm", c)
            for p in ("to_q", "to_k", "to_v", "to_out.0"):
                s[f"{a}.{p}.weight"] = (c, c)
                s[f"{a}.{p}.bias"] = (c,)
        resnet(f"{name}.resnets.1", c, c)

    conv("encoder.conv_in", ch[0], config["in_channels"])
    c_prev = ch[0]
    for i, c in enumerate(ch):
        for j in range(lpb):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", c_prev if j == 0 else c, c)
        if i < n - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c)
        c_prev = c
    mid("encoder.mid_block", ch[-1])
    norm("encoder.conv_norm_out", ch[-1])
    conv("encoder.conv_out", 2 * lat, ch[-1])
    if config.get("use_quant_conv", True):
        conv("quant_conv", 2 * lat, 2 * lat, 1)
    if config.get("use_post_quant_conv", True):
        conv("post_quant_conv", lat, lat, 1)

    rev = ch[::-1]
    conv("decoder.conv_in", rev[0], lat)
    mid("decoder.mid_block", rev[0])
    c_prev = rev[0]
    for i, c in enumerate(rev):
        for j in range(lpb + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", c_prev if j == 0 else c, c)
        if i < n - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", c, c)
        c_prev = c
    norm("decoder.conv_norm_out", ch[0])
    conv("decoder.conv_out", config["out_channels"], ch[0])
    return s


# --------------------------------------------------------------------------------------------
# Writers

def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_sharded(state: dict[str, torch.Tensor], folder: Path, *, prefix: str, shards: int,
                 index_name: str) -> list[Path]:
    """Write `state` as `shards` safetensors files `{prefix}-0000i-of-0000n.safetensors` + index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    per = math.ceil(len(names) / shards)
    weight_map, files, total = {}, [], 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"{prefix}-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(folder / fname),
                  metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += state[k].numel() * state[k].element_size()
        files.append(folder / fname)
    _write_json(folder / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


def build_text_encoder(out_dir: str | Path, tokenizer_dir: str | Path, *, seed: int = 0,
                       max_shard_size: str = "40KB", **overrides) -> Path:
    """A tiny random transformers Qwen3Model saved with save_pretrained, sharded (index exists)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = tiny_text_encoder_config(tokenizer_size(tokenizer_dir), pad_id=tok.pad_token_id,
                                   eos_id=tok.convert_tokens_to_ids("<|im_end|>"), **overrides)
    config = Qwen3Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    model = randomize_(Qwen3Model(config).eval(), seed)
    model.save_pretrained(str(out), max_shard_size=max_shard_size, safe_serialization=True)
    return out


def build_tiny_model(out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Build a tiny RANDOM Z-Image-Turbo model (it draws noise) in the official folder layout.

    `overrides` change the transformer config (e.g. `dim=96`, `n_layers=1`); keys prefixed `vae_`
    change the VAE config (`vae_block_out_channels=[32, 32]`), keys prefixed `text_` the Qwen3
    config (`text_num_hidden_layers=2`). Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_over = {k: v for k, v in overrides.items() if not k.startswith(("vae_", "text_"))}
    v_over = {k[4:]: v for k, v in overrides.items() if k.startswith("vae_")}
    x_over = {k[5:]: v for k, v in overrides.items() if k.startswith("text_")}

    _write_json(out / "model_index.json", MODEL_INDEX)
    _write_json(out / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    build_tokenizer(out / "tokenizer")
    build_text_encoder(out / "text_encoder", out / "tokenizer", seed=seed + 1, **x_over)
    hidden = json.loads((out / "text_encoder" / "config.json").read_text())["hidden_size"]

    t_cfg = tiny_transformer_config(cap_feat_dim=hidden, **t_over)
    _write_json(out / "transformer" / "config.json", t_cfg)
    save_sharded(random_state_dict(transformer_shapes(t_cfg), seed + 2), out / "transformer",
                 prefix="diffusion_pytorch_model", shards=2,
                 index_name="diffusion_pytorch_model.safetensors.index.json")

    from safetensors.torch import save_file

    v_cfg = tiny_vae_config(**v_over)
    _write_json(out / "vae" / "config.json", v_cfg)
    save_file(random_state_dict(vae_shapes(v_cfg), seed + 3),
              str(out / "vae" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return out
