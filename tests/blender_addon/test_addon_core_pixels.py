"""Pixel conversions, PNG writer/reader, depth normalisation (bpy-free, no numpy)."""

from __future__ import annotations

import time

from blender_addon.core import pixels


def test_rgb8_to_blender_floats_flips_rows():
    w, h = 2, 2
    rgb = bytes([255, 0, 0, 0, 255, 0,        # top row: red, green
                 0, 0, 255, 255, 255, 255])   # bottom row: blue, white
    f = pixels.rgb8_to_rgba_floats(rgb, w, h)
    assert f.typecode == "f" and len(f) == 16
    assert list(f[:8]) == [0, 0, 1, 1, 1, 1, 1, 1]            # Blender's first row = bottom
    assert list(f[8:]) == [1, 0, 0, 1, 0, 1, 0, 1]
    back = pixels.rgba_floats_to_rgb8(f, w, h)
    assert back == rgb


def test_conversion_is_fast_enough_for_1024():
    rgb = bytes(range(256)) * (1024 * 1024 * 3 // 256)
    t0 = time.perf_counter()
    f = pixels.rgb8_to_rgba_floats(rgb, 1024, 1024)
    assert len(f) == 1024 * 1024 * 4
    assert time.perf_counter() - t0 < 3.0


def test_png_roundtrip_with_text():
    w, h = 5, 3
    rgb = bytes((i * 7) % 256 for i in range(w * h * 3))
    png = pixels.encode_png(rgb, w, h, 3, text={"parameters": '{"prompt": "fox"}',
                                                 "uni": "日本"})
    assert pixels.decode_png(png) == (w, h, 3, rgb)
    assert pixels.read_png_text(png) == {"parameters": '{"prompt": "fox"}', "uni": "日本"}


def test_decode_png_handles_all_filters():
    import struct
    import zlib
    w, h, c = 3, 5, 3
    rows = [bytes((x * 40 + y * 17 + k * 5) % 256 for x in range(w) for k in range(c))
            for y in range(h)]
    raw = bytearray()
    prev = bytes(w * c)
    for y, row in enumerate(rows):
        ftype = y % 5
        out = bytearray()
        for i, v in enumerate(row):
            a = row[i - c] if i >= c else 0
            b = prev[i]
            cc = prev[i - c] if i >= c else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else cc
            out.append((v - pred) & 255)
        raw += bytes([ftype]) + out
        prev = row

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    png = (pixels.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    assert pixels.decode_png(png) == (w, h, 3, b"".join(rows))


def test_depth_normalised_to_visible_range():
    inf = float("inf")
    out = pixels.normalise_depth([2.0, 4.0, 3.0, None, inf])
    assert list(out) == [255, 0, 128, 0, 0]
    assert list(pixels.normalise_depth([None, None])) == [0, 0]
    assert list(pixels.normalise_depth([5.0, 5.0, None])) == [255, 255, 0]


def test_resize_nearest():
    grey = bytes([1, 2, 3, 4])                # 2x2
    assert pixels.resize_nearest(grey, 2, 2, 1, 4, 2) == bytes([1, 1, 2, 2, 3, 3, 4, 4])
    rgb = bytes([1, 1, 1, 2, 2, 2])          # 2x1
    assert pixels.resize_nearest(rgb, 2, 1, 3, 1, 1) == bytes([1, 1, 1])
