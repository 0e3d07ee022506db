"""Prompt -> images: text encoding, Euler denoising with the S3-DiT, VAE decode. No sockets here.
Built by engine.loading.load_pipeline (this module imports no loader: no import circle).

`ZImagePipeline.generate(request, on_progress, should_cancel)` is the one entry point that the CLI
and the server call; it raises `Cancelled` or `EngineError`, never a bare library exception for
anything a user can cause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine import devices, lora, memory
from engine.conditioning import (
    CONTROL_SCALE,
    check_conditioning,
    fit_image,
    fit_mask,
    image_tensor,
    latent_mask,
    mask_tensor,
    resolve_strength,
)
from engine.errors import Cancelled, EngineError
from engine.model.transformer import Control
from engine.sampling import (
    LATENT_CHANNELS,
    VAE_SCALE,
    cut_schedule,
    denoise,
    get_noises,
    get_schedule,
    scale_noise,
    seamless,
)

from protocol.errors import ProtocolError
from protocol.messages import Limits, validate_params  # one definition of what is accepted
# The one request type, from the client to here; seeds are drawn in one place.
from protocol.request import MAX_SEED, GenerateRequest, random_seed

log = logging.getLogger(__name__)



@dataclass
class Progress:
    stage: str  # "encode_text" | "denoise" | "decode"
    step: int
    steps: int
    latents: torch.Tensor | None = None  # the clean-image estimate during "denoise", for previews


@dataclass
class Result:
    images: list[np.ndarray]  # H x W x 3 uint8
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds


def check_request(req: GenerateRequest, limits: Limits) -> None:
    """Raise EngineError naming the field. The bounds are the protocol's (one definition,
    protocol/messages.py validate_params); the image checks need the pixels (conditioning)."""
    params = req.to_params()
    images = [k for k in ("init_image", "mask", "control_image") if k in params]
    params.update({k: k for k in images})   # the image checks below need the pixels
    try:
        validate_params(params, [{"name": k, "mime": "application/x-raw"} for k in images],
                        limits, path="")
    except ProtocolError as exc:
        name = (exc.field or "request").lstrip(".")
        value = getattr(req, name, None)
        shown = f"{name} {value!r}" if isinstance(value, str) else f"{name} {value}"
        raise EngineError(exc.code, f"{shown}: {exc.message}", field=name) from None
    check_conditioning(req)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """VAE output in [-1, 1], [B, 3, H, W] -> list of H x W x 3 uint8 (rounded like diffusers)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(x)


