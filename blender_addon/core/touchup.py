"""Touch-up: repaint a masked region of an image. No bpy.

The mask comes from the image's own alpha (erased = repaint) or from a grey mask image (white
= repaint). The engine repaints the masked region; the add-on then blends its answer in by
the mask, so every pixel outside the mask stays exactly as it was. Buffers are flat bytes,
rows top-down: RGB8 images, one byte per pixel masks.
"""

from __future__ import annotations

from typing import Sequence

from .pixels import flip_rows


def rgba_rows(floats: Sequence[float], width: int, height: int) -> bytes:
    """Blender's pixels (RGBA floats, rows bottom-up) -> RGBA8, rows top-down."""
    if len(floats) != width * height * 4:
        raise ValueError("float buffer does not match the size")
    rgba = bytes(255 if v >= 1.0 else 0 if v <= 0.0 else int(v * 255.0 + 0.5) for v in floats)
    return flip_rows(rgba, width, height, 4)


def rgb_of(rgba: bytes) -> bytes:
    rgb = bytearray(len(rgba) // 4 * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = rgba[0::4], rgba[1::4], rgba[2::4]
    return bytes(rgb)


def mask_from_alpha(rgba: bytes) -> bytes:
    """255 where the alpha was erased, 0 where the image is opaque."""
    return bytes(255 - a for a in rgba[3::4])


def mask_from_grey(rgba: bytes, src_w: int, src_h: int, width: int, height: int) -> bytes:
    """A mask image's luminance (times its alpha), scaled to width x height (nearest)."""
    grey = bytes(min(255, int((0.2126 * r + 0.7152 * g + 0.0722 * b) * a / 255.0 + 0.5))
                 for r, g, b, a in zip(rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4]))
    if (src_w, src_h) == (width, height):
        return grey
    xs = [x * src_w // width for x in range(width)]
    out = bytearray()
    for y in range(height):
        row = grey[(y * src_h // height) * src_w:][:src_w]
        out += bytes(row[x] for x in xs)
    return bytes(out)


def is_empty(mask: bytes) -> bool:
    return not any(mask)


def composite(original: bytes, repainted: bytes, mask: bytes) -> bytes:
    """RGB8: the original where the mask is 0, the repainted pixels where it is 255, blended
    in between."""
    if not len(original) == len(repainted) == 3 * len(mask):
        raise ValueError("image and mask sizes differ")
    out = bytearray(original)
    for i, m in enumerate(mask):
        if m == 0:
            continue
        j = 3 * i
        if m == 255:
            out[j:j + 3] = repainted[j:j + 3]
        else:
            for k in range(j, j + 3):
                out[k] = (original[k] * (255 - m) + repainted[k] * m + 127) // 255
    return bytes(out)
