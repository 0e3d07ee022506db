"""What the client library hands to host apps: events and images. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

EVENT_KINDS = ("connected", "disconnected", "welcome", "accepted", "queued", "started",
               "progress", "preview", "result", "cancelled", "error")
TERMINAL_KINDS = ("result", "cancelled", "error")

_MIME_FORMAT = {"application/x-raw": "raw", "image/png": "png", "image/jpeg": "jpeg",
                "image/webp": "webp"}
_FORMAT_MIME = {v: k for k, v in _MIME_FORMAT.items()}


@dataclass
class ImageData:
    """One image. format "raw" = 8-bit RGB (channels 3) rows top-down, no padding."""
    width: int
    height: int
    channels: int
    format: str
    data: bytes
    seed: int | None = None

    def to_rgb_bytes(self) -> bytes:
        """Raw RGB8 bytes, rows top-down. Only for format "raw" (decode PNG/JPEG yourself)."""
        if self.format != "raw":
            raise ValueError(f"to_rgb_bytes() needs a raw image, this one is {self.format}")
        if self.channels == 3:
            return bytes(self.data)
        if self.channels == 4:
            mv = memoryview(self.data)
            out = bytearray(self.width * self.height * 3)
            out[0::3], out[1::3], out[2::3] = mv[0::4], mv[1::4], mv[2::4]
            return bytes(out)
        raise ValueError(f"cannot make RGB from {self.channels} channels")

    def to_png_bytes(self, text: dict[str, str] | None = None) -> bytes:
        """PNG file bytes (stdlib encoder for raw; PNG data is passed through, text added)."""
        from . import png
        if self.format == "png":
            return png.add_text(bytes(self.data), text or {})
        return png.encode_png(self.width, self.height, self.to_rgb_bytes(), text=text)


@dataclass
class Event:
    kind: str
    job_id: str | None = None
    data: dict = field(default_factory=dict)
    images: list = field(default_factory=list)

    def __repr__(self) -> str:
        d = {k: v for k, v in self.data.items() if k not in ("params", "welcome")}
        return f"Event({self.kind!r}, job_id={self.job_id!r}, data={d!r}, " \
               f"images={len(self.images)})"



def _sniff_mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ProtocolError("invalid_params", "blob is not a PNG, JPEG or WebP file; pass raw "
                        "pixels as ImageData(format='raw')", field="blobs")


def _image_from(desc: dict, data, seed=None) -> ImageData:
    return ImageData(int(desc.get("width") or 0), int(desc.get("height") or 0),
                     int(desc.get("channels") or 3), _MIME_FORMAT.get(desc.get("mime"), "raw"),
                     data, seed)

