"""Benchmark our pipeline against diffusers' ZImagePipeline on the same weights, in one process.

    python scripts/bench_engine.py --preset tiny                 # CPU, the tiny random model
    python scripts/bench_engine.py --preset full --check         # CPU: real dims on meta + smoke
    python scripts/bench_engine.py --preset full --out $OUT      # GPU: real dims, random weights

`full` builds random weights with the real Z-Image-Turbo dimensions directly on the GPU (nothing to
download). With --cold (default on for full) it first writes them as local safetensors in the
official layout and measures the cold start of both pipelines from those files (host RAM peak too).
Runs alternate ours / diffusers; each stage is timed with a device sync: text encoding, each step,
VAE decode, total. Then (--tasks) image-to-image (strength 0.6) and ControlNet (2.1 layout, depth,
scale 0.75) against diffusers' ZImageImg2ImgPipeline / ZImageControlNetPipeline on the same weights,
images/s per size, peak GPU memory per memory mode at 1024x1024, and the fp8 vs bf16 difference.
Results are printed as markdown tables as they come (paste into docs/benchmarks.md) and written to
OUT/bench_engine.md with --out.

Random weights draw noise: the images mean nothing, the timings and memory do. diffusers and
(for fp8) torchao must be importable; without them those rows are skipped and say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import devices, memory  # noqa: E402
from engine import tiny as tiny_mod  # noqa: E402
from protocol.request import GenerateRequest  # noqa: E402

PROMPT = "a red fox in fresh snow, golden hour, 35mm photo, shallow depth of field"
PROMPT_2 = "a weathered lighthouse on a basalt cliff at dusk, waves breaking into foam"
GiB = 2**30
LINES: list[str] = []
OUT_FILE: list[Path] = []  # set by --out: the markdown is rewritten after every line


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)
    if OUT_FILE:  # a run cut off by a time limit still leaves what it measured
        OUT_FILE[0].write_text("\n".join(LINES) + "\n")


def table(header: list[str], rows: list[list]) -> None:
    say("| " + " | ".join(header) + " |")
    say("|" + "---|" * len(header))
    for r in rows:
        say("| " + " | ".join(str(c) for c in r) + " |")
    say()


class PeakRSS:
    """Host RAM peak (RSS) while the block runs, sampled every 10 ms."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def sync(device):
    devices.synchronize(device)


def gpu_reset(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak(device) -> str:
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / GiB:.2f}"


# ------------------------------------------------------------------------------------------------
# Timed runs


def run_ours(pipe, prompt, w, h, steps, seed=1, **cond) -> dict:
    """cond: the request's image-conditioning fields (init_image, strength, control_image,
    ...)."""
    device = pipe.device
    marks = []
    encode = [0.0]  # VAE encode of the input / control image (img2img, control), inside denoise

    def on_progress(p):
        if p.stage == "denoise":
            sync(device)
            marks.append(time.perf_counter())

    def timed_encode(*a, **k):
        sync(device)
        t = time.perf_counter()
        out = vae_encode(*a, **k)
        sync(device)
        encode[0] += (time.perf_counter() - t) * 1000
        return out

    vae_encode = pipe.vae.encode
    pipe.vae.encode = timed_encode
    try:
        gpu_reset(device)
        sync(device)
        t0 = time.perf_counter()
        res = pipe.generate(GenerateRequest(prompt, w, h, steps=steps, seed=seed, **cond),
                            on_progress)
        total = (time.perf_counter() - t0) * 1000
    finally:
        del pipe.vae.encode
    t_text = res.timings["text_ms"]
    start = t0 + t_text / 1000 + encode[0] / 1000  # the first step's interval minus the encode
    steps_ms = [(b - a) * 1000 for a, b in zip([start] + marks[:-1], marks)]
    return {"text": t_text, "encode": encode[0], "steps": steps_ms,
            "decode": res.timings["decode_ms"], "total": total, "gpu": gpu_peak(device),
            "image": res.images[0]}


