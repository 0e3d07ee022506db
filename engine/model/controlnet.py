"""Z-Image-Turbo-Fun-ControlNet-Union (alibaba-pai, VACE-style): the weights of diffusers'
ZImageControlNetModel, run the way the trainer ran them.

Module names equal the keys of the released single safetensors file:
  control_all_x_embedder.2-1           Linear(4 * control_in_dim -> dim): 2x2 patches of the
                                       control latents (control latent, mask, masked image)
  control_layers.K                     full modulated transformer blocks + after_proj (and
                                       before_proj on K = 0); hint K is added after main layer
                                       control_layers_places[K]
  control_noise_refiner.N              2.1: control blocks of the refiner stage (before_proj on 0)

It owns no embeddings: the base transformer's timestep embedding, pad token, refined streams and
RoPE tables are handed over by `ZImageTransformer.forward(control=Control(net, latents, scale))`,
which calls `embed`, `refine` and `layer_hints` at the points the trainer does.

Versions, told apart by the file's structure (diffusers' single-file rule for 2.0 vs 2.1):
  "2.1"  control_noise_refiner.0.before_proj present and non-zero: the refiner-stage hints come
         from control_noise_refiner (2.1 full: 15 control layers; lite: 3; tile as 2.1)
  "2.0"  control_noise_refiner.0.before_proj absent or all zero: the refiner-stage hints come
         from a first pass of control_layers (the trainer's `add_control_noise_refiner_correctly:
         false`, how 2.0 was trained); the file's control_noise_refiner tensors are unused
  "1.0"  control_noise_refiner blocks without projections: plain blocks, no refiner-stage hints
As the trainer (VideoX-Fun's ZImageControlTransformer2DModel, and ComfyUI) runs them, and unlike
diffusers 0.42.1, refiner-stage hints are added to the MAIN transformer's noise-refiner output, so
the main layers and the control layers both see them (shared/reference: controlnet-trainer.md).

Control layer placement is not stored in the file: the K control layers sit on main layers
0, s, 2s, ... with s = n_layers // K (15 of 30 -> 0, 2, ..., 28; lite 3 of 30 -> 0, 10, 20;
1.0's 6 of 30 -> 0, 5, ..., 25: the released configurations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.config import TransformerParams
from engine.model.layers import fuse_on_load, patchify
from engine.model.transformer import TransformerBlock


class ControlBlock(TransformerBlock):
    """A modulated transformer block on the control stream, with zero-initialised projections."""

    def __init__(self, p: TransformerParams, first: bool):
        super().__init__(p, modulation=True)
        self.before_proj = nn.Linear(p.dim, p.dim, bias=True) if first else None
        self.after_proj = nn.Linear(p.dim, p.dim, bias=True)


def _run_control(blocks, c: Tensor, x: Tensor, rope: tuple[Tensor, Tensor],
                 t_emb: Tensor) -> tuple[Tensor, list[Tensor]]:
    """c <- before_proj(c) + x at the first block; every block then emits after_proj(c)."""
    hints = []
    for block in blocks:
        if block.before_proj is not None:
            c = block.before_proj(c) + x
        c = TransformerBlock.forward(block, c, *rope, t_emb)
        hints.append(block.after_proj(c))
    return c, hints


class ZImageControlNet(nn.Module):
    def __init__(self, p: TransformerParams, *, control_in_dim: int, n_control_layers: int,
                 version: str, layers_places: list[int] | None = None):
        super().__init__()
        if version not in ("1.0", "2.0", "2.1"):
            raise ValueError(f"unknown ControlNet version {version!r}")
        self.params, self.version, self.control_in_dim = p, version, control_in_dim
        if layers_places is None:
            stride = p.n_layers // n_control_layers
            layers_places = [k * stride for k in range(n_control_layers)]
        if len(layers_places) != n_control_layers or layers_places[0] != 0:
            raise ValueError(f"control layer places {layers_places} do not fit "
                             f"{n_control_layers} control layers (the first must be 0)")
        self.layers_places = list(layers_places)
        self.refiner_places = list(range(p.n_refiner_layers))
        patch_in = p.f_patch_size * p.patch_size * p.patch_size * control_in_dim
        self.control_all_x_embedder = nn.ModuleDict(
            {p.patch_key: nn.Linear(patch_in, p.dim, bias=True)})
        self.control_layers = nn.ModuleList(
            [ControlBlock(p, first=k == 0) for k in range(n_control_layers)])
        if version == "2.1":
            self.control_noise_refiner = nn.ModuleList(
                [ControlBlock(p, first=k == 0) for k in range(p.n_refiner_layers)])
        elif version == "1.0":
            self.control_noise_refiner = nn.ModuleList(
                [TransformerBlock(p, modulation=True) for _ in range(p.n_refiner_layers)])
        else:
            self.control_noise_refiner = None
        fuse_on_load(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.control_all_x_embedder[self.params.patch_key].weight.dtype

    def embed(self, latents: Tensor, batch: int) -> Tensor:
        """Control latents [1 or B, control_in_dim, H, W] -> tokens [B, N_img, dim] (unpadded)."""
        tokens = patchify(latents.to(self.dtype), self.params.patch_size)
        return self.control_all_x_embedder[self.params.patch_key](tokens).expand(batch, -1, -1)

    def refine(self, c: Tensor, x: Tensor, rope_img: tuple[Tensor, Tensor],
               t_emb: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """The refiner stage on the padded control tokens c, with x = the main image stream after
        embedding and padding (before the main noise refiner). Returns the control stream for
        `layer_hints` and {main refiner layer: hint} (unscaled)."""
        if self.version == "1.0":
            for block in self.control_noise_refiner:
                c = block(c, *rope_img, t_emb)
            return c, {}
        blocks = self.control_noise_refiner if self.version == "2.1" else self.control_layers
        c, hints = _run_control(blocks, c, x, rope_img, t_emb)
        return c, {i: hints[k] for k, i in enumerate(self.refiner_places)}

    def layer_hints(self, c: Tensor, cap: Tensor, unified: Tensor,
                    rope_unified: tuple[Tensor, Tensor], t_emb: Tensor) -> dict[int, Tensor]:
        """The control layers on [control tokens, refined caption] with x = the main unified
        sequence; returns {main layer: hint} (unscaled)."""
        c = torch.cat([c, cap], dim=1)
        _, hints = _run_control(self.control_layers, c, unified, rope_unified, t_emb)
        return {i: hints[k] for k, i in enumerate(self.layers_places)}
