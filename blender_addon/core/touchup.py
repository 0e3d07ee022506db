"""Touch-up: repaint a masked region of an image. No bpy.

The mask comes from the image's own alpha (erased = repaint) or from a grey mask image (white
= repaint). The engine repaints the masked region; the add-on then blends its answer in by
the mask, so every pixel outside the mask stays exactly as it was. Buffers are flat bytes,
rows top-down: RGB8 images, one byte per pixel masks.
"""

from __future__ import annotations

import numpy as np  # ships with Blender; a 1024² touch-up in Python loops took seconds


def _u8(buf) -> np.ndarray:
    return np.frombuffer(bytes(buf), np.uint8) if not isinstance(buf, np.ndarray) else buf


def rgba_rows(floats, width: int, height: int) -> bytes:
    """Blender's pixels (RGBA floats, rows bottom-up; a sequence or a float array filled by
    `pixels.foreach_get`) -> RGBA8, rows top-down."""
    f = np.asarray(floats, dtype=np.float64)
    if f.size != width * height * 4:
        raise ValueError("float buffer does not match the size")
    rgba = np.floor(np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgba.reshape(height, width * 4)[::-1].tobytes()


def rgb_of(rgba: bytes) -> bytes:
    return _u8(rgba).reshape(-1, 4)[:, :3].tobytes()


def mask_from_alpha(rgba: bytes) -> bytes:
    """255 where the alpha was erased, 0 where the image is opaque."""
    return (255 - _u8(rgba)[3::4]).tobytes()


def mask_from_grey(rgba: bytes, src_w: int, src_h: int, width: int, height: int) -> bytes:
    """A mask image's luminance (times its alpha), scaled to width x height (nearest)."""
    px = _u8(rgba).reshape(src_h, src_w, 4).astype(np.float64)
    lum = 0.2126 * px[..., 0] + 0.7152 * px[..., 1] + 0.0722 * px[..., 2]
    grey = np.minimum(255, np.floor(lum * px[..., 3] / 255.0 + 0.5)).astype(np.uint8)
    if (src_w, src_h) != (width, height):
        ys = np.arange(height) * src_h // height
        xs = np.arange(width) * src_w // width
        grey = grey[ys][:, xs]
    return grey.tobytes()


def is_empty(mask: bytes) -> bool:
    return not _u8(mask).any()


def composite(original: bytes, repainted: bytes, mask: bytes) -> bytes:
    """RGB8: the original where the mask is 0, the repainted pixels where it is 255, blended
    in between (exact at 0 and 255)."""
    if not len(original) == len(repainted) == 3 * len(mask):
        raise ValueError("image and mask sizes differ")
    o = _u8(original).reshape(-1, 3).astype(np.int32)
    r = _u8(repainted).reshape(-1, 3).astype(np.int32)
    m = _u8(mask).astype(np.int32)[:, None]
    return ((o * (255 - m) + r * m + 127) // 255).astype(np.uint8).tobytes()