def run_diffusers(dpipe, prompt, w, h, steps, device, seed=1, **kwargs) -> dict:
    """Any of diffusers' Z-Image pipelines; kwargs: image / control_image (uint8 arrays, passed
    as PIL like a user would), strength, controlnet_conditioning_scale. A step is one transformer
    call plus, with a ControlNet, its controlnet call."""
    import numpy as np
    from PIL import Image

    marks = {"text": 0.0, "encode": 0.0, "decode": 0.0, "steps": [], "control": []}

    def timed(fn, key):
        def wrapper(*a, **k):
            sync(device)
            t = time.perf_counter()
            out = fn(*a, **k)
            sync(device)
            if isinstance(marks[key], list):
                marks[key].append((time.perf_counter() - t) * 1000)
            else:
                marks[key] += (time.perf_counter() - t) * 1000
            return out
        return wrapper

    controlnet = getattr(dpipe, "controlnet", None)
    dpipe.text_encoder.forward = timed(dpipe.text_encoder.forward, "text")
    dpipe.transformer.forward = timed(dpipe.transformer.forward, "steps")
    dpipe.vae.encode = timed(dpipe.vae.encode, "encode")
    dpipe.vae.decode = timed(dpipe.vae.decode, "decode")
    if controlnet is not None:
        controlnet.forward = timed(controlnet.forward, "control")
    kwargs = {k: Image.fromarray(v) if isinstance(v, np.ndarray) else v
              for k, v in kwargs.items()}
    try:
        gpu_reset(device)
        sync(device)
        t0 = time.perf_counter()
        gen = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            out = dpipe(prompt=prompt, width=w, height=h, num_inference_steps=steps,
                        guidance_scale=0.0, generator=gen, output_type="np", **kwargs)
        sync(device)
        total = (time.perf_counter() - t0) * 1000
    finally:
        del dpipe.text_encoder.forward, dpipe.transformer.forward
        del dpipe.vae.encode, dpipe.vae.decode
        if controlnet is not None:
            del controlnet.forward
    steps_ms = marks["steps"]
    if marks["control"]:
        steps_ms = [a + b for a, b in zip(steps_ms, marks["control"])]
    image = (np.asarray(out.images[0]) * 255).round().astype("uint8")
    return {"text": marks["text"], "encode": marks["encode"], "steps": steps_ms,
            "decode": marks["decode"], "total": total, "gpu": gpu_peak(device), "image": image}


def fmt(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def stage_row(name: str, runs: list[dict]) -> list:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    steps = [statistics.mean(r["steps"]) if r["steps"] else 0.0 for r in runs]
    return [name, fmt(med([r["text"] for r in runs])), fmt(med(steps)),
            fmt(med([sum(r["steps"]) for r in runs])), fmt(med([r["decode"] for r in runs])),
            fmt(med([r["total"] for r in runs])), runs[-1]["gpu"]]


# ------------------------------------------------------------------------------------------------
# Building the two pipelines on the same weights


def configs(preset: str, tokenizer_dir: Path) -> tuple[dict, dict, dict]:
    cfg_dir = ROOT / "engine" / "configs" / "z-image-turbo"
    if preset == "full":
        return tuple(json.loads((cfg_dir / f"{n}.json").read_text())
                     for n in ("transformer", "text_encoder", "vae"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    te = tiny_mod.tiny_text_encoder_config(tiny_mod.tokenizer_size(tokenizer_dir),
                                           pad_id=tok.pad_token_id,
                                           eos_id=tok.convert_tokens_to_ids("<|im_end|>"))
    return (tiny_mod.tiny_transformer_config(cap_feat_dim=te["hidden_size"]), te,
            tiny_mod.tiny_vae_config())


def params(cls, cfg: dict):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    try:
        return cls.from_json(f.name)
    finally:
        os.unlink(f.name)


def build_random(t_cfg, te_cfg, v_cfg, device, dtype):
    """Our transformer and VAE and transformers' Qwen3Model, random, built on `device` in dtype."""
    from transformers import Qwen3Config, Qwen3Model

    from engine.config import TransformerParams, VaeParams
    from engine.model.transformer import ZImageTransformer
    from engine.model.vae import AutoEncoder

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = ZImageTransformer(params(TransformerParams, t_cfg))
            with torch.no_grad():  # pad tokens start at zero; give them values
                transformer.x_pad_token.normal_(0, 0.5)
                transformer.cap_pad_token.normal_(0, 0.5)
            vae = AutoEncoder(params(VaeParams, v_cfg))
            te_config = Qwen3Config(**{k: v for k, v in te_cfg.items() if k != "model_type"})
            te_config._attn_implementation = "sdpa"
            text_model = Qwen3Model(te_config)
    finally:
        torch.set_default_dtype(old)
    for m in (transformer, vae, text_model):
        m.eval().requires_grad_(False)
    return transformer, text_model, vae


def save_layout(folder: Path, transformer, text_model, vae, t_cfg, v_cfg, tokenizer_dir):
    """The official folder layout, from the built modules (cold-start measurement)."""
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(tiny_mod.MODEL_INDEX))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(tiny_mod.SCHEDULER_CONFIG))
    shutil.copytree(tokenizer_dir, folder / "tokenizer", dirs_exist_ok=True)
    for name, module, cfg in (("transformer", transformer, t_cfg), ("vae", vae, v_cfg)):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(cfg))
        state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(folder / name / "diffusion_pytorch_model.safetensors"))
        del state
    text_model.save_pretrained(str(folder / "text_encoder"), max_shard_size="5GB")


