"""Image conditioning, pure and device-free: input checks, the resize/crop rule, masks.

The rule for an input image (or mask, or control image) whose size differs from the requested
width x height: scale it, keeping its aspect ratio, until it *covers* the requested size, then cut
the overflow equally from both sides (a centred crop). Nothing is stretched and no borders are
added. An image that already has the requested size is used as is (no resampling), which is what
diffusers' pipelines see in the parity tests. Colour images resample with Lanczos; masks resample
with Lanczos on their grey level and are then binarised at 0.5 (>= 128 of 255 repaints), as
diffusers' mask processor does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import EngineError

CONTROL_TYPES = ("depth", "canny", "pose", "inpaint")
TILE_AXES = ("x", "y", "xy")
MAX_INPUT_SIDE = 8192  # input images are resized to the request; this only bounds the work
IMG2IMG_STRENGTH = 0.6  # diffusers' ZImageImg2ImgPipeline default
CONTROL_SCALE = 0.75  # diffusers' ZImageControlNetPipeline default (the model card: 0.65-0.80)
MAX_CONTROL_SCALE = 2.0


def _bad(field: str, message: str) -> EngineError:
    return EngineError("invalid_params", message, field=field)


def check_image(image, field: str, *, mask: bool = False) -> None:
    """An H x W x 3 uint8 array (a mask: H x W uint8, or H x W x 1), sides 1..MAX_INPUT_SIDE."""
    what = "an H x W uint8 array (white = repaint)" if mask else "an H x W x 3 uint8 RGB array"
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = type(image).__name__ if not isinstance(image, np.ndarray) else f"{image.dtype} array"
        raise _bad(field, f"{field} must be {what}, got {kind}")
    ok_shape = (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)) if mask else (
        image.ndim == 3 and image.shape[2] == 3)
    if not ok_shape:
        raise _bad(field, f"{field} must be {what}, got shape {list(image.shape)}")
    h, w = image.shape[:2]
    if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE):
        raise _bad(field, f"{field} is {w}x{h}; sides must be 1 to {MAX_INPUT_SIDE} pixels")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_conditioning(req) -> None:
    """Validate the image-conditioning fields of a GenerateRequest (raises EngineError
    invalid_params naming the field). Whether a ControlNet is loaded is the pipeline's check."""
    image, mask = req.init_image, req.mask
    if image is not None:
        check_image(image, "init_image")
    if mask is not None:
        check_image(mask, "mask", mask=True)
        if image is None:
            raise _bad("mask", "a mask needs an input image to repaint (--image)")
        if mask.shape[:2] != image.shape[:2]:
            raise _bad("mask", f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                               f"{image.shape[1]}x{image.shape[0]}; they must be the same size")
    if req.strength is not None:
        if not _is_number(req.strength) or not 0.0 <= req.strength <= 1.0:
            raise _bad("strength", f"strength {req.strength} is out of range: use 0 to 1 "
                                   "(0 keeps the input image, 1 repaints it completely)")
        if image is None:
            raise _bad("strength", "strength applies to an input image; give one (--image)")
    if req.control_type is not None and req.control_type not in CONTROL_TYPES:
        raise _bad("control_type", f"control type {req.control_type!r} is not supported: use "
                                   f"one of {', '.join(CONTROL_TYPES)}")
    if req.control_image is not None:
        check_image(req.control_image, "control_image")
        if req.control_type is None:
            raise _bad("control_type", "a control image needs a control type: one of "
                                       f"{', '.join(CONTROL_TYPES)}")
    elif req.control_type is not None and req.control_type != "inpaint":
        raise _bad("control_image", f"control type {req.control_type!r} needs a control image "
                                    "(the preprocessed map, e.g. a depth map)")
    if req.control_type == "inpaint" and (image is None or mask is None):
        raise _bad("mask" if image is not None else "init_image",
                   "control type 'inpaint' needs an input image and a mask")
    if req.control_scale is not None and (not _is_number(req.control_scale)
                                          or not 0.0 <= req.control_scale <= MAX_CONTROL_SCALE):
        raise _bad("control_scale", f"control_scale {req.control_scale} is out of range: use 0 "
                                    f"to {MAX_CONTROL_SCALE} (0.65-0.8 is typical)")
    if req.tile is not None and req.tile not in TILE_AXES:
        raise _bad("tile", f"tile {req.tile!r} is not supported: use x, y or xy")


def resolve_strength(req) -> float:
    """The strength a request runs at: its own, else 0.6 for image-to-image (diffusers' default)
    and 1.0 for inpainting (diffusers' inpaint default: the masked area is fully repainted)."""
    if req.strength is not None:
        return float(req.strength)
    if req.init_image is not None and req.mask is None and req.control_type != "inpaint":
        return IMG2IMG_STRENGTH
    return 1.0


def _cover_box(w: int, h: int, width: int, height: int) -> tuple[tuple[int, int], tuple]:
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    left, top = (rw - width) // 2, (rh - height) // 2
    return (rw, rh), (left, top, left + width, top + height)


def fit_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 -> height x width x 3 uint8 by the cover-then-centre-crop rule."""
    from PIL import Image

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    size, box = _cover_box(w, h, width, height)
    pil = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS).crop(box)
    return np.asarray(pil)


def fit_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """H x W (x 1) uint8 -> height x width float32 of 0/1 (1 = repaint), binarised at 0.5."""
    from PIL import Image

    m = mask.reshape(mask.shape[0], mask.shape[1])
    h, w = m.shape
    if (w, h) != (width, height):
        size, box = _cover_box(w, h, width, height)
        m = np.asarray(Image.fromarray(m).resize(size, Image.Resampling.LANCZOS).crop(box))
    m = m.astype(np.float32) / 255.0
    return (m >= 0.5).astype(np.float32)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> [1, 3, H, W] float32 in [-1, 1] (diffusers' VaeImageProcessor math)."""
    x = torch.from_numpy(np.ascontiguousarray(image).astype(np.float32) / 255.0)
    return 2.0 * x.permute(2, 0, 1)[None] - 1.0


def mask_tensor(mask01: np.ndarray) -> torch.Tensor:
    """height x width 0/1 float -> [1, 1, H, W] float32."""
    return torch.from_numpy(np.ascontiguousarray(mask01, dtype=np.float32))[None, None]


def latent_mask(mask: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """[1, 1, H, W] pixel mask -> [1, 1, h, w] at latent size (nearest, as diffusers)."""
    return F.interpolate(mask, size=(latent_h, latent_w), mode="nearest")


def default_size(image: np.ndarray, limits) -> tuple[int, int]:
    """(width, height) for a request that gives an image but no size: the image's own size,
    scaled down (aspect kept) to fit the engine's limits, rounded down to a multiple of 16."""
    h, w = image.shape[:2]
    scale = min(1.0, limits.max_side / max(w, h), math.sqrt(limits.max_pixels / (w * h)))
    m = limits.side_multiple

    def side(n: int) -> int:
        return min(limits.max_side, max(limits.min_side, int(n * scale) // m * m))

    return side(w), side(h)
