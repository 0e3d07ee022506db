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


def is_blank(mask) -> bool:
    return not any(mask)
