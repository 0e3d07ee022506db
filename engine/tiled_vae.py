"""Tiled VAE decode for large images (4-6 MP): overlapping latent tiles, linearly blended.

Each tile is decoded on its own, so the decoder's GroupNorm statistics and its mid-block attention
see only the tile: the result is close to, not equal to, a whole-image decode (the usual trade of
tiled decoders). Where one tile covers the whole latent the result is exactly the whole decode.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, size) with tiles of `tile` that overlap by at least `overlap`."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    n = -(-(size - overlap) // stride)  # ceil
    # Spread the tiles evenly; the last one ends exactly at `size`.
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(length: int, start: int, size: int, tile_starts: list[int], tile: int,
          scale: int) -> Tensor:
    """1-D blend weights (in pixels) for a tile at `start`: linear ramps where it overlaps its
    neighbours, 1 elsewhere. Positive everywhere so the normalisation never divides by 0."""
    w = torch.ones(length * scale)
    i = tile_starts.index(start)
    if i > 0:  # overlap with the previous tile on the low side
        ov = (tile_starts[i - 1] + tile - start) * scale
        if ov > 0:
            w[:ov] = torch.linspace(0, 1, ov + 2)[1:-1]
    if i < len(tile_starts) - 1:
        ov = (start + tile - tile_starts[i + 1]) * scale
        if ov > 0:
            w[-ov:] = torch.minimum(w[-ov:], torch.linspace(1, 0, ov + 2)[1:-1])
    return w


@torch.no_grad()
def tiled_decode(vae, latents: Tensor, tile: int = 64, overlap: int = 8) -> Tensor:
    """Transformer-space latents [B, 16, h, w] -> float32 image [B, 3, 8h, 8w], like vae.decode.

    tile, overlap: in latent cells (8 pixels each). Tiles are blended with linear ramps across the
    overlap; memory is that of one tile's decode plus the float32 output image.
    """
    if overlap < 0 or tile <= overlap:
        raise ValueError(f"need 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    B, _, h, w = latents.shape
    if h <= tile and w <= tile:
        return vae.decode(latents)
    scale = 8
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    out = torch.zeros(B, 3, h * scale, w * scale, dtype=torch.float32, device=latents.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=latents.device)
    for y in ys:
        th = min(tile, h - y)
        wy = _ramp(th, y, h, ys, tile, scale)
        for x in xs:
            tw = min(tile, w - x)
            wx = _ramp(tw, x, w, xs, tile, scale)
            piece = vae.decode(latents[:, :, y:y + th, x:x + tw])
            wt = (wy[:, None] * wx[None, :]).to(out.device)
            py, px = y * scale, x * scale
            out[:, :, py:py + th * scale, px:px + tw * scale] += piece.float() * wt
            weight[:, :, py:py + th * scale, px:px + tw * scale] += wt
    return out / weight
