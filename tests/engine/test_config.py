"""engine.config: diffusers config.json reading, Turbo values, invariants."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import SchedulerParams, TransformerParams, VaeParams

# The Z-Image-Turbo config files as published (HF Tongyi-MAI/Z-Image-Turbo, via exact duplicates).
TURBO_TRANSFORMER = {
    "_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0.dev0",
    "all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512], "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16,
    "n_heads": 30, "n_kv_heads": 30, "n_layers": 30, "n_refiner_layers": 2, "norm_eps": 1e-05,
    "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0,
}
TURBO_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.36.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None,
    "latents_std": None, "layers_per_block": 2, "mid_block_add_attention": True,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False, "use_quant_conv": False,
}
TURBO_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.36.0.dev0",
    "num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0,
}


def _write(tmp_path, cfg, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def test_turbo_files_give_turbo_defaults(tmp_path):
    t = TransformerParams.from_json(_write(tmp_path, TURBO_TRANSFORMER, "t.json"))
    v = VaeParams.from_json(_write(tmp_path, TURBO_VAE, "v.json"))
    s = SchedulerParams.from_json(_write(tmp_path, TURBO_SCHEDULER, "s.json"))
    assert t == TransformerParams() == TransformerParams.z_image_turbo()
    assert v == VaeParams() == VaeParams.z_image_turbo()
    assert s == SchedulerParams() == SchedulerParams.z_image_turbo()
    assert (t.head_dim, t.ffn_hidden_dim, t.adaln_dim, t.patch_dim, t.patch_key) == (
        128, 10240, 256, 64, "2-1"
    )
    assert v.downscale == 8 and (v.scaling_factor, v.shift_factor) == (0.3611, 0.1159)
    assert s.shift == 3.0 and not s.use_dynamic_shifting


def test_round_trip_through_json(tmp_path):
    for cls, cfg in [
        (TransformerParams, dict(dim=96, n_heads=3, n_kv_heads=3, axes_dims=[8, 8, 16])),
        (VaeParams, dict(block_out_channels=[32, 64], norm_num_groups=16, shift_factor=0.0)),
        (SchedulerParams, dict(shift=1.5, use_dynamic_shifting=True)),
    ]:
        params = cls(**cfg)
        path = _write(tmp_path, dataclasses.asdict(params), f"{cls.__name__}.json")
        assert cls.from_json(path) == params


def test_lists_become_tuples_and_params_are_frozen():
    p = TransformerParams.from_dict({**TURBO_TRANSFORMER, "axes_dims": [32, 48, 48]})
    assert p.axes_dims == (32, 48, 48) and hash(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.dim = 1  # type: ignore[misc]


def test_vae_null_shift_factor_means_zero():
    assert VaeParams.from_dict({**TURBO_VAE, "shift_factor": None}).shift_factor == 0.0


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(axes_dims=[32, 48, 40]), "sum\\(axes_dims\\) 120 != head_dim 128"),
        (dict(dim=3841), "dim 3841 is not divisible by n_heads 30"),
        (dict(n_kv_heads=10), "n_kv_heads 10 != n_heads 30"),
        (dict(axes_dims=[64, 64], axes_lens=[1, 2]), "need 3 RoPE axes"),
        (dict(axes_dims=[31, 49, 48]), "must be even"),
        (dict(all_patch_size=[2, 4]), "exactly one all_patch_size"),
        (dict(all_f_patch_size=[2]), "f_patch_size 1"),
        (dict(siglip_feat_dim=1152), "Omni"),
        (dict(some_new_key=1), "unsupported config keys \\['some_new_key'\\]"),
    ],
)
def test_transformer_invariants(change, message):
    with pytest.raises(ValueError, match=message):
        TransformerParams.from_dict({**TURBO_TRANSFORMER, **change})


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(block_out_channels=[128, 256, 512, 250]), "250 is not divisible by norm_num_groups"),
        (dict(down_block_types=["DownEncoderBlock2D"] * 3), "down_block_types must be 4"),
        (dict(act_fn="gelu"), "act_fn"),
        (dict(latents_mean=[0.0] * 16), "latents_mean"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(foo=1), "unsupported config keys"),
    ],
)
def test_vae_invariants(change, message):
    with pytest.raises(ValueError, match=message):
        VaeParams.from_dict({**TURBO_VAE, **change})


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(use_karras_sigmas=True), "use_karras_sigmas"),
        (dict(invert_sigmas=True), "invert_sigmas"),
        (dict(shift=0.0), "shift must be > 0"),
        (dict(bar=1), "unsupported config keys"),
    ],
)
def test_scheduler_invariants(change, message):
    with pytest.raises(ValueError, match=message):
        SchedulerParams.from_dict({**TURBO_SCHEDULER, **change})


def test_scheduler_accepts_full_diffusers_default_config():
    from_diffusers = {
        **TURBO_SCHEDULER, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
        "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None,
        "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
        "time_shift_type": "exponential", "stochastic_sampling": False,
    }
    assert SchedulerParams.from_dict(from_diffusers) == SchedulerParams()


def test_not_an_object(tmp_path):
    with pytest.raises(ValueError, match="JSON object"):
        TransformerParams.from_json(_write(tmp_path, [1, 2]))
