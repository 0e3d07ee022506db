"""Generation settings -> the `params` dict (and image blobs) sent with `submit`.

Sizes: presets are multiples of 16; "match aspect" turns a camera/render aspect ratio into
the nearest multiple-of-16 size with about the preset's pixel count. Everything is checked
against the engine's limits (from its welcome) before anything is sent, so an unsupported
size is a message in the panel, not a round trip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# The protocol (limits, the typed request, seeds): the vendored copy in the built add-on and
# the Krita plugin, the checkout's protocol/ when the add-on runs from source (tests).
try:
    from ..vendor.protocol import messages as _messages, request as _request
    from ..vendor.protocol.errors import ProtocolError as _ProtocolError
except ImportError:
    from protocol import messages as _messages, request as _request
    from protocol.errors import ProtocolError as _ProtocolError

SIDE_MULTIPLE = 16

# (identifier, label, width, height); every side a multiple of 16
SIZE_PRESETS: tuple[tuple[str, str, int, int], ...] = (
    ("512", "512 x 512", 512, 512),
    ("768", "768 x 768", 768, 768),
    ("1024", "1024 x 1024", 1024, 1024),
    ("1024x768", "1024 x 768 (4:3)", 1024, 768),
    ("768x1024", "768 x 1024 (3:4)", 768, 1024),
    ("1280x720", "1280 x 720 (16:9)", 1280, 720),
    ("720x1280", "720 x 1280 (9:16)", 720, 1280),
    ("1536x640", "1536 x 640 (21:9)", 1536, 640),
)
PRESET_SIZES = {key: (w, h) for key, _label, w, h in SIZE_PRESETS}

# what the UI's IntProperty can hold; the protocol allows more. Random seeds (resolve_seed)
# are drawn so that every image's seed fits it.
MAX_SEED = 2**31 - 1

_DEFAULTS = _messages.DEFAULT_LIMITS     # the protocol's own default limits


@dataclass(frozen=True)
class EngineLimits:
    """The subset of the engine's limits the add-on checks. Until the engine's `welcome`
    says otherwise, the protocol's defaults (the same numbers the engine starts from)."""
    min_side: int = _DEFAULTS.min_side
    max_side: int = _DEFAULTS.max_side
    side_multiple: int = _DEFAULTS.side_multiple
    max_pixels: int = _DEFAULTS.max_pixels
    max_steps: int = _DEFAULTS.max_steps
    max_images: int = _DEFAULTS.max_images
    max_prompt_chars: int = _DEFAULTS.max_prompt_chars

    @classmethod
    def from_welcome(cls, welcome: dict | None) -> "EngineLimits":
        limits = (welcome or {}).get("limits") or {}
        kwargs = {}
        for name in cls.__dataclass_fields__:
            value = limits.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                kwargs[name] = value
        return cls(**kwargs)


def capabilities(welcome: dict | None) -> set[str]:
    """The capability names a welcome advertises ('txt2img', 'img2img', 'control.depth', ...).

    Accepts `caps` or `capabilities`, as a list of names or a {name: bool|info} mapping."""
    if not welcome:
        return set()
    caps = welcome.get("caps", welcome.get("capabilities")) or []
    if isinstance(caps, dict):
        return {str(k) for k, v in caps.items() if v}
    return {str(c) for c in caps if isinstance(c, str)}


def can_depth(caps: set[str]) -> bool:
    """PROTOCOL.md: a control image needs `control.<type>` or a blanket `control`."""
    return "control.depth" in caps or "control" in caps


def can_img2img(caps: set[str]) -> bool:
    return "img2img" in caps


def can_free_vram(caps: set[str]) -> bool:
    return "unload" in caps


def unloaded_notice(freed_bytes) -> str:
    """The panel's line after "Free VRAM"; the next job loads the models back."""
    gib = (freed_bytes or 0) / 1024**3
    freed = f"{gib:.1f} GB of GPU memory freed" if gib >= 0.05 else "GPU memory freed"
    return f"{freed}; the next job reloads the model"


def snap(value: float, multiple: int = SIDE_MULTIPLE) -> int:
    """Nearest multiple (at least one multiple)."""
    return max(multiple, int(round(value / multiple)) * multiple)


