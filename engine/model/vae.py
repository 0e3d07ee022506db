"""FLUX.1 AutoencoderKL (16 latent channels, 8x downscale) with diffusers key names.

  encoder: conv_in -> down_blocks.N.{resnets.M, downsamplers.0.conv} -> mid_block
           -> conv_norm_out -> conv_out
  decoder: conv_in -> mid_block -> up_blocks.N.{resnets.M, upsamplers.0.conv}
           -> conv_norm_out -> conv_out
  mid_block = resnets.0, attentions.0 (single-head self-attention), resnets.1

`AutoEncoder.encode` / `decode` speak the transformer's latent space: scaled and shifted
(scaling_factor 0.3611, shift_factor 0.1159 for FLUX.1). For seamless textures every padded conv
can wrap around the image borders: `encode(..., wrap="xy")`, `decode(..., wrap="x")`; the wrap is
an argument of each call (WrapConv2d), not a mode the model is switched into.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import VaeParams
from engine.model.layers import attention

NORM_EPS = 1e-6  # every GroupNorm in this VAE


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=True)


def _pad_mode(axis: str, wrap: str) -> str:
    return "circular" if axis in wrap else "constant"


class WrapConv2d(nn.Conv2d):
    """nn.Conv2d (same keys) whose padding wraps around the borders on the axes named in `wrap`
    ("x": left/right, "y": top/bottom, "xy"; "" = zero padding, as trained). With every padded
    conv wrapping, a roll of the input by a multiple of the stride rolls the output exactly
    (GroupNorm and the attention are global), so the decoder sees the latent as a torus."""

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        if not wrap or self.padding == (0, 0):
            return super().forward(x)
        ph, pw = self.padding
        x = F.pad(x, (pw, pw, 0, 0), mode=_pad_mode("x", wrap))
        x = F.pad(x, (0, 0, ph, ph), mode=_pad_mode("y", wrap))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = WrapConv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = WrapConv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), wrap)
        h = self.conv2(F.silu(self.norm2(h)), wrap)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual.

    Keys: group_norm, to_q, to_k, to_v, to_out.0.
    """

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.group_norm = _norm(ch, groups)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(h).unsqueeze(2) for proj in (self.to_q, self.to_k, self.to_v))  # one head
        h = self.to_out[0](attention(q, k, v))
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        # Asymmetric pad (right and bottom only) before the stride-2 conv, as in diffusers/LDM.
        if not wrap:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        x = F.pad(x, (0, 1, 0, 0), mode=_pad_mode("x", wrap))
        return self.conv(F.pad(x, (0, 0, 0, 1), mode=_pad_mode("y", wrap)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = WrapConv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), wrap)


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_resnets: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_resnets)]
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, wrap)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, wrap)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, n_resnets: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_resnets)]
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, wrap)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, wrap)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups), ResnetBlock(ch, ch, groups)])
        self.attentions = nn.ModuleList([AttnBlock(ch, groups)]) if add_attention else None

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        x = self.resnets[0](x, wrap)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, wrap)


class Encoder(nn.Module):
    """image [B, 3, H, W] -> moments [B, 2 * latent_channels, H/8, W/8] (mean, logvar)."""

    def __init__(self, p: VaeParams):
        super().__init__()
        ch, g = p.block_out_channels, p.norm_num_groups
        self.conv_in = WrapConv2d(p.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [
                DownBlock(
                    ch[max(i - 1, 0)], ch[i], p.layers_per_block, g, downsample=i < len(ch) - 1
                )
                for i in range(len(ch))
            ]
        )
        self.mid_block = MidBlock(ch[-1], g, p.mid_block_add_attention)
        self.conv_norm_out = _norm(ch[-1], g)
        self.conv_out = WrapConv2d(ch[-1], 2 * p.latent_channels, 3, padding=1)

    def forward(self, x: Tensor, wrap: str = "") -> Tensor:
        x = self.conv_in(x, wrap)
        for block in self.down_blocks:
            x = block(x, wrap)
        x = self.mid_block(x, wrap)
        return self.conv_out(F.silu(self.conv_norm_out(x)), wrap)


class Decoder(nn.Module):
    """latent [B, latent_channels, h, w] (unscaled) -> image [B, 3, 8h, 8w] in about [-1, 1]."""

    def __init__(self, p: VaeParams):
        super().__init__()
        ch, g = tuple(reversed(p.block_out_channels)), p.norm_num_groups
        self.conv_in = WrapConv2d(p.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g, p.mid_block_add_attention)
        # One more resnet per stage than the encoder; up_blocks.0 works at the lowest resolution.
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(
                    ch[max(i - 1, 0)], ch[i], p.layers_per_block + 1, g, upsample=i < len(ch) - 1
                )
                for i in range(len(ch))
            ]
        )
        self.conv_norm_out = _norm(ch[-1], g)
        self.conv_out = WrapConv2d(ch[-1], p.out_channels, 3, padding=1)

    def forward(self, z: Tensor, wrap: str = "") -> Tensor:
        x = self.mid_block(self.conv_in(z, wrap), wrap)
        for block in self.up_blocks:
            x = block(x, wrap)
        return self.conv_out(F.silu(self.conv_norm_out(x)), wrap)


class AutoEncoder(nn.Module):
    def __init__(self, params: VaeParams):
        super().__init__()
        p = self.params = params
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        lc = p.latent_channels
        self.quant_conv = nn.Conv2d(2 * lc, 2 * lc, 1) if p.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lc, lc, 1) if p.use_post_quant_conv else None

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode(self, image: Tensor, noise: Tensor | None = None, wrap: str = "") -> Tensor:
        """image [B, 3, H, W] in [-1, 1] (H, W multiples of 8) -> float32 latent the transformer
        sees: (z - shift) * scale. Without `noise`, z is the posterior mean (mode); with `noise`
        ([B or N, 16, H/8, W/8], standard normal), z = mean + std * noise, a posterior sample as
        diffusers' `latent_dist.sample(generator)` draws it (logvar clamped to [-30, 20])."""
        _check_wrap(wrap)
        moments = self.encoder(image.to(self.dtype), wrap)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = (m.float() for m in moments.chunk(2, dim=1))
        z = mean
        if noise is not None:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            z = mean + std * noise.to(mean.device, torch.float32)
        return (z - self.params.shift_factor) * self.params.scaling_factor

    def decode(self, latents: Tensor, wrap: str = "") -> Tensor:
        """Transformer-space latents [B, 16, h, w] -> float32 image [B, 3, 8h, 8w], about [-1, 1]
        (not clamped). wrap: "" | "x" | "y" | "xy", the borders that wrap around (WrapConv2d)."""
        _check_wrap(wrap)
        z = latents.float() / self.params.scaling_factor + self.params.shift_factor
        z = z.to(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z, wrap).float()


def _check_wrap(wrap: str) -> None:
    if wrap not in ("", "x", "y", "xy"):
        raise ValueError(f"wrap must be '', 'x', 'y' or 'xy', got {wrap!r}")
