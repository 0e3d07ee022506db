"""Frames and the JSON header: encode, and a strict, bounded decode.

A message is a ZeroMQ multipart message:  [signature, header, blob, blob, ...]
(the engine's ROUTER socket sees one more frame in front: the peer's routing id).

Everything here is stdlib only. Every failure is a ProtocolError with a code from CODES;
nothing else escapes decode_header() / split_frames() (RecursionError, UnicodeDecodeError,
ValueError and OverflowError are all mapped).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from . import PROTOCOL_VERSION
from .errors import ProtocolError

SIGNATURE_PREFIX = b"ZIE"
SIGNATURE = SIGNATURE_PREFIX + str(PROTOCOL_VERSION).encode("ascii")  # b"ZIE1"

MAX_HEADER_BYTES = 64 * 1024
MAX_DEPTH = 8          # nesting depth of the header document (objects and arrays)
MAX_INT_DIGITS = 40    # longer integer literals are refused before int() runs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"integer literal with {len(text)} digits")
    return int(text)


def _object_no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def json_depth_ok(obj: Any, max_depth: int) -> bool:
    """True if obj nests at most max_depth containers deep (iterative, no recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > max_depth:
                return False
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if depth > max_depth:
                return False
            stack.extend((v, depth + 1) for v in node)
    return True


def first_unencodable(obj: Any) -> str | None:
    """Path of the first string (key or value) that is not valid Unicode text, e.g. a lone
    surrogate from the JSON escape "\\ud800", or None. Such a string could never be echoed
    back: encoding a reply that contains it fails."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return path or "header"
        elif isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}.{key}" if path else str(key)
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    return (path + ".<key>") if path else "<key>"
                stack.append((value, sub))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return None


def decode_header(data: bytes, *, max_bytes: int = MAX_HEADER_BYTES,
                  max_depth: int = MAX_DEPTH) -> dict:
    """Parse a header frame: UTF-8 JSON object, bounded size and depth, no NaN/Infinity,
    no duplicate keys, every string valid Unicode (no lone surrogates).
    Raises ProtocolError(bad_request | invalid_params | too_large)."""
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"header is {len(data)} bytes, limit {max_bytes}",
                            field="header")
    try:
        text = bytes(data).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float,
                         parse_int=_parse_int, object_pairs_hook=_object_no_duplicates)
    except RecursionError:
        raise ProtocolError("bad_request", "header nests too deeply", field="header") from None
    except (ValueError, OverflowError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError("bad_request", f"header is not valid JSON: {str(exc)[:120]}",
                            field="header") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "header must be a JSON object", field="header")
    if not json_depth_ok(obj, max_depth):
        raise ProtocolError("bad_request", f"header nests deeper than {max_depth} levels",
                            field="header")
    bad = first_unencodable(obj)
    if bad is not None:
        code = "invalid_params" if bad.startswith("params.") else "bad_request"
        raise ProtocolError(code, "contains a lone surrogate (\\ud800-\\udfff escape): not "
                            "valid Unicode text", field=bad[:120])
    return obj


def encode_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")


def encode(header: dict, blobs: Sequence[bytes] = ()) -> list:
    """Frames for one message (without a routing id)."""
    return [SIGNATURE, encode_header(header), *blobs]


def check_signature(frame: bytes) -> None:
    """Raise ProtocolError unless frame is this protocol's signature.

    A foreign version of this protocol (ZIE<n>) gives unsupported_version; anything else
    gives bad_request with field 'signature' (the engine drops those without answering)."""
    if frame == SIGNATURE:
        return
    if len(frame) <= 8 and frame.startswith(SIGNATURE_PREFIX) and frame[3:].isdigit():
        raise ProtocolError("unsupported_version",
                            f"protocol version {frame[3:].decode()} is not supported; "
                            f"this peer speaks {PROTOCOL_VERSION}", field="signature")
    raise ProtocolError("bad_request", "not a ZIE message (bad signature frame)",
                        field="signature")


def split_frames(frames: Sequence[bytes], *, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_depth: int = MAX_DEPTH) -> tuple[dict, list[bytes]]:
    """[signature, header, *blobs] -> (header dict, blob list). Raises ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError("bad_request", f"expected at least 2 frames, got {len(frames)}",
                            field="frames")
    check_signature(bytes(frames[0]))
    header = decode_header(frames[1], max_bytes=max_header_bytes, max_depth=max_depth)
    return header, list(frames[2:])
