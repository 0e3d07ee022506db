"""Message definitions and validation (protocol v1). Stdlib only.

The engine calls validate_request(header, blobs, limits) on every message it receives; it
returns a normalised copy (defaults filled in, unknown fields dropped) or raises ProtocolError
whose `field` is the path of the offending value, e.g. "params.width" or "blobs[1].bytes".
PROTOCOL.md is the human-readable form of the same rules; keep the two in step.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from .errors import ProtocolError

# ---- message types -----------------------------------------------------------------------

CLIENT_TYPES = ("hello", "submit", "cancel", "status", "fetch", "ping", "unload", "bye")
ENGINE_TYPES = ("welcome", "accepted", "queued", "started", "progress", "preview", "result",
                "result_ready", "cancelled", "error", "jobs", "pong", "unloaded",
                "shutting_down")
# state events carry a new per-job seq; the others repeat the current seq and may be dropped
STATE_EVENTS = ("accepted", "started", "result", "result_ready", "cancelled", "error")
DROPPABLE_EVENTS = ("queued", "progress", "preview")

class JobState(str, Enum):
    """A job's state: one vocabulary for the engine, the client library and host apps
    (PROTOCOL.md §6.1). A str Enum, so it is its own wire value. PENDING is client-local:
    submitted by the host app, not yet accepted by the engine."""
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    def __str__(self) -> str:
        return self.value


# `cancelled.reason` of a job replaced by a newer one with the same live key (PROTOCOL.md §4)
SUPERSEDED = "superseded"

JOB_STATES = tuple(s.value for s in JobState if s is not JobState.PENDING)   # on the wire
TERMINAL_STATES = tuple(s.value for s in JobState if s.terminal)

STAGES = ("encode_text", "denoise", "decode", "encode_image")
RESULT_FORMATS = ("raw", "png")
BLOB_MIMES = ("image/png", "image/jpeg", "image/webp", "application/x-raw")
TILE_MODES = ("x", "y", "xy")

# image-conditioned params -> the capability the engine must advertise to accept them
PARAM_CAPABILITY = {
    "init_image": "img2img",
    "mask": "inpaint",
    "control_image": "control",
    "tile": "tile",
    "loras": "lora",
}

MAX_SEED = 2**63 - 1
MAX_LIST = 256             # resume_jobs / job_ids
MAX_LORAS = 8              # LoRAs in one request
MAX_LORA_WEIGHT = 4.0      # |weight|; beyond it a LoRA only burns the image
_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SESSION_RE = re.compile(r"[A-Za-z0-9_\-]{16,64}")
_NAME_RE = re.compile(r"[a-z0-9_]{1,32}")


@dataclass
class Limits:
    """Engine limits. Defaults follow PROTOCOL.md; the engine reports its own in `welcome`."""
    max_header_bytes: int = 64 * 1024
    max_blobs: int = 8
    max_blob_bytes: int = 32 * 1024 * 1024
    max_msg_bytes: int = 64 * 1024 * 1024
    min_side: int = 64
    max_side: int = 2048
    side_multiple: int = 16
    max_pixels: int = 2048 * 2048
    max_steps: int = 50
    max_images: int = 4
    max_prompt_chars: int = 4000
    max_depth: int = 8
    max_queue_per_session: int = 32
    max_queue: int = 256
    default_deadline_ms: int = 120_000
    max_deadline_ms: int = 3_600_000
    result_ttl_s: float = 600.0
    result_budget_bytes: int = 1024 * 1024 * 1024   # results + params of finished jobs
    max_results: int = 1024                # finished jobs kept, in total
    max_results_per_session: int = 256     # ... and per session
    preview_max_side: int = 512
    max_input_bytes: int = 1024 * 1024 * 1024   # input blobs held by queued/running jobs

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_LIMITS = Limits()


# ---- small typed readers -----------------------------------------------------------------

_MISSING = object()


def _fail(path: str, message: str, code: str = "invalid_params") -> ProtocolError:
    return ProtocolError(code, message, field=path)


def _get(obj: dict, key: str, path: str, default: Any = _MISSING,
         code: str = "invalid_params") -> Any:
    if key in obj and obj[key] is not None:
        return obj[key]
    if default is _MISSING:
        raise _fail(path, "is required", code)
    return default


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        shown = str(value) if abs(value) < 10**20 else f"a {len(str(abs(value)))}-digit number"
        raise _fail(path, f"must be in {lo}..{hi}, got {shown}")
    return value


def _float(value: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(path, "must be finite")
    if not lo <= value <= hi:
        raise _fail(path, f"must be in {lo}..{hi}, got {value:g}")
    return value


def _str(value: Any, path: str, lo: int, hi: int, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise _fail(path, f"must be {lo}..{hi} characters long, got {len(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(path, f"must match {pattern.pattern}")
    return value


def _enum(value: Any, path: str, choices: tuple) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(path, f"must be one of {', '.join(choices)}")
    return value


def _obj(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"must be an object, got {type(value).__name__}")
    return value


def _list(value: Any, path: str, hi: int) -> list:
    if not isinstance(value, list):
        raise _fail(path, f"must be a list, got {type(value).__name__}")
    if len(value) > hi:
        raise _fail(path, f"has {len(value)} items, limit {hi}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {type(value).__name__}")
    return value


# ---- blobs -------------------------------------------------------------------------------

def validate_blobs(header: dict, blobs: list, limits: Limits) -> list[dict]:
    """Check header.blobs against the blob frames. Codes: bad_request (mismatch), too_large."""
    descs = header.get("blobs", [])
    if descs is None:
        descs = []
    if not isinstance(descs, list):
        raise _fail("blobs", "must be a list", "bad_request")
    if len(blobs) > limits.max_blobs or len(descs) > limits.max_blobs:
        raise _fail("blobs", f"at most {limits.max_blobs} blobs per message", "too_large")
    if len(descs) != len(blobs):
        raise _fail("blobs", f"header describes {len(descs)} blobs but {len(blobs)} blob "
                    f"frames follow", "bad_request")
    out, names, total = [], set(), 0
    for i, (desc, blob) in enumerate(zip(descs, blobs)):
        p = f"blobs[{i}]"
        if not isinstance(desc, dict):
            raise _fail(p, "must be an object", "bad_request")
        try:
            name = _str(_get(desc, "name", p + ".name"), p + ".name", 1, 32, _NAME_RE)
            mime = _enum(_get(desc, "mime", p + ".mime"), p + ".mime", BLOB_MIMES)
            size = _int(_get(desc, "bytes", p + ".bytes"), p + ".bytes", 0, 2**62)
        except ProtocolError as exc:
            raise ProtocolError("bad_request", exc.message, field=exc.field) from None
        if size > limits.max_blob_bytes:
            raise _fail(p + ".bytes", f"blob of {size} bytes, limit {limits.max_blob_bytes}",
                        "too_large")
        if len(blob) != size:
            raise _fail(p + ".bytes", f"declares {size} bytes but the frame has {len(blob)}",
                        "bad_request")
        if name in names:
            raise _fail(p + ".name", f"duplicate blob name {name!r}", "bad_request")
        names.add(name)
        total += size
        d = {"name": name, "mime": mime, "bytes": size}
        if mime == "application/x-raw":
            try:
                w = _int(_get(desc, "width", p + ".width"), p + ".width", 1, limits.max_side)
                h = _int(_get(desc, "height", p + ".height"), p + ".height", 1,
                         limits.max_side)
                c = _int(_get(desc, "channels", p + ".channels"), p + ".channels", 1, 4)
            except ProtocolError as exc:
                raise ProtocolError("too_large" if "must be in" in exc.message
                                    else "bad_request", exc.message, field=exc.field) from None
            if w * h * c != size:
                raise _fail(p + ".bytes", f"raw {w}x{h}x{c} needs {w * h * c} bytes, "
                            f"got {size}", "bad_request")
            d.update(width=w, height=h, channels=c)
        out.append(d)
    if total > limits.max_msg_bytes:
        raise _fail("blobs", f"blobs total {total} bytes, limit {limits.max_msg_bytes}",
                    "too_large")
    return out


# ---- params ------------------------------------------------------------------------------

def validate_params(params: Any, blob_descs: list[dict], limits: Limits,
                    path: str = "params") -> dict:
    """Validate submit params (v1). Returns a normalised dict (defaults filled)."""
    p = _obj(params, path)
    out: dict[str, Any] = {}
    out["prompt"] = _str(_get(p, "prompt", f"{path}.prompt"), f"{path}.prompt", 1,
                         limits.max_prompt_chars)
    if not out["prompt"].strip():
        raise _fail(f"{path}.prompt", "must not be blank")
    # Z-Image-Turbo is guidance-distilled: no CFG, so no negative prompt and no guidance
    # scale. They are not v1 parameters; a value that would do nothing is refused, not ignored.
    if p.get("negative_prompt") not in (None, ""):
        raise _fail(f"{path}.negative_prompt", "is not supported: Z-Image-Turbo is "
                    "guidance-distilled and has no negative prompt (leave it out)")
    if p.get("guidance") not in (None, 0, 0.0) or isinstance(p.get("guidance"), bool):
        raise _fail(f"{path}.guidance", "is not supported: Z-Image-Turbo is guidance-distilled "
                    "(guidance is fixed at 0; leave it out)")
    for side in ("width", "height"):
        v = _int(_get(p, side, f"{path}.{side}", 1024), f"{path}.{side}", limits.min_side,
                 limits.max_side)
        if v % limits.side_multiple:
            raise _fail(f"{path}.{side}", f"must be a multiple of {limits.side_multiple}, "
                        f"got {v}")
        out[side] = v
    if out["width"] * out["height"] > limits.max_pixels:
        raise _fail(f"{path}.width", f"{out['width']}x{out['height']} exceeds "
                    f"{limits.max_pixels} pixels", "too_large")
    out["steps"] = _int(_get(p, "steps", f"{path}.steps", 8), f"{path}.steps", 1,
                        limits.max_steps)
    seed = p.get("seed")
    out["num_images"] = _int(_get(p, "num_images", f"{path}.num_images", 1),
                             f"{path}.num_images", 1, limits.max_images)
    # image i uses seed + i: the last one must stay in range too
    out["seed"] = None if seed is None else _int(seed, f"{path}.seed", 0,
                                                 MAX_SEED + 1 - out["num_images"])

    names = {d["name"]: d for d in blob_descs}

    def blob_ref(key: str) -> str | None:
        if p.get(key) is None:
            return None
        name = _str(p[key], f"{path}.{key}", 1, 32, _NAME_RE)
        if name not in names:
            raise _fail(f"{path}.{key}", f"names blob {name!r}, which this message does not "
                        "carry")
        if not names[name]["mime"].startswith("image/") and \
                names[name]["mime"] != "application/x-raw":
            raise _fail(f"{path}.{key}", "must name an image blob")
        return name

    out["init_image"] = blob_ref("init_image")
    if p.get("strength") is not None:   # absent: the engine's default (see PROTOCOL.md)
        if out["init_image"] is None:
            raise _fail(f"{path}.strength", "needs init_image")
        out["strength"] = _float(p["strength"], f"{path}.strength", 0.0, 1.0)
    out["mask"] = blob_ref("mask")
    if out["mask"] is not None and out["init_image"] is None:
        raise _fail(f"{path}.mask", "needs init_image")
    out["control_image"] = blob_ref("control_image")
    # Inpainting through the ControlNet needs no control map: image + mask are its inputs.
    control_inpaint = p.get("control_type") == "inpaint" and out["mask"] is not None
    if out["control_image"] is not None or control_inpaint:
        out["control_type"] = _str(_get(p, "control_type", f"{path}.control_type"),
                                   f"{path}.control_type", 1, 32, _NAME_RE)
        if p.get("control_scale") is not None:
            out["control_scale"] = _float(p["control_scale"], f"{path}.control_scale", 0.0, 2.0)
    else:
        for key in ("control_type", "control_scale"):
            if p.get(key) is not None:
                raise _fail(f"{path}.{key}", "needs control_image (or, for control_type "
                            "inpaint, init_image and mask)")
    out["tile"] = None if p.get("tile") is None else _enum(p["tile"], f"{path}.tile",
                                                           TILE_MODES)
    if p.get("loras") is not None:
        out["loras"] = _loras(p["loras"], f"{path}.loras")
    return {k: v for k, v in out.items() if v is not None or k == "seed"}


def _loras(value: Any, path: str) -> list[dict] | None:
    """[{name, weight}]: names from the engine's welcome (never paths), weights in range."""
    if not isinstance(value, list):
        raise _fail(path, "must be a list of {name, weight}")
    if len(value) > MAX_LORAS:
        raise _fail(path, f"at most {MAX_LORAS} LoRAs at once")
    out, seen = [], set()
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        item = _obj(item, p)
        name = _str(_get(item, "name", f"{p}.name"), f"{p}.name", 1, 200)
        if any(c in name for c in "/\\") or not name.isprintable():
            raise _fail(f"{p}.name", "must be a LoRA name from the engine's welcome, not a path")
        if name in seen:
            raise _fail(f"{p}.name", f"LoRA {name!r} is listed twice")
        seen.add(name)
        weight = _float(_get(item, "weight", f"{p}.weight", 1.0), f"{p}.weight",
                        -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT)
        out.append({"name": name, "weight": weight})
    return out or None


