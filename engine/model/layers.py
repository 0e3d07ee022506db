"""Building blocks shared by the transformer and the VAE.

Numerics follow diffusers 0.42.1 (our parity oracle): RMSNorm variance, the timestep sinusoid and
the RoPE rotation are computed in float32 whatever the weights' dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The one attention funnel. q, k, v: [B, L, H, D] -> [B, L, H*D].

    No mask, ever: every caller attends over equal-length sequences (Z-Image attends its
    pad tokens by design). Swap the kernel here and nowhere else.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Variance in float32, then back to the weight dtype before the scale, as diffusers does
        # (the official code stays in bf16; expect bf16-level differences to it, not to diffusers).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(self.weight.dtype) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases. `fuse()` merges w1 and w3 into one matmul."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def fuse(self) -> None:
        if hasattr(self, "w13"):
            return
        self.w13 = _fused_linear(self.w1, self.w3)
        del self.w1, self.w3

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "w13"):
            a, b = self.w13(x).chunk(2, dim=-1)
        else:
            a, b = self.w1(x), self.w3(x)
        return self.w2(F.silu(a) * b)


def _fused_linear(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose output rows are the given Linears' rows stacked (biases must match)."""
    first = linears[0]
    has_bias = first.bias is not None
    out_features = sum(lin.out_features for lin in linears)
    # Built on meta and then assigned, so fusing a loaded model allocates only the fused weight.
    fused = nn.Linear(first.in_features, out_features, bias=has_bias, device="meta")
    with torch.no_grad():
        fused.weight = nn.Parameter(torch.cat([lin.weight for lin in linears]))
        if has_bias:
            fused.bias = nn.Parameter(torch.cat([lin.bias for lin in linears]))
    return fused


def rope_angles(pos: Tensor, axes_dims: tuple[int, ...], theta: float) -> Tensor:
    """Rotation angles for integer positions pos [N, n_axes] -> float32 [N, sum(axes_dims) // 2].

    Axis k rotates its dims in adjacent pairs with frequencies theta^(-2i/d_k). Like diffusers'
    tables we form pos * freq in float64 on the CPU and round once to float32, so angles match
    bit for bit (a float32 product would differ by ~1 ulp at large positions).
    """
    pos64 = pos.to(device="cpu", dtype=torch.float64)
    out = []
    for k, d in enumerate(axes_dims):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d))
        out.append(pos64[:, k : k + 1] * freqs[None])
    return torch.cat(out, dim=-1).float().to(pos.device)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, L, H, D] by angles given as cos/sin [L, D/2], pairs (x[2j], x[2j+1]).

    This is the real-valued form of diffusers' complex product x * e^{i angle}; it avoids complex
    tensors (unsupported on some backends) and runs in float32 like the reference.
    """
    x32 = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x32.unbind(-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t [B] -> float32 [B, dim], ordered [cos, sin] (not [sin, cos])."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def patchify(x: Tensor, ps: int) -> Tensor:
    """[B, C, H, W] -> tokens [B, (H/ps)(W/ps), ps*ps*C], row-major over the patch grid; each
    token's values ordered (ph, pw, c), channels fastest (unlike Flux's (c, ph, pw))."""
    B, C, H, W = x.shape
    patches = x.view(B, C, H // ps, ps, W // ps, ps).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(B, (H // ps) * (W // ps), ps * ps * C)


def unpatchify(tokens: Tensor, h_tok: int, w_tok: int, ps: int) -> Tensor:
    """The inverse of `patchify`: [B, h_tok * w_tok, ps*ps*C] -> [B, C, h_tok*ps, w_tok*ps]."""
    B = tokens.shape[0]
    x = tokens.view(B, h_tok, w_tok, ps, ps, -1).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, -1, h_tok * ps, w_tok * ps)
