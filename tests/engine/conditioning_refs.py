"""Shared helpers for the image-conditioning tests: inputs, diffusers oracles, a tiny ControlNet."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tests.fixtures.zimage import to_uint8


def sample_image(width: int = 64, height: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture (not flat, so comparisons mean something)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    img = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    img = img + rng.normal(0, 12, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def box_mask(width: int = 64, height: int = 64, box=(16, 8, 48, 40)) -> np.ndarray:
    """White (repaint) rectangle rows box[0]:box[2], columns box[1]:box[3]."""
    m = np.zeros((height, width), np.uint8)
    m[box[0]:box[2], box[1]:box[3]] = 255
    return m


def diffusers_parts(model_dir):
    from diffusers import ZImagePipeline

    base = ZImagePipeline.from_pretrained(str(model_dir), dtype=torch.float32)
    return dict(scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder,
                tokenizer=base.tokenizer, transformer=base.transformer)


def run_reference(pipe, seed: int, **kwargs) -> np.ndarray:
    """One diffusers call, Turbo style (guidance 0, CPU generator), -> uint8 HxWx3."""
    from PIL import Image

    pil = {k: Image.fromarray(v) for k, v in kwargs.items()
           if k in ("image", "mask_image", "control_image")}
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        out = pipe(**{**kwargs, **pil}, guidance_scale=0.0, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(seed))
    return to_uint8(out.images)[0]


def make_controlnet_file(path: Path, *, n_control_layers: int, seed: int = 99, dim: int = 64,
                         n_heads: int = 2, n_refiner_layers: int = 2, control_in_dim: int = 33,
                         version: str = "2.1"):
    """A tiny random diffusers ZImageControlNetModel, saved as one safetensors file in the
    released key layout (the 2.1 and 1.0 single-file conversions are the identity). version
    "2.1": control_noise_refiner with projections; "2.0": none (the refiner stage runs the control
    layers); "1.0": plain refiner blocks (give control_in_dim=16). Returns the diffusers model."""
    from diffusers import ZImageControlNetModel
    from safetensors.torch import save_file

    from engine import tiny

    cn = ZImageControlNetModel(
        control_layers_places=list(range(n_control_layers)),
        control_refiner_layers_places=list(range(n_refiner_layers)),
        control_in_dim=control_in_dim,
        add_control_noise_refiner={"2.1": "control_noise_refiner",
                                   "2.0": "control_layers"}.get(version),
        dim=dim, n_refiner_layers=n_refiner_layers, n_heads=n_heads, n_kv_heads=n_heads,
        norm_eps=1e-5, qk_norm=True)
    tiny.randomize_(cn, seed)  # the library zero-initialises the projections: that hides bugs
    save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(path))
    return cn.eval()


def assert_within_one_step(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()}/255"
    assert ref.std() > 20, "reference is flat: the comparison would prove nothing"


@contextmanager
def trainer_faithful(pipe):
    """Make a diffusers ZImageControlNet[Inpaint]Pipeline behave as the trainer (VideoX-Fun) and
    ComfyUI run the Fun-ControlNet 2.x files: the control refiner's hints are added to the MAIN
    transformer's noise-refiner output too, not only inside the ControlNet's own pass.

    Hooks, no copied model code: the stacked output of the last control refiner block is captured
    (its entries but the last are the hints) with the conditioning scale of that ControlNet call;
    while the main transformer runs (a flag set by its pre/post hooks), the shared noise-refiner
    layer k gets hint[k] * scale added to its output. The hooks go when the block ends."""
    cn, transformer = pipe.controlnet, pipe.transformer
    # 2.1: the control refiner blocks; 2.0: the first of the two passes of the control layers
    refiner = {"control_noise_refiner": cn.control_noise_refiner,
               "control_layers": cn.control_layers}[cn.add_control_noise_refiner]
    state = {"main": False, "hints": None, "scale": None}

    def on_controlnet(module, args, kwargs):
        state["scale"] = kwargs.get("conditioning_scale", 1.0)
        state["hints"] = None

    def on_last_refiner(module, args, out):
        if state["hints"] is None:  # the refiner stage comes first in every ControlNet call
            state["hints"] = torch.unbind(out)[:-1]

    def main_flag(value):
        def hook(module, *_):
            state["main"] = value
        return hook

    def on_refiner(k):
        def hook(module, args, out):
            if not state["main"] or k not in cn.control_refiner_layers_places:
                return out
            idx = cn.control_refiner_layers_places.index(k)
            return out + state["hints"][idx] * state["scale"]
        return hook

    handles = [cn.register_forward_pre_hook(on_controlnet, with_kwargs=True),
               refiner[-1].register_forward_hook(on_last_refiner),
               transformer.register_forward_pre_hook(main_flag(True)),
               transformer.register_forward_hook(main_flag(False))]
    handles += [layer.register_forward_hook(on_refiner(k))
                for k, layer in enumerate(transformer.noise_refiner)]
    try:
        yield pipe
    finally:
        for h in handles:
            h.remove()
