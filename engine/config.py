"""Model hyper-parameters as frozen dataclasses: the only home for defaults.

Each class reads the diffusers `config.json` of its component (`from_json`). Keys starting with `_`
(`_class_name`, `_diffusers_version`, `_name_or_path`) are bookkeeping and ignored; keys we do not
know raise, so a config for a different architecture fails loudly instead of loading half-right.
The field defaults are the Z-Image-Turbo values, so `TransformerParams()` *is* Turbo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


def _read_json(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _check_unknown(cfg: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{what}: unsupported config keys {unknown}")


@dataclass(frozen=True)
class TransformerParams:
    """The S3-DiT (diffusers `ZImageTransformer2DModel`)."""

    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2  # noise_refiner and context_refiner each have this many blocks
    n_heads: int = 30
    n_kv_heads: int = 30  # diffusers ignores it and builds plain MHA; we require == n_heads
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560  # Qwen3-4B hidden size
    in_channels: int = 16
    patch_size: int = 2  # config `all_patch_size: [2]`
    f_patch_size: int = 1  # config `all_f_patch_size: [1]`; images have one frame
    rope_theta: float = 256.0
    axes_dims: tuple[int, ...] = (32, 48, 48)  # RoPE dims per axis (caption/time, row, column)
    # Max position per axis (+1). HF config says 1536; the diffusers class default is 1024.
    axes_lens: tuple[int, ...] = (1536, 512, 512)
    t_scale: float = 1000.0  # the model sees t * 1000 with t = 1 - sigma

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the dataclass stays hashable and immutable.
        object.__setattr__(self, "axes_dims", tuple(int(d) for d in self.axes_dims))
        object.__setattr__(self, "axes_lens", tuple(int(n) for n in self.axes_lens))
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(
                f"n_kv_heads {self.n_kv_heads} != n_heads {self.n_heads}: grouped-query attention "
                "is not part of this architecture"
            )
        if len(self.axes_dims) != 3 or len(self.axes_lens) != 3:
            raise ValueError(
                f"need 3 RoPE axes, got axes_dims {list(self.axes_dims)} "
                f"and axes_lens {list(self.axes_lens)}"
            )
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(
                f"sum(axes_dims) {sum(self.axes_dims)} != head_dim {self.head_dim} "
                f"(dim {self.dim} / n_heads {self.n_heads})"
            )
        if any(d % 2 for d in self.axes_dims):
            raise ValueError(f"every RoPE axis dim must be even, got {list(self.axes_dims)}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.f_patch_size != 1:
            raise ValueError(f"only f_patch_size 1 is supported, got {self.f_patch_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        # SwiGLU keeps the parameter count of a 4x MLP: int(dim * 8/3), e.g. 10240 for 3840.
        return int(self.dim / 3 * 8)

    @property
    def adaln_dim(self) -> int:
        # Width of the timestep conditioning vector (ADALN_EMBED_DIM = 256 in the reference).
        return min(self.dim, 256)

    @property
    def patch_dim(self) -> int:
        return self.f_patch_size * self.patch_size * self.patch_size * self.in_channels

    @property
    def patch_key(self) -> str:
        # Suffix of the checkpoint keys `all_x_embedder.2-1.*` / `all_final_layer.2-1.*`.
        return f"{self.patch_size}-{self.f_patch_size}"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TransformerParams:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        _check_unknown(cfg, {f.name for f in fields(cls)} | _TRANSFORMER_EXTRA_KEYS, "transformer")
        if cfg.pop("siglip_feat_dim", None) is not None:
            raise ValueError("transformer: siglip_feat_dim is set (Omni variant); not supported")
        for key, field in (("all_patch_size", "patch_size"), ("all_f_patch_size", "f_patch_size")):
            if key in cfg:
                sizes = list(cfg.pop(key))
                if len(sizes) != 1:
                    raise ValueError(f"transformer: need exactly one {key}, got {sizes}")
                cfg[field] = int(sizes[0])
        return cls(**cfg)

    @classmethod
    def from_json(cls, path: str | Path) -> TransformerParams:
        return cls.from_dict(_read_json(path))

    @classmethod
    def z_image_turbo(cls) -> TransformerParams:
        return cls()


# diffusers spells the patch sizes as lists; siglip_feat_dim exists only for the Omni variant.
_TRANSFORMER_EXTRA_KEYS = {"all_patch_size", "all_f_patch_size", "siglip_feat_dim"}


@dataclass(frozen=True)
class VaeParams:
    """The FLUX.1 VAE (diffusers `AutoencoderKL`, DownEncoderBlock2D/UpDecoderBlock2D stages)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # encoder resnets per stage; the decoder uses one more
    latent_channels: int = 16
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    scaling_factor: float = 0.3611
    shift_factor: float = 0.1159  # JSON null means 0

    def __post_init__(self) -> None:
        channels = tuple(int(c) for c in self.block_out_channels)
        object.__setattr__(self, "block_out_channels", channels)
        if not self.block_out_channels:
            raise ValueError("block_out_channels is empty")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels {list(self.block_out_channels)}: {ch} is not divisible "
                    f"by norm_num_groups {self.norm_num_groups}"
                )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.scaling_factor == 0:
            raise ValueError("scaling_factor must be non-zero")

    @property
    def downscale(self) -> int:
        # One stride-2 downsample per stage except the last: 8 for 4 stages.
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> VaeParams:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        _check_unknown(cfg, {f.name for f in fields(cls)} | set(_VAE_EXTRA_KEYS), "vae")
        n = len(cfg.get("block_out_channels", cls.block_out_channels))
        for key, want in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            if key in cfg and list(cfg[key]) != [want] * n:
                raise ValueError(f"vae: {key} must be {n} x {want}, got {cfg[key]}")
        if cfg.get("act_fn", "silu") != "silu":
            raise ValueError(f"vae: act_fn must be silu, got {cfg['act_fn']}")
        for key in ("latents_mean", "latents_std"):
            if cfg.get(key) is not None:
                raise ValueError(f"vae: {key} normalisation is not supported")
        if cfg.get("shift_factor", 0.0) is None:
            cfg["shift_factor"] = 0.0
        kwargs = {k: v for k, v in cfg.items() if k not in _VAE_EXTRA_KEYS}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> VaeParams:
        return cls.from_dict(_read_json(path))

    @classmethod
    def z_image_turbo(cls) -> VaeParams:
        return cls()


