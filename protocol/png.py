"""A tiny PNG writer (stdlib zlib + struct), so protocol/ needs no Pillow.

encode_png(width, height, rgb_bytes, text={"parameters": "..."}) -> PNG file bytes
add_text(png_bytes, text) -> the same PNG with tEXt/iTXt chunks inserted after IHDR
png_size(png_bytes) -> (width, height) from IHDR, without decoding anything
"""

from __future__ import annotations

import struct
import zlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_chunk(key: str, value: str) -> bytes:
    k = key.encode("latin-1", "replace")[:79] or b"comment"
    try:
        return _chunk(b"tEXt", k + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # iTXt: UTF-8, uncompressed, no language tag
        return _chunk(b"iTXt", k + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(width: int, height: int, rgb: bytes, *, channels: int = 3,
               text: dict[str, str] | None = None, level: int = 6) -> bytes:
    """8-bit RGB (channels=3) or RGBA (4) rows top-down -> PNG bytes (filter 0 on every row)."""
    if channels not in (3, 4):
        raise ValueError("channels must be 3 or 4")
    stride = width * channels
    if len(rgb) != stride * height or width <= 0 or height <= 0:
        raise ValueError(f"need {stride * height} bytes for {width}x{height}x{channels}, "
                         f"got {len(rgb)}")
    mv = memoryview(rgb)
    raw = bytearray((stride + 1) * height)
    for y in range(height):  # prepend the filter-type byte 0 to every row
        o = y * (stride + 1)
        raw[o + 1:o + 1 + stride] = mv[y * stride:(y + 1) * stride]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    parts = [PNG_MAGIC, _chunk(b"IHDR", ihdr)]
    for key, value in (text or {}).items():
        parts.append(_text_chunk(key, value))
    parts.append(_chunk(b"IDAT", zlib.compress(bytes(raw), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


def add_text(data: bytes, text: dict[str, str]) -> bytes:
    """Insert text chunks right after IHDR."""
    png_size(data)
    if not text:
        return data
    end = 8 + 8 + 13 + 4  # magic + IHDR chunk
    return data[:end] + b"".join(_text_chunk(k, v) for k, v in text.items()) + data[end:]


def read_text(data: bytes) -> dict[str, str]:
    """tEXt/iTXt chunks of a PNG (for tests and tools)."""
    out, pos = {}, 8
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"tEXt":
            k, _, v = body.partition(b"\0")
            out[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":
            k, _, rest = body.partition(b"\0")
            # compression flag, method, language\0, translated keyword\0, text
            rest = rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, v = rest.partition(b"\0")
            out[k.decode("latin-1")] = v.decode("utf-8")
        elif kind == b"IEND":
            break
        pos += 12 + n
    return out
