"""Tiled VAE decode against the whole-image decode on the tiny random VAE."""

import pytest
import torch

from engine import memory
from engine.loading import load_vae
from engine.sources import resolve_model
from engine.tiled_vae import _starts, tiled_decode


@pytest.fixture(scope="module")
def vae(tiny_model_dir):
    src = resolve_model(str(tiny_model_dir))
    return load_vae(src.vae_config, src.vae_files, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def latents():
    return torch.randn(1, 16, 48, 80, generator=torch.Generator().manual_seed(0)) * 0.5


@torch.no_grad()
def test_one_tile_covering_the_image_is_exact(vae, latents):
    assert torch.equal(tiled_decode(vae, latents, tile=80, overlap=8), vae.decode(latents))


@torch.no_grad()
def test_tiles_blend_close_to_the_whole_decode(vae, latents):
    full = vae.decode(latents)
    tiled = tiled_decode(vae, latents, tile=32, overlap=8)
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()
    # Each tile sees its own GroupNorm statistics and attention context (a random VAE exaggerates
    # this), so close, not equal: mean error under 10% of the mean magnitude.
    err = (tiled - full).abs().mean() / full.abs().mean()
    assert err < 0.1, f"relative mean error {err:.3f}"
    # More overlap and bigger tiles get closer.
    err_small = (tiled_decode(vae, latents, tile=16, overlap=4) - full).abs().mean()
    assert (tiled - full).abs().mean() < err_small


@pytest.mark.parametrize("size,tile,overlap", [(48, 32, 8), (80, 32, 8), (100, 64, 8),
                                               (256, 64, 8), (65, 64, 8), (10, 64, 8)])
def test_tiles_cover_with_overlap(size, tile, overlap):
    starts = _starts(size, tile, overlap)
    assert starts[0] == 0 and min(s + tile for s in starts[-1:]) >= size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_pipeline_decodes_in_tiles_when_the_plan_says_so(vae, latents, monkeypatch):
    sizes = memory.z_image_turbo_sizes()
    plan = memory.make_plan("8gb", fp8=True, sizes=sizes)
    calls = []

    class Pipe:
        pass

    pipe = Pipe()
    pipe.vae, pipe.memory = vae, memory.MemoryState(plan=plan)
    import engine.tiled_vae as tv

    monkeypatch.setattr(tv, "tiled_decode", lambda *a, **k: calls.append(k) or "tiled")
    assert plan.tile_decode(1024, 1024)
    assert memory.decode_latents(pipe, torch.zeros(1, 16, 128, 128)) == "tiled"
    pipe.memory.plan = memory.make_plan("max", sizes=sizes)
    assert memory.decode_latents(pipe, latents[:, :, :8, :8]).shape == (1, 3, 64, 64)
    assert len(calls) == 1


def test_seamless_textures_are_never_decoded_in_tiles(monkeypatch):
    from types import SimpleNamespace

    import engine.tiled_vae as tv

    monkeypatch.setattr(tv, "tiled_decode", lambda *a, **k: "tiled")
    vae = SimpleNamespace(decode=lambda z, wrap="": f"whole {wrap}")
    pipe = SimpleNamespace(vae=vae, memory=memory.MemoryState(plan=memory.make_plan(
        "8gb", fp8=True, sizes=memory.z_image_turbo_sizes())))
    z = torch.zeros(1, 16, 128, 128)
    assert memory.decode_latents(pipe, z, wrap="xy") == "whole xy"
    assert memory.decode_latents(pipe, z) == "tiled"
