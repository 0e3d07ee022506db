"""Z-Image S3-DiT: a single-stream DiT over [image tokens, caption tokens].

Module names equal the diffusers checkpoint keys, so the HF shards load with strict=True:
  t_embedder.mlp.{0,2}        timestep MLP (256 -> 1024 -> adaln_dim)
  all_x_embedder.2-1          2x2 latent patch -> dim
  cap_embedder.{0,1}          RMSNorm + Linear on the Qwen3 features
  x_pad_token, cap_pad_token  learned pad rows (each stream padded to a multiple of 32)
  noise_refiner.*             modulated blocks on image tokens only
  context_refiner.*           unmodulated blocks on caption tokens only
  layers.*                    modulated blocks on the unified sequence
  all_final_layer.2-1         LayerNorm * (1 + scale) -> Linear to patch values

Output convention (as diffusers): the model predicts x0 - noise; the sampler negates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import TransformerParams
from engine.model.layers import (
    FeedForward,
    RMSNorm,
    apply_rope,
    attention,
    fuse_on_load,
    patchify,
    rope_angles,
    timestep_embedding,
    unpatchify,
)

SEQ_MULTIPLE = 32  # both streams are padded to this length multiple with learned pad tokens
T_FREQ_DIM = 256  # sinusoid width fed to the timestep MLP
T_HIDDEN_DIM = 1024  # hidden width of the timestep MLP (fixed, independent of dim)
QK_NORM_EPS = 1e-5  # diffusers hard-codes this for norm_q/norm_k, independent of norm_eps
FINAL_NORM_EPS = 1e-6


class Attention(nn.Module):
    """Self-attention with per-head RMSNorm on q and k, then RoPE. Keys: to_q/to_k/to_v (held
    fused as qkv, see layers.fuse_on_load), to_out.0, norm_q, norm_k."""

    def __init__(self, dim: int, n_heads: int, qk_norm: bool):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])  # key "to_out.0"
        self.norm_q = RMSNorm(dim // n_heads, eps=QK_NORM_EPS) if qk_norm else None
        self.norm_k = RMSNorm(dim // n_heads, eps=QK_NORM_EPS) if qk_norm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).unbind(-3)  # [B, L, H, D]
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        # RoPE in float32; cast back to v's dtype (an fp32 RMSNorm weight would otherwise leak).
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        return self.to_out[0](attention(q, k, v))


class TransformerBlock(nn.Module):
    """Sandwich-norm block: x += gate * norm2(sublayer(norm1(x) * scale)) for attention and FFN.

    Modulated blocks take (scale, gate) pairs from Linear(t_emb): no shift, no SiLU before the
    Linear, scale enters as 1 + s and gates as tanh(g). Unmodulated blocks use scale = gate = 1.
    """

    def __init__(self, p: TransformerParams, modulation: bool):
        super().__init__()
        self.attention = Attention(p.dim, p.n_heads, p.qk_norm)
        self.feed_forward = FeedForward(p.dim, p.ffn_hidden_dim)
        self.attention_norm1 = RMSNorm(p.dim, eps=p.norm_eps)
        self.ffn_norm1 = RMSNorm(p.dim, eps=p.norm_eps)
        self.attention_norm2 = RMSNorm(p.dim, eps=p.norm_eps)
        self.ffn_norm2 = RMSNorm(p.dim, eps=p.norm_eps)
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.Linear(p.adaln_dim, 4 * p.dim, bias=True))
        else:
            self.adaLN_modulation = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, t_emb: Tensor | None = None) -> Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), cos, sin))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        mod = self.adaLN_modulation(t_emb)[:, None]  # [B, 1, 4 * dim], broadcast over tokens
        scale_msa, gate_msa, scale_mlp, gate_mlp = mod.chunk(4, dim=-1)
        attn_out = self.attention(self.attention_norm1(x) * (1.0 + scale_msa), cos, sin)
        x = x + gate_msa.tanh() * self.attention_norm2(attn_out)
        ffn_out = self.feed_forward(self.ffn_norm1(x) * (1.0 + scale_mlp))
        return x + gate_mlp.tanh() * self.ffn_norm2(ffn_out)


class TimestepEmbedder(nn.Module):
    def __init__(self, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(T_FREQ_DIM, T_HIDDEN_DIM, bias=True),
            nn.SiLU(),
            nn.Linear(T_HIDDEN_DIM, out_dim, bias=True),
        )

    def forward(self, t: Tensor) -> Tensor:
        # The sinusoid is float32 whatever the weights are; only then cast to the MLP dtype.
        return self.mlp(timestep_embedding(t, T_FREQ_DIM).to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) * (1 + Linear(SiLU(t_emb))) -> Linear.

    Keys: linear, adaLN_modulation.1 (index 0 is the parameter-free SiLU).
    """

    def __init__(self, dim: int, adaln_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim, bias=True))

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        scale = 1.0 + self.adaLN_modulation(t_emb)[:, None]
        x = F.layer_norm(x, (x.shape[-1],), eps=FINAL_NORM_EPS) * scale
        return self.linear(x)


