"""core/exr.py: one channel out of an uncompressed OpenEXR file (bpy-free). The files are
written here by hand from the OpenEXR layout (the in-Blender test reads Blender's own)."""

from __future__ import annotations

import struct

import pytest

from blender_addon.core.exr import ExrError, read_channel


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _exr(parts: list[dict], w: int, h: int, compression: int = 0) -> bytes:
    """parts: [{channel name: (pixel type, [values, rows top-down])}]; scanline, 1 line/chunk."""
    multipart = len(parts) > 1
    out = struct.pack("<iI", 20000630, 2 | (0x1000 if multipart else 0))
    for i, chans in enumerate(parts):
        chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", t, 0, 1, 1)
                          for n, (t, _v) in sorted(chans.items())) + b"\0"
        out += (_attr("channels", "chlist", chlist)
                + _attr("compression", "compression", bytes([compression]))
                + _attr("dataWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1))
                + _attr("chunkCount", "int", struct.pack("<i", h))
                + (_attr("name", "string", f"part{i}".encode()) if multipart else b"")) + b"\0"
    if multipart:
        out += b"\0"
    table_at = len(out)
    chunks, offsets = [], []
    pos = table_at + 8 * h * len(parts)
    for p, chans in enumerate(parts):
        for y in range(h):
            line = b""
            for _n, (t, values) in sorted(chans.items()):
                row = values[y * w:(y + 1) * w]
                line += struct.pack(f"<{w}{'e' if t == 1 else 'f'}", *row)
            chunk = (struct.pack("<i", p) if multipart else b"") + struct.pack("<ii", y,
                                                                               len(line)) + line
            offsets.append(pos)
            chunks.append(chunk)
            pos += len(chunk)
    return out + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(chunks)


def test_reads_a_float_channel_from_a_single_part_file():
    w, h = 3, 2
    z = [1.0, 2.0, 3.0, 4.0, 5.0, 1e10]
    data = _exr([{"ViewLayer.Depth.Z": (2, z), "ViewLayer.Combined.R": (1, [0.5] * 6)}], w, h)
    assert read_channel(data, ".Depth.Z") == (w, h, z)
    assert read_channel(data, ".Combined.R") == (w, h, [0.5] * 6)     # half floats


def test_reads_the_right_part_of_a_multi_part_file():
    w, h = 2, 2
    data = _exr([{"A.Combined.R": (2, [0.0] * 4)}, {"B.Depth.Z": (2, [7.0, 8.0, 9.0, 10.0])}],
                w, h)
    assert read_channel(data, "B.Depth.Z") == (2, 2, [7.0, 8.0, 9.0, 10.0])


def test_refuses_what_it_cannot_read():
    with pytest.raises(ExrError):
        read_channel(b"not an exr", ".Z")
    with pytest.raises(ExrError):
        read_channel(_exr([{"Z": (2, [1.0])}], 1, 1, compression=3), "Z")     # ZIP
    with pytest.raises(ExrError):
        read_channel(_exr([{"Z": (2, [1.0])}], 1, 1), ".Depth.Z")