# FLUX.1 latent -> RGB projection for previews (ComfyUI's latent_formats.Flux factors): a matmul
# per step instead of a VAE decode.
_PREVIEW_RGB = torch.tensor([
    [-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
])
_PREVIEW_BIAS = torch.tensor([-0.0329, -0.0718, -0.0851])


def preview(latents: torch.Tensor, max_side: int = 256) -> np.ndarray:
    """[1|B, 16, h, w] latents -> small H x W x 3 uint8 of the first image (no VAE)."""
    z = latents[0].float().cpu()
    rgb = torch.einsum("chw,cr->rhw", z, _PREVIEW_RGB) + _PREVIEW_BIAS[:, None, None]
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    h, w = rgb.shape[1:]
    scale = max_side / max(h, w)
    if scale < 1:  # only shrink: the projection is at 1/8 of the image size already
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        rgb = torch.nn.functional.interpolate(rgb[None], size=size, mode="area")[0]
    return (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


class ZImagePipeline:
    """Holds the loaded components and runs requests one at a time."""

    def __init__(self, transformer, vae, text_encoder, *, shift: float, device: torch.device,
                 dtype: torch.dtype, model_id: str = "", limits: Limits = Limits(),
                 controlnet=None, lora_library: lora.LoraLibrary | None = None):
        self.transformer = transformer
        self.controlnet = controlnet  # engine.model.controlnet.ZImageControlNet or None
        self.vae = vae
        self.text_encoder = text_encoder
        self.shift = shift
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self.limits = limits
        self.memory = memory.MemoryState()  # where the weights are (engine/memory.py changes it)
        self.compiled: list[str] = []  # parts wrapped in torch.compile (engine/compile.py)
        self.compile_seconds: float | None = None  # compile + warm-up time at load, if compiled
        self.lora_library = lora_library or lora.LoraLibrary()  # what requests may name
        self.loras = lora.LoraSet(transformer)  # what is applied now (kept between requests)

    @property
    def info(self) -> dict:
        return {
            "model": self.model_id,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "capabilities": self.capabilities,
            "loras": [i.to_wire() for i in self.lora_library.infos()],
        }

    @property
    def capabilities(self) -> list[str]:
        caps = ["txt2img", "img2img", "inpaint", "tile", "lora"]
        if self.controlnet is not None:
            caps += ["control.depth", "control.canny", "control.pose"]
            if self.controlnet.control_in_dim >= 2 * LATENT_CHANNELS + 1:
                caps.append("control.inpaint")
        return caps

    def check_capabilities(self, req: GenerateRequest) -> None:
        """Raise EngineError(capability_unavailable) for a mode this engine has not loaded."""
        if req.control_type is None:
            return
        if f"control.{req.control_type}" not in self.capabilities:
            why = ("no ControlNet is loaded (start with --controlnet PATH to "
                   "Z-Image-Turbo-Fun-Controlnet-Union-2.1)" if self.controlnet is None else
                   "the loaded ControlNet has no inpaint channels (use the 2.x Union model)")
            raise EngineError("capability_unavailable",
                              f"control type {req.control_type!r} is unavailable: {why}",
                              field="control_type")

    def preview(self, latents: torch.Tensor, max_side: int = 256) -> np.ndarray:
        return preview(latents, max_side)

    def unload(self) -> int:
        """Free GPU memory until the next request (weights to host memory); bytes freed."""
        return memory.unload(self)

    @torch.no_grad()
    def generate(self, req: GenerateRequest,
                 on_progress: Callable[[Progress], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> Result:
        check_request(req, self.limits)
        self.check_capabilities(req)
        seed = req.seed if req.seed is not None else random_seed(req.num_images)
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(req.num_images)]
        report = on_progress or (lambda p: None)

        def check_cancel(step: int | None) -> None:
            if should_cancel is not None and should_cancel():
                raise Cancelled(step)

        timings: dict[str, float] = {}
        try:
            check_cancel(None)
            memory.ensure_resident(self)  # after an unload ("free VRAM")
            self.use_loras(req.loras)
            t0 = time.perf_counter()
            report(Progress("encode_text", 0, 1))
            cap = self.text_encoder.encode(req.prompt).to(self.device, self.dtype)
            caps = cap[None].expand(req.num_images, -1, -1)
            timings["text_ms"] = _ms_since(t0, self.device)

            t0 = time.perf_counter()
            x, sigmas, velocity, after_step = self._prepare(req, seeds, caps)
            steps = len(sigmas) - 1  # fewer than req.steps for image-to-image (strength < 1)

            def on_step(i: int, x_: torch.Tensor, x0: torch.Tensor) -> None:
                report(Progress("denoise", i + 1, steps, x0))
                check_cancel(i + 1)

            check_cancel(0)
            x = denoise(velocity, x, sigmas, on_step, after_step)
            timings["denoise_ms"] = _ms_since(t0, self.device)

            t0 = time.perf_counter()
            report(Progress("decode", 0, 1))
            images = to_uint8(memory.decode_latents(self, x, wrap=req.tile or ""))
            timings["decode_ms"] = _ms_since(t0, self.device)
        except torch.OutOfMemoryError:
            memory.reset_after_error(self)  # streamed layers back to host memory
            devices.empty_cache(self.device)
            raise memory.oom_error(self.memory.plan, req.width, req.height,
                                   req.num_images, memory.free_bytes(self.device)) from None
        return Result(images=images, seeds=seeds, timings=timings)

    def use_loras(self, loras) -> None:
        """Make exactly these (name, weight) LoRAs active; the set stays until it changes."""
        names = self.loras.slots.keys()
        read = [(self.lora_library.read(name, names), float(w)) for name, w in loras]
        self.loras.apply(read, device=self.device, dtype=self.dtype)

    def run(self, req: GenerateRequest) -> Result:
        """One request, no callbacks: what benchmarks time (every mode, same code path)."""
        return self.generate(req)

    def _prepare(self, req: GenerateRequest, seeds: list[int], caps: torch.Tensor):
        """The one denoising loop's inputs for every mode: (start latents, sigmas, velocity,
        after_step). img2img = cut schedule + noised image start; inpaint = a latent blend after
        each step; control = hints through the transformer's control hook; tile = rolls."""
        dev, W, H = self.device, req.width, req.height
        wrap = req.tile or ""  # seamless: every VAE conv wraps on these axes
        lh, lw = H // VAE_SCALE, W // VAE_SCALE
        strength = resolve_strength(req)
        control_inpaint = req.control_type == "inpaint"
        sigmas = get_schedule(req.steps, self.shift)
        if req.init_image is not None:
            sigmas = cut_schedule(sigmas, strength)
        # diffusers' generator order: the VAE posterior sample of the input image, then the noise.
        use_init = req.init_image is not None and not (control_inpaint and strength == 1.0)
        draws = [get_noises(s, H, W, 2 if use_init else 1) for s in seeds]
        noise = torch.cat([d[-1] for d in draws]).to(dev)
        x = noise
        image = mask = init = None
        if req.init_image is not None:
            image = image_tensor(fit_image(req.init_image, W, H)).to(dev)
        if req.mask is not None:
            mask = mask_tensor(fit_mask(req.mask, W, H)).to(dev)
        if use_init:
            init = self.vae.encode(image, noise=torch.cat([d[0] for d in draws]), wrap=wrap)
            x = scale_noise(init, sigmas[0], noise) if len(sigmas) > 1 else init

        after_step = None
        if mask is not None and not control_inpaint:
            m = latent_mask(mask, lh, lw)

            def after_step(i: int, x_: torch.Tensor) -> torch.Tensor:
                proper = scale_noise(init, sigmas[i + 1], noise) if i < len(sigmas) - 2 else init
                return (1 - m) * proper + m * x_

        control = None
        if req.control_type is not None:
            cn = self.controlnet
            if req.control_image is not None:
                ctrl = image_tensor(fit_image(req.control_image, W, H)).to(dev)
                parts = [self.vae.encode(ctrl, wrap=wrap)]
            else:
                parts = [torch.zeros(1, LATENT_CHANNELS, lh, lw, device=dev)]
            if control_inpaint:  # [control, 1 - mask, masked image], as ZImageControlNetInpaint
                parts += [latent_mask(1 - mask, lh, lw),
                          self.vae.encode(image * (mask < 0.5), wrap=wrap)]
            control = torch.cat(parts, dim=1)
            if control.shape[1] < cn.control_in_dim:  # unused channels are zeros
                pad = cn.control_in_dim - control.shape[1]
                control = torch.cat([control, control.new_zeros(1, pad, lh, lw)], dim=1)
            control = control.to(self.dtype)

        def model(x_: torch.Tensor, t: torch.Tensor, shift=(0, 0)) -> torch.Tensor:
            ctrl = None
            if control is not None:
                c = torch.roll(control, shift, dims=(-2, -1)) if any(shift) else control
                scale = CONTROL_SCALE if req.control_scale is None else req.control_scale
                ctrl = Control(cn, c, scale)
            return self.transformer(x_.to(self.dtype), t, caps, control=ctrl)

        velocity = seamless(model, len(sigmas) - 1, req.tile) if req.tile else model
        return x, sigmas, velocity, after_step


def _ms_since(t0: float, device: torch.device) -> float:
    devices.synchronize(device)
    return (time.perf_counter() - t0) * 1000

