"""Docker settings -> one submit (params + raw blobs), checked before anything is sent.

The txt2img part (prompt, size limits, steps, images, seed) is the Blender add-on's
build_request (addon_core); this module adds what Krita does with the canvas: image to image
from the visible canvas or a layer, inpainting from the selection, seamless tiles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import pixels, shared
from .link import Raw

GENERATE, IMG2IMG, INPAINT = "generate", "img2img", "inpaint"
MODES = (GENERATE, IMG2IMG, INPAINT)
CANVAS, LAYER = "canvas", "layer"           # image sources
SIZE_CANVAS, SIZE_CUSTOM = "canvas", "custom"
SIZE_PRESETS = shared.requests.SIZE_PRESETS
RequestError = shared.requests.RequestError
EngineLimits = shared.requests.EngineLimits
capabilities = shared.requests.capabilities
image_name = shared.requests.image_name


@dataclass
class KritaSettings:
    """What the docker holds, as plain values."""
    prompt: str
    mode: str = GENERATE
    source: str = CANVAS
    size: str = SIZE_CANVAS                  # canvas | a preset key | custom
    width: int = 1024                        # custom size
    height: int = 1024
    steps: int = 8
    seed_random: bool = True
    seed: int = 0
    num_images: int = 1
    seamless: bool = False
    strength: float = 0.6


@dataclass
class Capture:
    """What the glue read from the document: the source image (RGB) and, for inpainting,
    the selection as one grey byte a pixel (255 = repaint), both canvas-sized."""
    width: int
    height: int
    rgb: bytes
    mask: bytes | None = None


def canvas_size_for_engine(canvas: tuple[int, int], limits: EngineLimits) -> tuple[int, int]:
    """The canvas grown to the engine's side multiple (and minimum side): the engine works
    on that, and the result is cropped back, so every canvas pixel keeps its place."""
    m = limits.side_multiple
    return tuple(max(-(-side // m) * m, -(-limits.min_side // m) * m) for side in canvas)


def target_size(settings: KritaSettings, canvas: tuple[int, int],
                limits: EngineLimits = EngineLimits()) -> tuple[int, int]:
    """Image to image and inpainting work on the canvas as it is; generation may use a
    preset or custom size."""
    if settings.mode != GENERATE or settings.size == SIZE_CANVAS:
        return canvas_size_for_engine(canvas, limits)
    if settings.size == SIZE_CUSTOM:
        return int(settings.width), int(settings.height)
    if settings.size in shared.requests.PRESET_SIZES:
        return shared.requests.PRESET_SIZES[settings.size]
    raise RequestError("invalid_params", f"unknown size {settings.size!r}")


def crops_to_canvas(settings: KritaSettings) -> bool:
    return settings.mode != GENERATE or settings.size == SIZE_CANVAS


def build(settings: KritaSettings, limits: EngineLimits, caps: set[str] | None,
          canvas: tuple[int, int], capture: Capture | None = None, *,
          rng: random.Random | None = None) -> shared.requests.Request:
    """caps None: the engine has not said yet (not connected); it checks on arrival."""
    if settings.mode not in MODES:
        raise RequestError("invalid_params", f"unknown mode {settings.mode!r}")
    width, height = target_size(settings, canvas, limits)
    base = shared.requests.Settings(
        prompt=settings.prompt, width=width, height=height, steps=int(settings.steps),
        seed_random=bool(settings.seed_random), seed=int(settings.seed),
        num_images=int(settings.num_images))
    request = shared.requests.build_request(base, limits, set(), rng=rng)
    params, blobs = request.params, {}

    def need(cap: str, what: str) -> None:
        if caps is not None and cap not in caps:
            raise RequestError("capability_unavailable", what)

    if settings.seamless:
        need("tile", "seamless tiles")
        params["tile"] = "xy"
    if settings.mode in (IMG2IMG, INPAINT):
        if capture is None or (capture.width, capture.height) != tuple(canvas):
            raise RequestError("capture_failed", "the canvas could not be read")
        blobs["init_image"] = Raw(width, height, 3, pixels.pad(
            capture.rgb, capture.width, capture.height, 3, width, height))
        params["init_image"] = "init_image"
    if settings.mode == IMG2IMG:
        need("img2img", "image to image")
        params["strength"] = round(min(max(float(settings.strength), 0.0), 1.0), 4)
    elif settings.mode == INPAINT:
        need("inpaint", "inpainting")
        if not capture.mask or not any(capture.mask):
            raise RequestError("no_selection", "nothing is selected")
        blobs["mask"] = Raw(width, height, 1, pixels.pad(
            capture.mask, capture.width, capture.height, 1, width, height, fill=0))
        params["mask"] = "mask"              # strength: the engine's (1.0 with a mask)
    return shared.requests.Request(params, blobs)
