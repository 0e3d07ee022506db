"""Image bytes on the engine side (numpy + Pillow): results (raw RGB8 or PNG), preview JPEGs,
and client image blobs decoded safely (dimensions checked from the header before decoding)."""

from __future__ import annotations

import io

from engine.errors import EngineError
from protocol.messages import Limits


def encode_jpeg(img, quality: int = 80) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(as_rgb8(img), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def as_rgb8(img):
    import numpy as np
    arr = np.ascontiguousarray(np.asarray(img))
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise EngineError("internal_error", f"pipeline returned an image of shape "
                          f"{arr.shape} {arr.dtype}, expected HxWx3 uint8")
    return arr


def encode_result(img, fmt: str) -> tuple[bytes, dict]:
    arr = as_rgb8(img)
    h, w = arr.shape[:2]
    if fmt == "png":
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
        data = buf.getvalue()
        return data, {"mime": "image/png", "bytes": len(data), "width": w, "height": h,
                      "channels": 3}
    data = arr.tobytes()
    return data, {"mime": "application/x-raw", "bytes": len(data), "width": w, "height": h,
                  "channels": 3, "dtype": "u8"}


def decode_image_blob(data: bytes, desc: dict, limits: Limits, mode: str, path: str):
    """Client image blob -> HxWx3 (RGB) or HxW (L) uint8 array. Checks the dimensions from the
    file header BEFORE decoding (no decompression bombs); never touches the file system."""
    import numpy as np
    if desc["mime"] == "application/x-raw":
        w, h, c = desc["width"], desc["height"], desc["channels"]
        arr = np.frombuffer(data, np.uint8).reshape(h, w, c)
        if mode == "L":
            return arr[..., 0].copy() if c > 1 else arr[..., 0].copy()
        if c == 1:
            return np.repeat(arr, 3, axis=2)
        return arr[..., :3].copy()
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as im:
            w, h = im.size
            if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
                raise EngineError("too_large", f"image is {w}x{h}, limit {limits.max_side} a "
                                  f"side and {limits.max_pixels} pixels", field=path)
            im.load()
            return np.asarray(im.convert(mode)).copy()
    except EngineError:
        raise
    except Image.DecompressionBombError as exc:
        raise EngineError("too_large", str(exc)[:200], field=path) from None
    except Exception as exc:
        raise EngineError("invalid_params", f"cannot decode image: {str(exc)[:160]}",
                          field=path) from None

