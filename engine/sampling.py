"""Flow-matching Euler sampling for Z-Image-Turbo, as pure functions.

Conventions (diffusers' ZImagePipeline and the official repo agree):
- x_sigma = (1 - sigma) * x0 + sigma * noise; sigma runs from 1 (noise) down to 0 (image).
- The transformer is fed t = 1 - sigma and predicts (x0 - noise), the *negated* velocity,
  so the Euler step is x <- x + (sigma_next - sigma) * (-out).
- Latents stay float32 between steps; only the transformer input is cast to the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LATENT_CHANNELS = 16
VAE_SCALE = 8  # pixels per latent cell
PATCH = 2  # latent cells per DiT token side, so image sides are multiples of 16


# (x float32, t [B]) -> the transformer's output for those latents
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_noise(seed: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 16, H/8, W/8] float32 noise from a CPU generator: one seed, one image, on every device."""
    return get_noises(seed, height, width, 1, device)[0]


def get_noises(seed: int, height: int, width: int, count: int,
               device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """`count` consecutive [1, 16, H/8, W/8] draws from one CPU generator seeded with `seed`; the
    first is `get_noise(seed, ...)`. Image-conditioned modes draw the VAE posterior sample first and
    the starting noise second, in the order diffusers' img2img/inpaint pipelines use a generator."""
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
    return [torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
            for _ in range(count)]


def get_schedule(steps: int, shift: float) -> list[float]:
    """Shifted sigmas for `steps` Euler steps plus the terminal 0 (steps + 1 values).

    Computed in float32 in the same order as diffusers' FlowMatchEulerDiscreteScheduler so the
    model sees bit-identical timesteps.
    """
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas.tolist() + [0.0]


def cut_schedule(sigmas: list[float], strength: float) -> list[float]:
    """Image-to-image: keep the last `strength` part of an N-step schedule (N + 1 sigmas).

    As diffusers' ZImageImg2ImgPipeline.get_timesteps: t_start = int(N - min(N * strength, N)),
    the kept sigmas are sigmas[t_start:]. strength 1 keeps everything (pure noise start); strength
    0 keeps only the terminal 0 (no steps: the input comes back through the VAE).
    """
    n = len(sigmas) - 1
    init_timestep = min(n * strength, n)
    t_start = int(max(n - init_timestep, 0))
    return sigmas[t_start:]


def scale_noise(image_latents: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching forward process at `sigma` (diffusers' scheduler.scale_noise)."""
    s = torch.tensor(sigma, dtype=torch.float32)
    return s * noise + (1.0 - s) * image_latents


def tile_shift(call: int, steps: int, height: int, width: int, axes: str) -> tuple[int, int]:
    """The latent roll (dy, dx) for seamless textures at model call `call` of `steps`.

    The offsets walk evenly around the torus, in whole DiT patches (PATCH latent cells), so the
    image border (where the model never saw wrap-around neighbours) sits somewhere else at every
    step; step 0 is not rolled. Rolling by whole patches keeps the patch grid aligned.
    """
    def offset(n_cells: int, phase: float) -> int:
        n_tok = n_cells // PATCH
        return (int((call * n_tok) // max(steps, 1) + phase * n_tok) % n_tok) * PATCH

    dy = offset(height, 0.0) if "y" in axes else 0
    dx = offset(width, 0.5 if call else 0.0) if "x" in axes else 0
    return dy, dx


def seamless(model: Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor],
             steps: int, axes: str) -> Velocity:
    """Wrap `model(x, t, shift)` for seamless textures: each call rolls the latents by
    `tile_shift(call, ...)`, runs the model on the rolled latents (it gets the shift, to roll any
    spatial conditioning the same way) and rolls the prediction back."""
    calls = [0]

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dy, dx = tile_shift(calls[0], steps, x.shape[-2], x.shape[-1], axes)
        calls[0] += 1
        if dy == dx == 0:
            return model(x, t, (0, 0))
        out = model(torch.roll(x, (dy, dx), dims=(-2, -1)), t, (dy, dx))
        return torch.roll(out, (-dy, -dx), dims=(-2, -1))

    return velocity


def model_time(sigma: float) -> torch.Tensor:
    """The transformer's timestep for a sigma: 1 - sigma, via the 1000-step grid like diffusers."""
    timestep = torch.tensor(sigma, dtype=torch.float32) * 1000
    return (1000 - timestep) / 1000


def denoise(
    model: Velocity,
    x: torch.Tensor,
    sigmas: list[float],
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Euler integration from sigmas[0] to sigmas[-1].

    `after_step(i, x) -> x` may replace the latents after step i (inpainting's latent blend).
    `on_step(i, x, x0)` runs after step i with the new latents and the step's estimate of the clean
    latents (x0 = x_sigma + sigma * out, what previews show); it may raise to stop (cancellation).
    """
    x = x.to(torch.float32)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        t = model_time(sigma).expand(x.shape[0]).to(x.device)
        out = model(x, t).to(torch.float32)
        if on_step is not None:
            x0 = x + sigma * out
        x = x + (sigma_next - sigma) * -out
        if after_step is not None:
            x = after_step(i, x)
        if on_step is not None:
            on_step(i, x, x0)
    return x
