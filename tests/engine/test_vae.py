"""Parity of engine.model.vae against diffusers' AutoencoderKL (the oracle), built in memory."""

from __future__ import annotations

import pytest
import torch

from engine.config import VaeParams
from engine.model.vae import AutoEncoder
from engine.tiny import randomize_  # the one randomiser: nothing left at zero

diffusers = pytest.importorskip("diffusers")

TINY = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=16,
            norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=0.3611, shift_factor=0.1159)
# Non-default: 3 stages of different widths, 2 resnets, quant convs, no mid attention.
ODD = dict(block_out_channels=[16, 32, 48], layers_per_block=2, latent_channels=4,
           norm_num_groups=8, use_quant_conv=True, use_post_quant_conv=True,
           mid_block_add_attention=False, scaling_factor=0.5, shift_factor=-0.2)


def _pair(cfg: dict, seed: int = 0):
    from diffusers import AutoencoderKL

    n = len(cfg["block_out_channels"])
    ref = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n, **cfg,
    ).float().eval()
    randomize_(ref, seed)
    params = VaeParams.from_dict(dict(ref.config))
    with torch.device("meta"):
        ours = AutoEncoder(params)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ref, ours.eval()


@pytest.fixture(scope="module")
def tiny():
    return _pair(TINY)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _ref_decode(ref, latents):
    """What the diffusers Z-Image pipeline does before vae.decode."""
    z = latents / ref.config.scaling_factor + ref.config.shift_factor
    return ref.decode(z, return_dict=False)[0]


def _ref_encode(ref, image):
    mean = ref.encode(image).latent_dist.mode()
    return (mean - ref.config.shift_factor) * ref.config.scaling_factor


@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_decode_parity(tiny, hw):
    ref, ours = tiny
    torch.manual_seed(0)
    latents = torch.randn(2, 16, *hw)
    with torch.no_grad():
        want, got = _ref_decode(ref, latents), ours.decode(latents)
    assert got.shape == want.shape == (2, 3, 8 * hw[0], 8 * hw[1])
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_encode_parity(tiny, hw):
    ref, ours = tiny
    torch.manual_seed(1)
    image = torch.rand(1, 3, *hw) * 2 - 1
    with torch.no_grad():
        want, got = _ref_encode(ref, image), ours.encode(image)
    assert got.shape == want.shape == (1, 16, hw[0] // 8, hw[1] // 8)
    assert _rel(got, want) <= 1e-5


def test_non_default_config_parity():
    ref, ours = _pair(ODD, seed=2)
    assert ours.quant_conv is not None and ours.decoder.mid_block.attentions is None
    torch.manual_seed(2)
    latents, image = torch.randn(1, 4, 3, 5), torch.rand(1, 3, 16, 20) * 2 - 1
    with torch.no_grad():
        assert _rel(ours.decode(latents), _ref_decode(ref, latents)) <= 1e-5
        assert _rel(ours.encode(image), _ref_encode(ref, image)) <= 1e-5


def test_circular_padding_makes_output_tileable(tiny):
    _, ours = tiny
    torch.manual_seed(3)
    latents = torch.randn(1, 16, 4, 6)
    with torch.no_grad():
        out = ours.decode(latents, wrap="xy")
        # Rolling the latent by one cell rolls the image by 8 pixels exactly when borders wrap.
        rolled = ours.decode(latents.roll(1, dims=-1), wrap="xy")
        assert _rel(rolled, out.roll(8, dims=-1)) <= 1e-5
        # ...and not with zero padding.
        zero_rolled = ours.decode(latents.roll(1, dims=-1))
        assert _rel(zero_rolled, ours.decode(latents).roll(8, dims=-1)) > 1e-3
    with pytest.raises(ValueError, match="reflect"):
        ours.decode(latents, wrap="reflect")


def test_meta_construction_has_no_buffers():
    with torch.device("meta"):
        model = AutoEncoder(VaeParams())
    assert list(model.buffers()) == []
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 83_819_683  # FLUX.1 VAE, as logged by third-party loaders
    keys = set(model.state_dict())
    for key in [
        "encoder.down_blocks.0.downsamplers.0.conv.weight",
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
        "encoder.mid_block.attentions.0.to_out.0.bias",
        "decoder.up_blocks.3.resnets.2.conv2.weight",
        "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.conv_norm_out.weight",
    ]:
        assert key in keys
    assert not any("quant_conv" in k for k in keys)