def required_capabilities(params: dict) -> list[tuple[str, tuple[str, ...]]]:
    """(param, acceptable capability names) for each image mode a validated params dict uses.
    A control image needs `control.<control_type>` (or a blanket `control`)."""
    out = [(key, (cap,)) for key, cap in PARAM_CAPABILITY.items()
           if key != "control_image" and params.get(key) is not None]
    if params.get("control_type") is not None:
        key = "control_image" if params.get("control_image") is not None else "control_type"
        out.append((key, (f"control.{params['control_type']}", "control")))
    return out


# ---- requests (client -> engine) ---------------------------------------------------------

def _job_id(value: Any, path: str = "job_id") -> str:
    return _str(value, path, 1, 64, _ID_RE)


def validate_request(header: dict, blobs: list, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Validate one parsed client message. Returns a normalised dict; raises ProtocolError.

    Structural problems (type, session, ids, blob frames) are `bad_request`; a value that is
    out of bounds inside `params` is `invalid_params`; sizes over a limit are `too_large`."""
    try:
        return _validate_request(header, blobs, limits)
    except ProtocolError:
        raise
    except Exception as exc:  # a validator bug must still come out as a protocol error
        raise ProtocolError("bad_request", f"malformed message ({type(exc).__name__})") from None


def _structural(fn, *args):
    try:
        return fn(*args)
    except ProtocolError as exc:
        if exc.code == "invalid_params":
            raise ProtocolError("bad_request", exc.message, field=exc.field) from None
        raise


def _validate_request(header: dict, blobs: list, limits: Limits) -> dict:
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise _fail("type", f"must be one of {', '.join(CLIENT_TYPES)}", "bad_request")
    out: dict[str, Any] = {"type": kind}
    out["session"] = _structural(_str, _get(header, "session", "session", code="bad_request"),
                                 "session", 16, 64, _SESSION_RE)
    msg_id = header.get("msg_id")
    out["msg_id"] = None if msg_id is None else _structural(_str, msg_id, "msg_id", 1, 64,
                                                            _ID_RE)
    if kind != "submit" and blobs:
        raise _fail("blobs", f"{kind} carries no blobs", "bad_request")

    if kind == "hello":
        versions = _structural(_list, _get(header, "versions", "versions", [1]), "versions", 16)
        out["versions"] = [_structural(_int, v, f"versions[{i}]", 0, 1_000_000)
                           for i, v in enumerate(versions)]
        client = _structural(_obj, header.get("client") or {}, "client")
        out["client"] = {k: _structural(_str, client[k], f"client.{k}", 0, 64)
                         for k in ("name", "version", "host", "host_version")
                         if client.get(k) is not None}
        caps = _structural(_list, header.get("caps") or [], "caps", 32)
        out["caps"] = [_structural(_str, c, f"caps[{i}]", 1, 64) for i, c in enumerate(caps)]
        token = header.get("token")
        if token is not None:
            out["token"] = _structural(_str, token, "token", 0, 128)
        resume = _structural(_list, header.get("resume_jobs") or [], "resume_jobs", MAX_LIST)
        out["resume_jobs"] = [_structural(_job_id, j, f"resume_jobs[{i}]")
                              for i, j in enumerate(resume)]
    elif kind == "submit":
        out["job_id"] = _structural(_job_id, _get(header, "job_id", "job_id", code="bad_request"))
        descs = validate_blobs(header, blobs, limits)
        out["blobs"] = descs
        out["deadline_ms"] = _int(_get(header, "deadline_ms", "deadline_ms",
                                       limits.default_deadline_ms), "deadline_ms", 1,
                                  limits.max_deadline_ms)
        want = _obj(header.get("want") or {}, "want")
        out["want"] = {
            "result_format": _enum(_get(want, "result_format", "want.result_format", "raw"),
                                   "want.result_format", RESULT_FORMATS),
            "preview_every": _int(_get(want, "preview_every", "want.preview_every", 1),
                                  "want.preview_every", 0, 1000),
            "preview_max_side": _int(_get(want, "preview_max_side", "want.preview_max_side",
                                          256), "want.preview_max_side", 16,
                                     limits.preview_max_side),
        }
        out["priority"] = _enum(_get(header, "priority", "priority", "normal"), "priority",
                                ("normal", "high"))
        live = header.get("live")   # newest frame wins (§4, `live` capability)
        out["live"] = None if live is None else _str(live, "live", 1, 64, _ID_RE)
        out["params"] = validate_params(_get(header, "params", "params"), descs, limits)
    elif kind == "cancel":
        if header.get("all") is not None and _structural(_bool, header["all"], "all"):
            out["all"] = True
            out["job_id"] = None
        else:
            out["all"] = False
            out["job_id"] = _structural(_job_id, _get(header, "job_id", "job_id",
                                                      code="bad_request"))
    elif kind == "status":
        ids = header.get("job_ids")
        out["job_ids"] = None if ids is None else [
            _structural(_job_id, j, f"job_ids[{i}]")
            for i, j in enumerate(_structural(_list, ids, "job_ids", MAX_LIST))]
    elif kind == "fetch":
        out["job_id"] = _structural(_job_id, _get(header, "job_id", "job_id", code="bad_request"))
    return out


# ---- engine -> client (light checks on the client side) ----------------------------------

def validate_event(header: dict, blobs: list, *, max_blob_bytes: int = 256 * 1024 * 1024
                   ) -> dict:
    """Minimal checks of an engine message on the client: known type, sane blob table."""
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in ENGINE_TYPES:
        raise _fail("type", f"unknown engine message type {str(kind)[:32]!r}", "bad_request")
    job_id = header.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or len(job_id) > 64):
        raise _fail("job_id", "bad job id", "bad_request")
    descs = header.get("blobs") or []
    if not isinstance(descs, list) or len(descs) != len(blobs):
        raise _fail("blobs", "blob table does not match the frames", "bad_request")
    for i, (d, b) in enumerate(zip(descs, blobs)):
        if not isinstance(d, dict) or d.get("bytes") != len(b) or len(b) > max_blob_bytes:
            raise _fail(f"blobs[{i}]", "blob descriptor does not match its frame",
                        "bad_request")
    return header

