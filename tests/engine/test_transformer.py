"""Parity of engine.model.transformer against diffusers' ZImageTransformer2DModel (the oracle).

Both models are tiny, built in memory, with EVERY parameter randomised (diffusers zeroes the pad
tokens and some layers, which would hide bugs in padding and modulation).
"""

from __future__ import annotations

import pytest
import torch

from engine.config import TransformerParams
from engine.model.transformer import ZImageTransformer
from engine.tiny import randomize_  # the one randomiser: nothing left at zero

diffusers = pytest.importorskip("diffusers")

TINY = dict(dim=64, n_heads=2, n_kv_heads=2, n_layers=2, n_refiner_layers=2, cap_feat_dim=32,
            axes_dims=[8, 12, 12], axes_lens=[128, 32, 32])
# Non-default shape so nothing is secretly hard-coded: 3 heads of 32, one main layer.
ODD = dict(dim=96, n_heads=3, n_kv_heads=3, n_layers=1, n_refiner_layers=1, cap_feat_dim=48,
           axes_dims=[8, 8, 16], axes_lens=[128, 32, 32], rope_theta=100.0, norm_eps=1e-6)


def _pair(cfg: dict, seed: int = 0):
    from diffusers import ZImageTransformer2DModel

    ref = ZImageTransformer2DModel(in_channels=16, **cfg).float().eval()
    randomize_(ref, seed)
    params = TransformerParams(**cfg)
    with torch.device("meta"):
        ours = ZImageTransformer(params)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def tiny():
    return _pair(TINY)


def _ref_forward(ref, x, t, cap):
    """What the diffusers pipeline does: lists of [C, 1, H, W] latents and [L, D] captions."""
    xs = list(x.unsqueeze(2).unbind(0))
    caps = [cap[0]] * x.shape[0] if cap.shape[0] == 1 else list(cap.unbind(0))
    out = ref(xs, t, caps, return_dict=False)[0]
    return torch.stack(out).squeeze(2)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "cap_len,hw,batch",
    [(7, (8, 8), 1), (32, (6, 10), 1), (45, (8, 8), 2), (45, (10, 6), 2), (32, (16, 16), 1)],
)
def test_parity_with_diffusers(tiny, cap_len, hw, batch):
    ref, ours = tiny
    torch.manual_seed(cap_len + hw[0])
    x = torch.randn(batch, 16, *hw)
    t = torch.rand(batch)
    cap = torch.randn(1, cap_len, 32)  # one caption for the whole batch
    with torch.no_grad():
        want = _ref_forward(ref, x, t, cap)
        got = ours(x, t, cap)
    assert got.shape == want.shape == x.shape
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("t_value", [0.0, 0.3, 1.0])
def test_parity_t_values(tiny, t_value):
    ref, ours = tiny
    torch.manual_seed(1)
    x, cap = torch.randn(2, 16, 8, 8), torch.randn(2, 13, 32)  # per-item captions, same length
    t = torch.full((2,), t_value)
    with torch.no_grad():
        assert _rel(ours(x, t, cap), _ref_forward(ref, x, t, cap)) <= 1e-5


def test_parity_non_default_config():
    ref, ours = _pair(ODD, seed=3)
    torch.manual_seed(2)
    x, t, cap = torch.randn(1, 16, 6, 4), torch.tensor([0.7]), torch.randn(1, 40, 48)
    with torch.no_grad():
        assert _rel(ours(x, t, cap), _ref_forward(ref, x, t, cap)) <= 1e-5


def test_projections_are_fused_and_the_state_dict_keeps_checkpoint_keys(tiny):
    ref, ours = tiny
    block = ours.layers[0]
    assert block.attention.qkv.weight.shape == (3 * 64, 64)
    assert block.feed_forward.w13.weight.shape[0] == 2 * block.feed_forward.w2.weight.shape[1]
    assert not hasattr(block.attention, "to_q") and not hasattr(block.feed_forward, "w1")
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert sorted(ours_sd) == sorted(ref_sd)  # the checkpoint's names
    assert all(torch.equal(ours_sd[k], ref_sd[k]) for k in ref_sd)
    again = ZImageTransformer(ours.params)
    again.load_state_dict(ours_sd)  # round trip
    assert torch.equal(again.layers[0].attention.qkv.weight, block.attention.qkv.weight)


def test_bf16_matches_diffusers_bf16_and_keeps_input_dtype():
    import warnings

    ref, ours = _pair(TINY, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ours = ref.to(torch.bfloat16), ours.to(torch.bfloat16)
    torch.manual_seed(6)
    x, t, cap = torch.randn(2, 16, 6, 10), torch.rand(2), torch.randn(1, 45, 32)
    with torch.no_grad():
        want = _ref_forward(ref, x.bfloat16(), t, cap.bfloat16())
        got = ours(x.bfloat16(), t, cap.bfloat16())
        from_fp32 = ours(x, t, cap)
    assert got.dtype == torch.bfloat16 and from_fp32.dtype == torch.float32
    # Same op order and upcasts as diffusers: bit-exact on CPU today; allow bf16 noise.
    assert _rel(got.float(), want.float()) <= 1e-3


def test_meta_construction_has_no_buffers_and_all_keys():
    with torch.device("meta"):
        model = ZImageTransformer(TransformerParams(**TINY))
    assert list(model.buffers()) == []
    keys = set(model.state_dict())
    for key in [
        "all_x_embedder.2-1.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias",
        "cap_embedder.0.weight", "cap_embedder.1.weight", "x_pad_token", "cap_pad_token",
        "noise_refiner.1.adaLN_modulation.0.weight", "context_refiner.0.attention.norm_k.weight",
        "layers.1.attention.to_out.0.weight", "layers.0.feed_forward.w3.weight",
        "all_final_layer.2-1.linear.weight", "all_final_layer.2-1.adaLN_modulation.1.bias",
    ]:
        assert key in keys
    assert not any(k.startswith("context_refiner") and "adaLN" in k for k in keys)


def test_bad_inputs_raise(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="multiples of 2"):
        ours(torch.randn(1, 16, 7, 8), torch.rand(1), torch.randn(1, 7, 32))
    with pytest.raises(ValueError, match="cap_feats"):
        ours(torch.randn(1, 16, 8, 8), torch.rand(1), torch.randn(1, 7, 31))
    with pytest.raises(ValueError, match="axes_lens"):
        ours(torch.randn(1, 16, 66, 8), torch.rand(1), torch.randn(1, 7, 32))
