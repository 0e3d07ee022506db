"""One channel out of an uncompressed OpenEXR file (single- or multi-part scanline files, as
Blender writes with codec "None"). No bpy: the add-on reads the Depth pass of a render this way
(Blender's Python cannot read a Render Result's passes)."""

from __future__ import annotations

import struct
from array import array

MAGIC = 20000630
_MULTIPART = 0x1000
_TILED = 0x200
_SIZES = {0: 4, 1: 2, 2: 4}          # pixel types: uint, half, float -> bytes


class ExrError(ValueError):
    pass


def _cstr(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _header(data: bytes, pos: int) -> tuple[dict, int]:
    attrs = {}
    while True:
        name, pos = _cstr(data, pos)
        if not name:
            return attrs, pos
        kind, pos = _cstr(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        attrs[name] = (kind, data[pos:pos + size])
        pos += size


def _channels(raw: bytes) -> list[tuple[str, int]]:
    out, pos = [], 0
    while pos < len(raw):
        name, pos = _cstr(raw, pos)
        if not name:
            break
        (ptype,) = struct.unpack_from("<i", raw, pos)
        pos += 16
        out.append((name, ptype))
    return out


def read_channel(data: bytes, suffix: str) -> tuple[int, int, list[float]]:
    """(width, height, values top-down) of the first channel whose name ends with `suffix`
    (e.g. ".Depth.Z")."""
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrError("not an OpenEXR file")
    flags = struct.unpack_from("<I", data, 4)[0]
    if flags & _TILED:
        raise ExrError("tiled OpenEXR files are not read")
    multipart = bool(flags & _MULTIPART)
    pos, headers = 8, []
    while True:
        attrs, pos = _header(data, pos)
        if not attrs:
            break
        headers.append(attrs)
        if not multipart:
            break
    tables = []
    for attrs in headers:
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
        if attrs["compression"][1][0] != 0:
            raise ExrError("only uncompressed OpenEXR files are read")
        count = (struct.unpack("<i", attrs["chunkCount"][1])[0] if "chunkCount" in attrs
                 else y1 - y0 + 1)
        tables.append(struct.unpack_from(f"<{count}Q", data, pos))
        pos += 8 * count
    for part, attrs in enumerate(headers):
        channels = _channels(attrs["channels"][1])
        names = [n for n, _t in channels]
        match = next((n for n in names if n.endswith(suffix)), None)
        if match is None:
            continue
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
        w, h = x1 - x0 + 1, y1 - y0 + 1
        before = sum(_SIZES[t] for n, t in channels if n < match) * w
        ptype = dict(channels)[match]
        rows: dict[int, list[float]] = {}
        for offset in tables[part]:
            p = offset + (4 if multipart else 0)
            y, _size = struct.unpack_from("<2i", data, p)
            start = p + 8 + before
            raw = data[start:start + _SIZES[ptype] * w]
            values = array({0: "I", 1: "H", 2: "f"}[ptype], raw) if ptype != 1 else [
                struct.unpack_from("<e", raw, 2 * i)[0] for i in range(w)]
            rows[y - y0] = list(values)
        if len(rows) != h:
            raise ExrError("scanlines are missing")
        return w, h, [v for y in range(h) for v in rows[y]]
    raise ExrError(f"no channel ending in {suffix!r}")