# Checked in from_dict (block types, act_fn, latents_mean/std) or irrelevant to the math
# (sample_size is a tiling hint, force_upcast a dtype hint for diffusers pipelines).
_VAE_EXTRA_KEYS = (
    "down_block_types",
    "up_block_types",
    "act_fn",
    "latents_mean",
    "latents_std",
    "sample_size",
    "force_upcast",
)


@dataclass(frozen=True)
class SchedulerParams:
    """FlowMatchEulerDiscreteScheduler settings (the only ones Z-Image uses)."""

    shift: float = 3.0
    num_train_timesteps: int = 1000
    use_dynamic_shifting: bool = False  # Turbo: false, so the pipeline's `mu` is ignored
    # Only used with dynamic shifting (diffusers defaults).
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> SchedulerParams:
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        _check_unknown(cfg, {f.name for f in fields(cls)} | set(_SCHEDULER_OFF), "scheduler")
        # Options that would change the sigma schedule: accepted only at their default value.
        for key, default in _SCHEDULER_OFF.items():
            value = cfg.pop(key, default)
            if value != default:
                raise ValueError(f"scheduler: {key}={value!r} is not supported")
        return cls(**cfg)

    @classmethod
    def from_json(cls, path: str | Path) -> SchedulerParams:
        return cls.from_dict(_read_json(path))

    @classmethod
    def z_image_turbo(cls) -> SchedulerParams:
        return cls()


_SCHEDULER_OFF = {
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}
