"""Model code: the Z-Image S3-DiT and the FLUX.1 VAE, with diffusers checkpoint key names."""

from engine.model.transformer import ZImageTransformer
from engine.model.vae import AutoEncoder

__all__ = ["AutoEncoder", "ZImageTransformer"]
