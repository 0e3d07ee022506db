"""Model code: the Z-Image S3-DiT and the FLUX.1 VAE, with diffusers checkpoint key names."""

from engine.model.transformer import ZImageTransformer

__all__ = ["ZImageTransformer"]