def diffusers_from_modules(transformer, text_model, vae, tokenizer, t_cfg, v_cfg):
    """diffusers' ZImagePipeline whose modules share our (unfused) weight tensors."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline,
                           ZImageTransformer2DModel)

    kw = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    with torch.device("meta"):
        dt = ZImageTransformer2DModel(**kw(t_cfg))
        dv = AutoencoderKL(**kw(v_cfg))
    dt.load_state_dict(transformer.state_dict(), strict=True, assign=True)
    dv.load_state_dict(vae.state_dict(), strict=True, assign=True)
    for m in (dt, dv):
        m.eval().requires_grad_(False)
        left = [n for n, p in m.named_parameters() if p.device.type == "meta"]
        assert not left or transformer.x_pad_token.is_meta, left[:5]
    sched = FlowMatchEulerDiscreteScheduler(**kw(tiny_mod.SCHEDULER_CONFIG))
    pipe = ZImagePipeline(scheduler=sched, vae=dv, text_encoder=text_model, tokenizer=tokenizer,
                          transformer=dt)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Z-Image-Turbo-Fun-Controlnet-Union-2.1 (the full one): 15 control layers on main layers
# 0, 2, ..., 28, a control block per refiner layer (2), 33 input channels (control latent, mask,
# masked-image latent); the block dims are the base transformer's.
CONTROL_LAYERS_21 = 15
CONTROL_IN_DIM = 33


def random_controlnet(t_cfg, device, dtype, n_control_layers=CONTROL_LAYERS_21):
    """Our 2.1-layout ZImageControlNet with the base model's dims, random, built on `device`
    (no file; library init: the projections are not zero, unlike a fresh diffusers model)."""
    from engine.config import TransformerParams
    from engine.model.controlnet import ZImageControlNet

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            cn = ZImageControlNet(params(TransformerParams, t_cfg), control_in_dim=CONTROL_IN_DIM,
                                  n_control_layers=n_control_layers, version="2.1")
    finally:
        torch.set_default_dtype(old)
    return cn.eval().requires_grad_(False)


def diffusers_controlnet(cn, t_cfg):
    """diffusers' ZImageControlNetModel sharing `cn`'s (unfused) tensors: a strict key check of
    the released 2.1 layout against diffusers' class."""
    from diffusers import ZImageControlNetModel

    with torch.device("meta"):
        d = ZImageControlNetModel(
            control_layers_places=cn.layers_places,
            control_refiner_layers_places=cn.refiner_places, control_in_dim=cn.control_in_dim,
            add_control_noise_refiner="control_noise_refiner",
            all_patch_size=tuple(t_cfg["all_patch_size"]),
            all_f_patch_size=tuple(t_cfg["all_f_patch_size"]), dim=t_cfg["dim"],
            n_refiner_layers=t_cfg["n_refiner_layers"], n_heads=t_cfg["n_heads"],
            n_kv_heads=t_cfg["n_kv_heads"], norm_eps=t_cfg["norm_eps"], qk_norm=t_cfg["qk_norm"])
    d.load_state_dict(cn.state_dict(), strict=True, assign=True)
    return d.eval().requires_grad_(False)


