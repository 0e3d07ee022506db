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


def get_noise(seed: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, 16, H/8, W/8] float32 noise from a CPU generator: one seed, one image, on every device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (1, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def get_schedule(steps: int, shift: float) -> list[float]:
    """Shifted sigmas for `steps` Euler steps plus the terminal 0 (steps + 1 values).

    Computed in float32 in the same order as diffusers' FlowMatchEulerDiscreteScheduler so the
    model sees bit-identical timesteps.
    """
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas.tolist() + [0.0]


def model_time(sigma: float) -> torch.Tensor:
    """The transformer's timestep for a sigma: 1 - sigma, via the 1000-step grid like diffusers."""
    timestep = torch.tensor(sigma, dtype=torch.float32) * 1000
    return (1000 - timestep) / 1000


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x float32, t [B]) -> model out


def denoise(
    model: Velocity,
    x: torch.Tensor,
    sigmas: list[float],
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Euler integration from sigmas[0] to sigmas[-1].

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
        if on_step is not None:
            on_step(i, x, x0)
    return x