class ControlNet(Protocol):
    """What the forward pass needs of a ControlNet (engine.model.controlnet.ZImageControlNet)."""

    def embed(self, latents: Tensor, batch: int) -> Tensor: ...

    def refine(self, c: Tensor, x: Tensor, rope_img: tuple[Tensor, Tensor],
               t_emb: Tensor) -> tuple[Tensor, dict[int, Tensor]]: ...

    def layer_hints(self, c: Tensor, cap: Tensor, unified: Tensor,
                    rope_unified: tuple[Tensor, Tensor], t_emb: Tensor) -> dict[int, Tensor]: ...


@dataclass
class Control:
    """A ControlNet's input for one forward: the net, its control latents [1 or B, C, H, W] (the
    image latents' H, W) and the conditioning scale its hints are multiplied by."""

    net: ControlNet
    latents: Tensor
    scale: float = 1.0


class ZImageTransformer(nn.Module):
    def __init__(self, params: TransformerParams):
        super().__init__()
        p = self.params = params
        self.t_embedder = TimestepEmbedder(p.adaln_dim)
        self.all_x_embedder = nn.ModuleDict({p.patch_key: nn.Linear(p.patch_dim, p.dim, bias=True)})
        self.cap_embedder = nn.Sequential(
            RMSNorm(p.cap_feat_dim, eps=p.norm_eps), nn.Linear(p.cap_feat_dim, p.dim, bias=True)
        )
        self.x_pad_token = nn.Parameter(torch.zeros(1, p.dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, p.dim))
        self.noise_refiner = nn.ModuleList(
            [TransformerBlock(p, modulation=True) for _ in range(p.n_refiner_layers)]
        )
        self.context_refiner = nn.ModuleList(
            [TransformerBlock(p, modulation=False) for _ in range(p.n_refiner_layers)]
        )
        self.layers = nn.ModuleList(
            [TransformerBlock(p, modulation=True) for _ in range(p.n_layers)]
        )
        self.all_final_layer = nn.ModuleDict(
            {p.patch_key: FinalLayer(p.dim, p.adaln_dim, p.patch_dim)}
        )
        # RoPE cos/sin depend only on (caption length, latent grid, device): computed lazily,
        # shared by every block, never part of the state dict. One entry is enough per run.
        self._rope_cache: tuple[tuple, tuple[Tensor, ...]] | None = None
        fuse_on_load(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_pad_token.dtype

    @property
    def device(self) -> torch.device:
        return self.x_pad_token.device

    def _rope(
        self, cap_len: int, h_tok: int, w_tok: int, device: torch.device
    ) -> tuple[Tensor, ...]:
        """cos/sin for the image stream and the caption stream (position ids as diffusers):
        caption token i -> (1 + i, 0, 0); image token (h, w) -> (cap_len + 1, h, w);
        image pad tokens -> (0, 0, 0). cap_len is the padded caption length.
        """
        key = (cap_len, h_tok, w_tok, device)
        if self._rope_cache is not None and self._rope_cache[0] == key:
            return self._rope_cache[1]
        p = self.params
        need = (cap_len + 2, h_tok, w_tok)
        if any(n > limit for n, limit in zip(need, p.axes_lens)):
            raise ValueError(
                f"positions {need} (caption+2, rows, cols in tokens) exceed "
                f"axes_lens {list(p.axes_lens)}"
            )
        n_img = h_tok * w_tok
        cpu = torch.device("cpu")
        img_pos = torch.zeros(_round_up(n_img), 3, dtype=torch.int64, device=cpu)
        img_pos[:n_img, 0] = cap_len + 1
        img_pos[:n_img, 1] = torch.arange(h_tok, device=cpu).repeat_interleave(w_tok)
        img_pos[:n_img, 2] = torch.arange(w_tok, device=cpu).repeat(h_tok)
        cap_pos = torch.zeros(cap_len, 3, dtype=torch.int64, device=cpu)
        cap_pos[:, 0] = torch.arange(1, cap_len + 1, device=cpu)
        tables = []
        for pos in (img_pos, cap_pos):
            angles = rope_angles(pos, p.axes_dims, p.rope_theta).to(device)
            tables += [angles.cos(), angles.sin()]
        self._rope_cache = (key, tuple(tables))
        return self._rope_cache[1]

    def forward(self, x: Tensor, t: Tensor, cap_feats: Tensor,
                control: Control | None = None) -> Tensor:
        """x: latents [B, C, H, W] (H, W multiples of patch_size); t: [B] = 1 - sigma in [0, 1];
        cap_feats: [B or 1, L, cap_feat_dim], one caption length for the whole batch (so no mask);
        control: a ControlNet and its latents. As the released ControlNets were trained
        (VideoX-Fun), its refiner-stage hints are added after this model's noise-refiner layers
        and its layer hints after the main layers, each times the scale.
        Returns [B, C, H, W] in x's dtype: diffusers' raw output (x0 - noise), not negated.
        """
        p = self.params
        B, C, H, W = x.shape
        ps = p.patch_size
        if C != p.in_channels or H % ps or W % ps:
            raise ValueError(
                f"latents {list(x.shape)}: need {p.in_channels} channels and H, W multiples of {ps}"
            )
        if (
            cap_feats.ndim != 3
            or cap_feats.shape[0] not in (1, B)
            or cap_feats.shape[2] != p.cap_feat_dim
        ):
            raise ValueError(
                f"cap_feats {list(cap_feats.shape)}: need [{B} or 1, L, {p.cap_feat_dim}]"
            )
        out_dtype, dtype = x.dtype, self.dtype
        h_tok, w_tok = H // ps, W // ps
        n_img = h_tok * w_tok
        cap_len = _round_up(cap_feats.shape[1])
        cos_img, sin_img, cos_cap, sin_cap = self._rope(cap_len, h_tok, w_tok, x.device)
        rope_img = (cos_img, sin_img)

        t_emb = self.t_embedder(t.reshape(-1).expand(B).float() * p.t_scale).to(dtype)

        img = self.all_x_embedder[p.patch_key](patchify(x.to(dtype), ps))
        img = pad_with(img, self.x_pad_token)
        refiner_hints: dict[int, Tensor] = {}
        if control is not None:
            net = control.net
            c = pad_with(net.embed(control.latents, B), self.x_pad_token)
            c, refiner_hints = net.refine(c, img, rope_img, t_emb)
        for i, block in enumerate(self.noise_refiner):
            img = block(img, *rope_img, t_emb)
            if i in refiner_hints:
                img = img + refiner_hints[i] * control.scale

        cap = self.cap_embedder(cap_feats.to(dtype)).expand(B, -1, -1)
        cap = pad_with(cap, self.cap_pad_token)
        for block in self.context_refiner:
            cap = block(cap, cos_cap, sin_cap)

        # Unified sequence: image tokens first (padded), then caption tokens (padded).
        xs = torch.cat([img, cap], dim=1)
        rope = (torch.cat([cos_img, cos_cap]), torch.cat([sin_img, sin_cap]))
        layer_hints: dict[int, Tensor] = {}
        if control is not None:
            layer_hints = net.layer_hints(c, cap, xs, rope, t_emb)
        for i, block in enumerate(self.layers):
            xs = block(xs, *rope, t_emb)
            if i in layer_hints:
                xs = xs + layer_hints[i] * control.scale

        out = self.all_final_layer[p.patch_key](xs[:, :n_img], t_emb)
        return unpatchify(out, h_tok, w_tok, ps).to(out_dtype)


def _round_up(n: int) -> int:
    return -(-n // SEQ_MULTIPLE) * SEQ_MULTIPLE


def pad_with(tokens: Tensor, pad_token: Tensor) -> Tensor:
    """Append copies of the learned pad token up to the next multiple of SEQ_MULTIPLE."""
    B, n, dim = tokens.shape
    n_pad = _round_up(n) - n
    if n_pad == 0:
        return tokens
    return torch.cat([tokens, pad_token.to(tokens.dtype).expand(B, n_pad, dim)], dim=1)