def attach_controlnet(pipe, t_cfg, dims, work, use_diffusers):
    """Give `pipe` a random 2.1 ControlNet; return diffusers' model on the same weights (or None).

    full: real dims, built directly on the device. tiny: a single safetensors file in the
    released key layout, written by the tests' builder (tests/engine/conditioning_refs.py: a
    re-randomised diffusers ZImageControlNetModel, every main layer controlled, like 2.1's 15 of
    30) and loaded through our loader (load_controlnet: version detection, strict keys)."""
    from engine.loading import load_controlnet

    device, dtype = pipe.device, pipe.dtype
    dcn = None
    if dims == "full":
        cn = random_controlnet(t_cfg, device, dtype)
        if use_diffusers:
            dcn = diffusers_controlnet(cn, t_cfg)
    else:
        path = work / "controlnet-2.1.safetensors"
        if have("diffusers"):
            from tests.engine.conditioning_refs import make_controlnet_file

            dcn = make_controlnet_file(
                path, n_control_layers=t_cfg["n_layers"], dim=t_cfg["dim"],
                n_heads=t_cfg["n_heads"], n_refiner_layers=t_cfg["n_refiner_layers"],
                control_in_dim=CONTROL_IN_DIM)
            first = next(dcn.parameters())
            if not use_diffusers:
                dcn = None
            elif (first.device, first.dtype) != (device, dtype):
                dcn = dcn.to(device, dtype)
        else:  # same key layout from our own module
            from safetensors.torch import save_file

            cn = tiny_mod.randomize_(random_controlnet(t_cfg, "cpu", torch.float32,
                                                       t_cfg["n_layers"]), 99)
            save_file({k: v.contiguous() for k, v in cn.state_dict().items()}, str(path))
        cn = load_controlnet(path, pipe.transformer, dtype=dtype, device=device)
        assert cn.version == "2.1", cn.version
    pipe.controlnet = cn
    return dcn


def cond_row(name: str, runs: list[dict]) -> list:
    med = statistics.median
    steps = [statistics.mean(r["steps"]) if r["steps"] else 0.0 for r in runs]
    return [name, len(runs[-1]["steps"]), fmt(med([r["text"] for r in runs])),
            fmt(med([r["encode"] for r in runs])), fmt(med(steps)),
            fmt(med([sum(r["steps"]) for r in runs])), fmt(med([r["decode"] for r in runs])),
            fmt(med([r["total"] for r in runs])), runs[-1]["gpu"]]


def bench_conditioning(pipe, dpipe, tasks, args, w, h, t_cfg, dims, work) -> None:
    """img2img (strength 0.6: 8 steps -> 5 run) and ControlNet (2.1, depth, scale 0.75) at the
    main size, ours vs diffusers' ZImageImg2ImgPipeline / ZImageControlNetPipeline on the same
    weights, alternating, warm medians. The ControlNet is dropped again afterwards."""
    from tests.engine.conditioning_refs import sample_image

    device = pipe.device
    image, ctrl = sample_image(w, h, seed=1), sample_image(w, h, seed=2)  # deterministic inputs
    cases = []
    if "img2img" in tasks:
        ref = None
        if dpipe is not None:
            from diffusers import ZImageImg2ImgPipeline

            ref = ZImageImg2ImgPipeline(**dpipe.components)
            ref.set_progress_bar_config(disable=True)
        cases.append(("img2img, strength 0.6", {"init_image": image, "strength": 0.6}, ref,
                      {"image": image, "strength": 0.6}))
    if "control" in tasks:
        t0 = time.perf_counter()
        dcn = attach_controlnet(pipe, t_cfg, dims, work, dpipe is not None)
        sync(device)
        n = sum(t.numel() for t in pipe.controlnet.state_dict().values())
        say(f"random ControlNet 2.1 ({len(pipe.controlnet.layers_places)} control layers + "
            f"{len(pipe.controlnet.refiner_places)} refiner control blocks, "
            f"{f'{n / 1e9:.2f} B' if n >= 1e9 else f'{n / 1e6:.2f} M'} params) built on "
            f"{device} in {time.perf_counter() - t0:.1f} s")
        ref = None
        if dcn is not None:
            from diffusers import ZImageControlNetPipeline

            ref = ZImageControlNetPipeline(**dpipe.components, controlnet=dcn)
            ref.set_progress_bar_config(disable=True)
        cases.append(("ControlNet 2.1, depth, scale 0.75",
                      {"control_image": ctrl, "control_type": "depth", "control_scale": 0.75},
                      ref, {"control_image": ctrl, "controlnet_conditioning_scale": 0.75}))
    rows, lines = [], []
    for name, ours_kw, ref, ref_kw in cases:
        first = run_ours(pipe, PROMPT, w, h, args.steps, **ours_kw)  # encoder / compile warm-up
        rows.append(cond_row(f"{name}: ours, first call", [first]))
        if ref is not None:
            run_diffusers(ref, PROMPT, w, h, args.steps, device, **ref_kw)  # warm-up
        ours, theirs = [], []
        for _ in range(args.runs):
            ours.append(run_ours(pipe, PROMPT, w, h, args.steps, **ours_kw))
            if ref is not None:
                theirs.append(run_diffusers(ref, PROMPT, w, h, args.steps, device, **ref_kw))
        rows.append(cond_row(f"{name}: ours, warm", ours))
        if theirs:
            rows.append(cond_row(f"{name}: diffusers {type(ref).__name__}, warm", theirs))
            ratio = statistics.median(r["total"] for r in theirs) / statistics.median(
                r["total"] for r in ours)
            diff = abs(ours[-1]["image"].astype(int) - theirs[-1]["image"].astype(int))
            why = (" (expected: ours adds the refiner hints to the main noise refiner as the "
                   "trainer did, diffusers does not)" if "ControlNet" in name else "")
            lines.append(f"{name}: speed-up over diffusers (warm total) {ratio:.2f}x; same "
                         f"seed, mean |Δ| {diff.mean():.2f} / max {diff.max()} (0-255){why}")
    say(f"### image conditioning at {w}x{h}, {args.steps} steps requested, median of "
        f"{args.runs} (ms; encode = VAE encode of the input or control image)")
    table(["pipeline", "steps run", "text", "image encode", "per step", "denoise",
           "VAE decode", "total", "GPU peak GiB"], rows)
    for line in lines:
        say(f"- {line}")
    if lines:
        say()
    pipe.controlnet = None  # the later rows and the memory plans are for the plain model


