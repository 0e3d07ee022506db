"""Krita's 8-bit RGBA pixels are BGRA in memory; the engine speaks RGB. Slicing only, so the
per-pixel work runs in C (no numpy in Krita's Python)."""

from __future__ import annotations


def _check(data, width: int, height: int, channels: int) -> None:
    if width <= 0 or height <= 0 or len(data) != width * height * channels:
        raise ValueError(f"{width}x{height}x{channels} needs {width * height * channels} "
                         f"bytes, got {len(data)}")


def bgra_to_rgb(data, width: int, height: int) -> bytes:
    """Colour only: alpha is dropped (a transparent canvas is sent as its straight colour)."""
    _check(data, width, height, 4)
    src = bytes(data)
    out = bytearray(width * height * 3)
    out[0::3], out[1::3], out[2::3] = src[2::4], src[1::4], src[0::4]
    return bytes(out)


def rgb_to_bgra(rgb, width: int, height: int, alpha=None) -> bytes:
    """Engine RGB -> Krita BGRA; `alpha` (one byte a pixel) or opaque."""
    _check(rgb, width, height, 3)
    src = bytes(rgb)
    out = bytearray(b"\xff") * (width * height * 4)
    out[0::4], out[1::4], out[2::4] = src[2::3], src[1::3], src[0::3]
    if alpha is not None:
        _check(alpha, width, height, 1)
        out[3::4] = bytes(alpha)
    return bytes(out)


def pad(data, width: int, height: int, channels: int, to_width: int, to_height: int,
        fill: int | None = None) -> bytes:
    """Grow an image at the right and bottom to to_width x to_height: the edge pixels
    repeated (fill None) or a constant byte (masks: 0 = keep)."""
    _check(data, width, height, channels)
    if (to_width, to_height) == (width, height):
        return bytes(data)
    src = memoryview(bytes(data))
    row_bytes, extra = width * channels, (to_width - width)
    rows = []
    for y in range(height):
        row = src[y * row_bytes:(y + 1) * row_bytes]
        tail = (bytes([fill]) * (extra * channels) if fill is not None
                else bytes(row[-channels:]) * extra)
        rows.append(bytes(row) + tail)
    last = rows[-1] if fill is None else bytes([fill]) * (to_width * channels)
    rows += [last] * (to_height - height)
    return b"".join(rows)


def crop(data, width: int, height: int, channels: int, to_width: int, to_height: int
         ) -> bytes:
    """The top-left to_width x to_height of an image (undoes pad)."""
    _check(data, width, height, channels)
    if (to_width, to_height) == (width, height):
        return bytes(data)
    if to_width > width or to_height > height:
        raise ValueError("crop larger than the image")
    src = memoryview(bytes(data))
    row_bytes = width * channels
    return b"".join(src[y * row_bytes:y * row_bytes + to_width * channels]
                    for y in range(to_height))


def layer_pixels(image, canvas: tuple[int, int], crop_to_canvas: bool, mask=None
                 ) -> tuple[int, int, bytes]:
    """One engine result (RGB) -> (width, height, BGRA) for a new layer: cropped back to the
    canvas when the canvas was padded, the selection (canvas-sized) as alpha. Pure bytes work:
    the docker runs it on a worker thread."""
    w, h, rgb = image.width, image.height, image.to_rgb_bytes()
    cw, ch = canvas
    if crop_to_canvas and (w, h) != (cw, ch):
        rgb, w, h = crop(rgb, w, h, 3, cw, ch), cw, ch
    return w, h, rgb_to_bgra(rgb, w, h, mask if mask is not None and (w, h) == (cw, ch)
                             else None)
