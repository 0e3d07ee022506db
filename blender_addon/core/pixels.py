"""Pixel conversions without numpy.

* engine results are RGB8 rows top-down; Blender wants a flat float RGBA buffer, rows
  bottom-up, for `Image.pixels.foreach_set` -> rgb8_to_rgba_floats (slicing + a lookup table,
  so the per-pixel work happens in C);
* results are packed into the .blend as PNG files we write ourselves, so the packed file
  carries the `parameters` text chunk (encode_png / read_png_text);
* depth captures are normalised to the visible range (normalise_depth) and sent as PNG.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Sequence

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TO_FLOAT = [i / 255.0 for i in range(256)]
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}          # channels -> PNG colour type
_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}


def _check(data, width: int, height: int, channels: int) -> None:
    if width <= 0 or height <= 0 or channels not in (1, 3, 4):
        raise ValueError(f"bad image shape {width}x{height}x{channels}")
    if len(data) != width * height * channels:
        raise ValueError(f"{width}x{height}x{channels} needs {width * height * channels} "
                         f"bytes, got {len(data)}")


def flip_rows(data, width: int, height: int, channels: int) -> bytes:
    """Top-down <-> bottom-up."""
    row = width * channels
    view = memoryview(data)
    return b"".join(view[(height - 1 - y) * row:(height - y) * row] for y in range(height))


def rgb8_to_rgba8(data, width: int, height: int, channels: int = 3, *,
                  flip: bool = True) -> bytearray:
    """8-bit rows (top-down when flip) -> RGBA8, rows bottom-up (Blender's order)."""
    _check(data, width, height, channels)
    src = flip_rows(data, width, height, channels) if flip else bytes(data)
    out = bytearray(b"\xff") * (width * height * 4)
    if channels == 1:
        out[0::4] = src
        out[1::4] = src
        out[2::4] = src
    else:
        out[0::4] = src[0::channels]
        out[1::4] = src[1::channels]
        out[2::4] = src[2::channels]
        if channels == 4:
            out[3::4] = src[3::4]
    return out


def rgb8_to_rgba_floats(data, width: int, height: int, channels: int = 3) -> array:
    """Engine pixels -> the flat float32 buffer Image.pixels.foreach_set takes."""
    return array("f", map(_TO_FLOAT.__getitem__, rgb8_to_rgba8(data, width, height, channels)))


def rgba_floats_to_rgb8(floats: Sequence[float], width: int, height: int) -> bytes:
    """Blender's float RGBA (bottom-up) -> RGB8 top-down (for captures read back as pixels)."""
    if len(floats) != width * height * 4:
        raise ValueError("float buffer does not match the size")
    rgba = bytes(255 if v >= 1.0 else 0 if v <= 0.0 else int(v * 255.0 + 0.5) for v in floats)
    rgb = bytearray(width * height * 3)
    rgb[0::3] = rgba[0::4]
    rgb[1::3] = rgba[1::4]
    rgb[2::3] = rgba[2::4]
    return flip_rows(rgb, width, height, 3)


# ---- PNG ---------------------------------------------------------------------------------

def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def _text_chunk(key: str, value: str) -> bytes:
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:   # like Pillow: iTXt (UTF-8) when Latin-1 cannot hold it
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(data, width: int, height: int, channels: int = 3,
               text: dict[str, str] | None = None, level: int = 6) -> bytes:
    """8-bit rows top-down -> PNG bytes (filter 0), with optional text chunks."""
    _check(data, width, height, channels)
    row = width * channels
    view = memoryview(data)
    raw = b"".join(b"\0" + view[y * row:(y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[channels], 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        parts.append(_text_chunk(key, value))
    parts.append(_chunk(b"IDAT", zlib.compress(raw, level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _chunks(png: bytes):
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind = png[pos + 4:pos + 8]
        yield kind, png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            return


def read_png_text(png: bytes) -> dict[str, str]:
    """tEXt / iTXt (uncompressed) / zTXt chunks of a PNG."""
    out: dict[str, str] = {}
    for kind, payload in _chunks(png):
        if kind == b"tEXt":
            key, _, value = payload.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = payload.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = payload.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, value = rest.partition(b"\0")
            if compressed:
                value = zlib.decompress(value)
            out[key.decode("latin-1")] = value.decode("utf-8")
    return out


def decode_png(png: bytes) -> tuple[int, int, int, bytes]:
    """8-bit non-interlaced PNG -> (width, height, channels, rows top-down)."""
    width = height = channels = 0
    idat = []
    for kind, payload in _chunks(png):
        if kind == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", payload)
            if depth != 8 or interlace or ctype not in _CHANNELS:
                raise ValueError("only 8-bit, non-interlaced grey/RGB/RGBA PNGs are read")
            channels = _CHANNELS[ctype]
        elif kind == b"IDAT":
            idat.append(payload)
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray(stride * height)
    prev = bytearray(stride)
    pos = 0
    for y in range(height):
        ftype = raw[pos]
        line = bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        if ftype == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 255
        elif ftype == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif ftype == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        elif ftype != 0:
            raise ValueError(f"bad PNG filter {ftype}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


# ---- depth -------------------------------------------------------------------------------

def _visible(d) -> bool:
    return d is not None and d == d and d != float("inf")


def normalise_depth(depths: Sequence[float | None]) -> bytes:
    """View-space depths (None/inf = nothing hit) -> 8-bit, normalised to the visible range:
    the nearest visible surface is 255, the farthest 0, and empty background 0 too."""
    hits = [d for d in depths if _visible(d)]
    if not hits:
        return bytes(len(depths))
    near, far = min(hits), max(hits)
    span = far - near
    if span <= 1e-9:
        return bytes(255 if _visible(d) else 0 for d in depths)
    k = 255.0 / span
    return bytes(int((far - d) * k + 0.5) if _visible(d) else 0 for d in depths)


def resize_nearest(data: bytes, width: int, height: int, channels: int,
                   new_width: int, new_height: int) -> bytes:
    """Nearest-neighbour resize of 8-bit rows (same row order in and out)."""
    _check(data, width, height, channels)
    xs = [min(width - 1, (x * width) // new_width) for x in range(new_width)]
    row_cache: dict[int, bytes] = {}
    rows = []
    for y in range(new_height):
        sy = min(height - 1, (y * height) // new_height)
        if sy not in row_cache:
            src = data[sy * width * channels:(sy + 1) * width * channels]
            if channels == 1:
                row_cache[sy] = bytes(src[x] for x in xs)
            else:
                row_cache[sy] = b"".join(src[x * channels:(x + 1) * channels] for x in xs)
        rows.append(row_cache[sy])
    return b"".join(rows)
