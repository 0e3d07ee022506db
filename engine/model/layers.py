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
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases; w1 and w3 live fused as one matmul, w13."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden_dim, bias=False)  # checkpoint: w1, w3 (fuse_on_load)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


# Checkpoints store these projections apart; the modules hold them fused (one matmul each).
FUSED = {"attention.qkv.weight": ("attention.to_q.weight", "attention.to_k.weight",
                                  "attention.to_v.weight"),
         "feed_forward.w13.weight": ("feed_forward.w1.weight", "feed_forward.w3.weight")}


def fuse_on_load(module: nn.Module) -> nn.Module:
    """Let `module` (a model whose blocks have Attention/FeedForward) speak the checkpoints' key
    names: load_state_dict fuses to_q/to_k/to_v -> qkv and w1/w3 -> w13 (each part popped as soon
    as it is fused, so the peak is one fused weight more than the model), and state_dict shows the
    parts again (views of the fused weights). Forward has one path: the fused one."""

    def fuse(mod, state_dict, prefix, *args) -> None:
        for fused, parts in FUSED.items():
            first = "." + parts[0]
            for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(first)]:
                head = key[: -len(parts[0])]
                names = [head + part for part in parts]
                if all(n in state_dict for n in names):
                    state_dict[head + fused] = torch.cat([state_dict.pop(n) for n in names])

    def split(mod, state_dict, prefix, local_metadata) -> None:
        items = []
        for key, value in state_dict.items():
            fused = next((f for f in FUSED if key.startswith(prefix) and key.endswith("." + f)),
                         None)
            if fused is None:
                items.append((key, value))
                continue
            head, parts = key[: -len(fused)], FUSED[fused]
            items += [(head + part, chunk) for part, chunk in zip(parts, value.chunk(len(parts)))]
        state_dict.clear()
        state_dict.update(items)

    module.register_load_state_dict_pre_hook(fuse)
    module.register_state_dict_post_hook(split)
    return module


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