def size_for_aspect(aspect: float, pixels: int, limits: EngineLimits = EngineLimits()
                    ) -> tuple[int, int]:
    """A width x height with width/height ~= aspect, about `pixels` pixels, both sides
    multiples of the engine's side multiple and inside its limits."""
    if not (aspect > 0 and math.isfinite(aspect)):
        aspect = 1.0
    m = limits.side_multiple
    lo, hi = limits.min_side, limits.max_side
    aspect = min(max(aspect, lo / hi), hi / lo)
    h = math.sqrt(pixels / aspect)
    w = h * aspect
    if max(w, h) > hi:                      # keep inside the max side, keep the aspect
        k = hi / max(w, h)
        w, h = w * k, h * k
    if min(w, h) < lo:
        k = lo / min(w, h)
        w, h = w * k, h * k
    w = min(max(snap(w, m), _ceil_to(lo, m)), _floor_to(hi, m))
    h = min(max(snap(h, m), _ceil_to(lo, m)), _floor_to(hi, m))
    while w * h > limits.max_pixels and max(w, h) > lo:
        if w >= h:
            w -= m
        else:
            h -= m
    return w, h


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _floor_to(v: int, m: int) -> int:
    return (v // m) * m


def size_problem(width: int, height: int, limits: EngineLimits) -> str | None:
    """None if the engine accepts width x height, else a short reason."""
    m = limits.side_multiple
    if width % m or height % m:
        return f"{width} x {height}: both sides must be multiples of {m}"
    for side in (width, height):
        if not limits.min_side <= side <= limits.max_side:
            return (f"{width} x {height}: each side must be {limits.min_side} to "
                    f"{limits.max_side}")
    if width * height > limits.max_pixels:
        return f"{width} x {height}: more than {limits.max_pixels} pixels"
    return None


@dataclass
class Settings:
    """What the panel holds (a plain copy, so request building needs no bpy)."""
    prompt: str
    width: int = 1024
    height: int = 1024
    steps: int = 8
    seed_random: bool = True
    seed: int = 0
    num_images: int = 1
    # image context (concept images): "none", "img2img" or "depth"
    context: str = "none"
    strength: float = 0.6
    control_scale: float = 0.75
    loras: tuple = ()               # ((name, weight), ...): names from the engine's welcome


@dataclass
class Request:
    """One submit: params + blobs, plus what the add-on needs to remember about it."""
    params: dict
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.params["seed"])


class RequestError(ValueError):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def resolve_seed(settings: Settings, rng: random.Random | None = None) -> int:
    """The add-on draws random seeds itself, not the engine, so the seed is known and shown
    before the result arrives. The draw is the protocol's (protocol/request.py random_seed,
    the one rule for the range), bounded by the panel's seed field: image i's seed + i fits
    it too, so any result's seed can be recalled into the panel."""
    if settings.seed_random:
        return _request.random_seed(settings.num_images, upper=MAX_SEED, rng=rng)
    return int(settings.seed)


def build_request(settings: Settings, limits: EngineLimits, caps: set[str], *,
                  rng: random.Random | None = None, init_png: bytes | None = None,
                  depth_png: bytes | None = None) -> Request:
    """Validate the settings against the engine and build the submit. Raises RequestError
    (code from core.errors) instead of sending something the engine will refuse."""
    prompt = settings.prompt.strip()
    if not prompt:
        raise RequestError("invalid_params", "the prompt is empty")
    problem = size_problem(settings.width, settings.height, limits)
    if problem:
        raise RequestError("unsupported_size", problem)
    if not 1 <= settings.steps <= limits.max_steps:
        raise RequestError("invalid_params", f"steps must be 1 to {limits.max_steps}")
    if not 1 <= settings.num_images <= limits.max_images:
        raise RequestError("invalid_params",
                           f"number of images must be 1 to {limits.max_images}")
    params = {
        "prompt": prompt,
        "width": int(settings.width),
        "height": int(settings.height),
        "steps": int(settings.steps),
        "seed": resolve_seed(settings, rng),
        "num_images": int(settings.num_images),
    }
    blobs: dict[str, bytes] = {}
    if settings.context == "img2img":
        if not can_img2img(caps):
            raise RequestError("capability_unavailable", "image-to-image")
        if not init_png:
            raise RequestError("capture_failed", "no captured image")
        blobs["init_image"] = init_png
        params["init_image"] = "init_image"
        params["strength"] = round(float(settings.strength), 4)
    elif settings.context == "depth":
        if not can_depth(caps):
            raise RequestError("capability_unavailable", "depth control")
        if not depth_png:
            raise RequestError("capture_failed", "no depth capture")
        blobs["control_image"] = depth_png
        params["control_image"] = "control_image"
        params["control_type"] = "depth"
        params["control_scale"] = round(float(settings.control_scale), 4)
    elif settings.context != "none":
        raise RequestError("invalid_params", f"unknown context {settings.context!r}")
    if settings.loras:
        if not can_lora(caps):
            raise RequestError("capability_unavailable", "LoRAs")
        params["loras"] = [{"name": n, "weight": round(float(w), 4)} for n, w in settings.loras]
    return Request(typed_params(params, blobs, limits), blobs)