def write_random_lora(path: Path, pipe, rank: int, seed: int) -> Path:
    """A kohya-layout LoRA of `rank` on every attention and FFN Linear of the live model."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, slot in pipe.loras.slots.items():
        if not name.endswith(("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        out_f = slot.rows.stop - slot.rows.start
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, slot.module.in_features, generator=g,
                                                    dtype=torch.bfloat16) * 0.01
        sd[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=g,
                                                  dtype=torch.bfloat16) * 0.01
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))
    return path


def bench_lora(pipe, args, w: int, h: int, work: Path) -> None:
    """Switching LoRA sets (no base reload) and the per-step cost of the low-rank path."""
    import psutil

    from engine.lora import LoraLibrary

    folder = work / "loras"
    folder.mkdir(exist_ok=True)
    rank = 32
    for name, seed in (("style_a", 1), ("style_b", 2)):
        write_random_lora(folder / f"{name}.safetensors", pipe, rank, seed)
    pipe.lora_library = LoraLibrary(folder)
    sets = [(("style_a", 1.0),), (("style_a", 0.8), ("style_b", 0.5))]
    for s in sets:  # first read of each file (disk -> host cache) is not a switch
        pipe.use_loras(s)
    rss0 = psutil.Process().memory_info().rss
    switch = []
    for i in range(20):
        sync(pipe.device)
        t0 = time.perf_counter()
        pipe.use_loras(sets[i % 2])
        sync(pipe.device)
        switch.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    pipe.use_loras(())
    clear_ms = (time.perf_counter() - t0) * 1000
    rss1 = psutil.Process().memory_info().rss
    plain = [run_ours(pipe, PROMPT, w, h, args.steps) for _ in range(args.runs)]
    one = [run_ours(pipe, PROMPT, w, h, args.steps, loras=sets[0]) for _ in range(args.runs)]
    two = [run_ours(pipe, PROMPT, w, h, args.steps, loras=sets[1]) for _ in range(args.runs)]
    pipe.use_loras(())

    def per_step(runs):
        return statistics.median(ms for r in runs for ms in r["steps"][1:] or r["steps"])

    say(f"### LoRA (rank {rank} on every attention and FFN Linear), {w}x{h}, {args.steps} steps")
    table(["what", "ms"], [
        ["switch set (1 LoRA <-> 2 LoRAs), median of 20", fmt(statistics.median(switch))],
        ["switch set, max of 20", fmt(max(switch))],
        ["clear all LoRAs", fmt(clear_ms)],
        ["per step, no LoRA", fmt(per_step(plain))],
        ["per step, 1 LoRA", fmt(per_step(one))],
        ["per step, 2 LoRAs", fmt(per_step(two))],
    ])
    say(f"host RSS over the 20 switches: {(rss1 - rss0) / 2**20:+.0f} MiB")
    say()


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------------


def check_full_on_meta() -> None:
    """Real dimensions on the meta device: our modules, diffusers' key names and the plans."""
    t_cfg, te_cfg, v_cfg = configs("full", Path())
    transformer, text_model, vae = build_random(t_cfg, te_cfg, v_cfg, "meta", torch.bfloat16)
    sizes = memory.ModelSizes.of(transformer, text_model, vae)
    say(f"full dims on meta: DiT {sizes.dit / GiB:.2f} GiB, text encoder "
        f"{sizes.text_encoder / GiB:.2f} GiB, VAE {sizes.vae / GiB:.2f} GiB (bf16)")
    if have("diffusers"):
        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as d:
            tok_dir = tiny_mod.build_tokenizer(Path(d) / "tok")
            diffusers_from_modules(transformer, text_model, vae,
                                   AutoTokenizer.from_pretrained(str(tok_dir)), t_cfg, v_cfg)
        say("diffusers' ZImagePipeline accepts our state dicts (strict, real dims)")
    cn = random_controlnet(t_cfg, "meta", torch.bfloat16)
    n = sum(t.numel() for t in cn.state_dict().values())
    say(f"ControlNet 2.1 at real dims on meta: {len(cn.layers_places)} control layers on "
        f"{cn.layers_places[:3]}...{cn.layers_places[-1]}, {len(cn.refiner_places)} refiner "
        f"control blocks, {n / 1e9:.2f} B params, {2 * n / GiB:.2f} GiB bf16")
    if have("diffusers"):
        diffusers_controlnet(cn, t_cfg)
        say("diffusers' ZImageControlNetModel accepts our ControlNet state dict (strict, real "
            "dims, released 2.1 key layout)")
    rows = [[p.mode, "fp8" if p.dit_fp8 else "bf16", p.dit_streamed, p.text_encoder,
             f"{p.peak_gib():.1f}"]
            for p in (memory.make_plan(m, fp8=True, sizes=sizes)
                      for m in ("max", "16gb", "12gb", "8gb"))]
    table(["mode", "DiT", "layers streamed", "text encoder", "est. peak GiB 1024²"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--check", action="store_true",
                    help="full: build the real dims on meta, then smoke-run the whole script "
                         "with tiny dims on this device (CPU is fine)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", type=int, default=3, help="timed warm runs per pipeline")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sizes", default=None, help="WxH,... for images/s (default per preset)")
    ap.add_argument("--modes", default="max,16gb,12gb,8gb", help="memory modes")
    ap.add_argument("--tasks", default="txt2img,img2img,control,lora",
                    help="what to time besides the txt2img stage table at the main size (always "
                         "run): txt2img = images/s per size + memory modes; img2img; control "
                         "(builds a random 2.1 ControlNet: ~6.7 GB bf16 at full size); lora "
                         "(switch time and per-step cost of two rank-32 LoRAs)")
    ap.add_argument("--cold", action=argparse.BooleanOptionalAction, default=None,
                    help="write local safetensors and time both cold starts (full default: on)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--static-shapes", action="store_true",
                    help="torch.compile(dynamic=False): a static graph per size and prompt bucket")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--out", default=None, help="folder for bench_engine.md")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives steadier numbers on a shared CPU)")
    args = ap.parse_args(argv)
    tasks = set(args.tasks.split(","))
    unknown = tasks - {"txt2img", "img2img", "control", "lora"}
    if unknown:
        ap.error(f"unknown --tasks {sorted(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        OUT_FILE.append(Path(args.out) / "bench_engine.md")

    device = devices.pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    preset = args.preset
    if args.check:
        check_full_on_meta()
        preset = "smoke"
    dims = "full" if preset == "full" else "tiny"
    cold = args.cold if args.cold is not None else preset != "smoke"
    default_sizes = {"full": "512x512,1024x1024,1536x1024,2048x2048",
                     "tiny": "128x128,256x256,256x128", "smoke": "64x64,128x64"}[preset]
    sizes = [tuple(int(v) for v in s.split("x")) for s in (args.sizes or default_sizes).split(",")]
    main_w, main_h = (1024, 1024) if preset == "full" else (128, 128) if preset == "tiny" else (64,
                                                                                                64)
    use_diffusers = not args.no_diffusers and have("diffusers")
    compile_on = args.compile if args.compile is not None else device.type == "cuda"
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               f"{torch.get_num_threads()} torch threads")
    say(f"## Engine benchmark, preset {preset}: {machine}, torch {torch.__version__}, "
        f"{str(dtype).removeprefix('torch.')}, {args.steps} steps, compile "
        f"{'on' if compile_on else 'off'}" + ("" if use_diffusers else " (diffusers not run)"))
    say()

    from transformers import AutoTokenizer

    from engine.pipeline import ZImagePipeline
    from engine.text_encoder import TextEncoder

    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    tok_dir = tiny_mod.build_tokenizer(work / "tokenizer")
    t_cfg, te_cfg, v_cfg = configs(dims, tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    notes = []

    t0 = time.perf_counter()
    transformer, text_model, vae = build_random(t_cfg, te_cfg, v_cfg, device, dtype)
    sync(device)
    say(f"random weights built on {device} in {time.perf_counter() - t0:.1f} s")
    real_sizes = memory.ModelSizes.of(transformer, text_model, vae)

    dpipe = None
    cold_rows = []
    if cold:
        from engine.loading import load_pipeline

        folder = work / "model"
        t0 = time.perf_counter()
        save_layout(folder, transformer, text_model, vae, t_cfg, v_cfg, tok_dir)
        say(f"wrote local safetensors in {time.perf_counter() - t0:.1f} s")
        del transformer, text_model, vae
        gpu_reset(device)
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            pipe = load_pipeline(str(folder), device=str(device),
                                 dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                                 memory="max", compile=False)
            sync(device)
            load_s = time.perf_counter() - t0
        cold_rows.append(["ours (load_pipeline, strict safetensors)", f"{load_s:.1f}",
                          f"{rss.peak / GiB:.2f}", gpu_peak(device)])
        if use_diffusers:
            from diffusers import ZImagePipeline as DZ

            gpu_reset(device)
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                dpipe = DZ.from_pretrained(str(folder), dtype=dtype,
                                           text_encoder=pipe.text_encoder.model)
                dpipe.to(device)
                dpipe.set_progress_bar_config(disable=True)
                sync(device)
                dload_s = time.perf_counter() - t0
            cold_rows.append(["diffusers from_pretrained (text encoder shared, not loaded)",
                              f"{dload_s:.1f}", f"{rss.peak / GiB:.2f}", gpu_peak(device)])
        table(["cold start from local safetensors", "seconds", "host RSS peak GiB",
               "GPU alloc peak GiB"], cold_rows)
        notes.append("host RSS peak is the whole process's, sampled every 10 ms (it includes "
                     "what was already resident)")
    else:
        if use_diffusers:
            dpipe = diffusers_from_modules(transformer, text_model, vae, tokenizer, t_cfg, v_cfg)
        pipe = ZImagePipeline(transformer, vae, TextEncoder(tokenizer, text_model), shift=3.0,
                              device=device, dtype=dtype, model_id=f"random-{dims}")
        memory.apply_plan(pipe, memory.Plan("max"), device)
        del transformer, text_model, vae

    if compile_on:
        from engine import compile as compiling

        compiling.compile_pipeline(pipe, cuda_graphs=args.cuda_graphs,
                                   dynamic=False if args.static_shapes else None)
        t0 = time.perf_counter()
        compiling.warm_up(pipe, main_w, main_h)
        say(f"compile + warm-up at {main_w}x{main_h}: {time.perf_counter() - t0:.1f} s")

    # --- Stages at the main size: first call (new prompt), then alternating warm runs ---------
    rows = []
    first = run_ours(pipe, PROMPT_2, main_w, main_h, args.steps)
    rows.append(stage_row("ours, first call (new prompt: text encoder runs)", [first]))
    ours, theirs = [], []
    if dpipe is not None:
        theirs.append(run_diffusers(dpipe, PROMPT, main_w, main_h, args.steps, device))  # warm-up
        theirs.clear()
    run_ours(pipe, PROMPT, main_w, main_h, args.steps)  # caches PROMPT
    runs_before = pipe.text_encoder.runs
    for _ in range(args.runs):
        ours.append(run_ours(pipe, PROMPT, main_w, main_h, args.steps))
        if dpipe is not None:
            theirs.append(run_diffusers(dpipe, PROMPT, main_w, main_h, args.steps, device))
    assert pipe.text_encoder.runs == runs_before, "a repeated prompt ran the text encoder"
    rows.append(stage_row("ours, warm (repeated prompt: cached)", ours))
    if theirs:
        rows.append(stage_row("diffusers ZImagePipeline, warm", theirs))
    say(f"### {main_w}x{main_h}, {args.steps} steps, median of {args.runs} (ms)")
    table(["pipeline", "text", "per step", "denoise", "VAE decode", "total", "GPU peak GiB"],
          rows)
    if theirs:
        ratio = statistics.median(r["total"] for r in theirs) / statistics.median(
            r["total"] for r in ours)
        say(f"speed-up over diffusers (warm total): {ratio:.2f}x")
        say()

    # --- image conditioning: img2img and ControlNet, ours vs diffusers -------------------------
    if tasks & {"img2img", "control"}:
        bench_conditioning(pipe, dpipe, tasks, args, main_w, main_h, t_cfg, dims, work)
        gpu_reset(device)  # frees the ControlNets
    if "lora" in tasks:
        bench_lora(pipe, args, main_w, main_h, work)
    if "txt2img" not in tasks:
        for n in notes:
            say(f"- {n}")
        return 0

    # --- images/s per size ----------------------------------------------------------------------
    rows = []
    for w, h in sizes:
        run_ours(pipe, PROMPT, w, h, args.steps)  # compile / warm for this size
        o = min(run_ours(pipe, PROMPT, w, h, args.steps)["total"] for _ in range(2))
        row = [f"{w}x{h}", f"{1000 / o:.2f}", fmt(o)]
        if dpipe is not None:
            run_diffusers(dpipe, PROMPT, w, h, args.steps, device)
            d = run_diffusers(dpipe, PROMPT, w, h, args.steps, device)["total"]
            row += [f"{1000 / d:.2f}", fmt(d), f"{d / o:.2f}x"]
        rows.append(row)
    say(f"### images/s, batch 1, {args.steps} steps, warm (best of 2)")
    table(["size", "ours img/s", "ours ms", "diffusers img/s", "diffusers ms", "speed-up"]
          if dpipe is not None else ["size", "ours img/s", "ours ms"], rows)

    # --- memory modes -------------------------------------------------------------------------
    del dpipe
    gc.collect()
    fp8_ok = memory.fp8_available(device)
    if not fp8_ok:
        notes.append("fp8: " + memory.fp8_unavailable_reason(device) + " -> 12gb/8gb ran "
                     "without fp8 (more layers streamed where the sizes need it)")
    probe = None
    if fp8_ok:  # one transformer call, kept for the fp8 vs bf16 comparison
        g = torch.Generator("cpu").manual_seed(0)
        x = torch.randn(1, 16, main_h // 8, main_w // 8, generator=g).to(device)
        t = torch.tensor([0.5], device=device)
        cap = pipe.text_encoder.encode(PROMPT).to(device, dtype)[None]
        with torch.no_grad():
            probe = (x, t, cap, pipe.transformer(x.to(dtype), t, cap).float())
    bf16_image = ours[-1]["image"]
    rows = []
    for mode in args.modes.split(","):
        plan = memory.make_plan(mode, fp8=fp8_ok, sizes=real_sizes)
        memory.apply_plan(pipe, plan, device)
        pipe.text_encoder.clear_cache()
        first = run_ours(pipe, PROMPT, main_w, main_h, args.steps)  # text encoder streams in
        warm = run_ours(pipe, PROMPT, main_w, main_h, args.steps)
        diff = abs(warm["image"].astype(int) - bf16_image.astype(int)).mean()
        rows.append([mode, "fp8" if plan.dit_fp8 else str(dtype).removeprefix("torch."),
                     plan.dit_streamed,
                     plan.text_encoder, f"{plan.peak_gib(main_w, main_h):.1f}", first["gpu"],
                     fmt(first["total"]), fmt(warm["total"]), f"{diff:.2f}"])
    say(f"### memory modes at {main_w}x{main_h} (GPU alloc peak includes a text-encoder run)")
    table(["mode", "DiT", "layers streamed", "text encoder", "est. peak GiB", "measured peak GiB",
           "first call ms", "warm ms", "mean |Δ| vs max (0-255)"], rows)
    if probe is not None and pipe.memory.dit_fp8:
        x, t, cap, ref = probe
        memory.apply_plan(pipe, memory.Plan("max"), device)
        with torch.no_grad():
            out = pipe.transformer(x.to(dtype), t, cap).float()
        rel = ((out - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
        say(f"fp8 vs bf16, one transformer call at {main_w}x{main_h}: relative L2 error "
            f"{rel:.4f}, cosine {cos:.5f} (random weights)")
        say()
    for n in notes:
        say(f"- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