MAX_LISTED_LORAS = 256      # the protocol's bound on welcome.loras


def can_lora(caps: set[str]) -> bool:
    return "lora" in caps


def engine_loras(welcome: dict | None) -> list[dict]:
    """The LoRAs an engine offers, from its welcome: [{name, rank, trigger_words}], bounded."""
    out = []
    for item in list((welcome or {}).get("loras") or [])[:MAX_LISTED_LORAS]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        rank = item.get("rank")
        out.append({"name": item["name"][:200],
                    "rank": rank if isinstance(rank, int) else 0,
                    "trigger_words": str(item.get("trigger_words") or "")[:200]})
    return out


def typed_params(params: dict, blobs: dict[str, bytes], limits: EngineLimits) -> dict:
    """The protocol's typed request (protocol/request.py), validated against the engine's
    limits: the params the engine will accept, or RequestError naming the field."""
    lim = _messages.Limits(**{k: getattr(limits, k) for k in EngineLimits.__dataclass_fields__})
    descs = [{"name": name, "mime": "image/png", "bytes": len(data)}
             for name, data in blobs.items()]
    try:
        return _request.GenerateRequest.from_params(params, descs, lim).to_params()
    except _ProtocolError as exc:
        raise RequestError(exc.code if exc.code in ("invalid_params", "too_large")
                           else "invalid_params", f"{exc.field}: {exc.message}") from None


def image_name(prompt: str, seed: int, limit: int = 40) -> str:
    """A datablock name from the prompt: 'a red fox (seed 42)'. Blender names hold 63 bytes."""
    text = " ".join(prompt.split()) or "image"
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "\u2026"
    name = f"{text} ({seed})"
    while len(name.encode("utf-8")) > 63:
        text = text[:-2] + "\u2026"
        name = f"{text} ({seed})"
    return name


# ---- checks and extras added on top of build_request (prompt length, seamless, touch-up) --

TILE_MODES = {"NONE": None, "X": "x", "Y": "y", "XY": "xy"}


def prompt_problem(prompt: str, limits: EngineLimits) -> str | None:
    """None if the engine takes the prompt, else a sentence naming the limit (checked before
    sending; the engine counts characters of the stripped prompt the same way)."""
    n = len(prompt.strip())
    if n > limits.max_prompt_chars:
        return (f"the prompt has {n:,} characters; the engine takes at most "
                f"{limits.max_prompt_chars:,}")
    return None


def can_tile(caps: set[str]) -> bool:
    return "tile" in caps


def can_inpaint(caps: set[str]) -> bool:
    return "inpaint" in caps or "control.inpaint" in caps or "control" in caps


def add_tile(request: Request, mode: str, caps: set[str]) -> Request:
    """Seamless tiling ("X", "Y", "XY"; "NONE" adds nothing) as the protocol's `tile`."""
    tile = TILE_MODES.get(mode)
    if tile is None:
        return request
    if not can_tile(caps):
        raise RequestError("capability_unavailable", "seamless tiling")
    request.params["tile"] = tile
    return request


def add_inpaint(request: Request, image_png: bytes, mask_png: bytes, caps: set[str]
                ) -> Request:
    """Touch-up: repaint where the mask is white, starting from the image. The engine's own
    `inpaint` when it has one, else the ControlNet's inpaint mode."""
    if "inpaint" in caps:
        pass
    elif "control.inpaint" in caps or "control" in caps:
        request.params["control_type"] = "inpaint"
    else:
        raise RequestError("capability_unavailable", "inpainting")
    request.blobs["init_image"] = image_png
    request.blobs["mask"] = mask_png
    request.params["init_image"] = "init_image"
    request.params["mask"] = "mask"
    return request
