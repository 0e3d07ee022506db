"""Command line: `python -m engine generate|serve|keys|tiny-model ...`.

Every failure a user can cause ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from engine.memory_args import add_memory_args, memory_kwargs

DEFAULT_MODEL = "Tongyi-MAI/Z-Image-Turbo"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="official-layout folder, Hugging Face repo id, or ComfyUI diffusion-model "
                        f"file (default {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float32 (float16 is refused)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder, for ComfyUI files (default: from the HF cache)")


def _progress_bar(stage: str, step: int, steps: int) -> None:
    if stage == "denoise":
        filled = int(30 * step / steps)
        sys.stderr.write(f"\rdenoise [{'#' * filled}{'.' * (30 - filled)}] {step}/{steps}")
        if step == steps:
            sys.stderr.write("\n")
    else:
        sys.stderr.write(f"{stage.replace('_', ' ')}...\n")
    sys.stderr.flush()


def png_parameters(prompt: str, seed: int, steps: int, width: int, height: int,
                   model: str, loras=()) -> str:
    """The PNG text chunk ("parameters") every producer of ours writes, as JSON."""
    params = {"prompt": prompt, "seed": seed, "steps": steps, "width": width, "height": height,
              "model": model}
    if loras:
        params["loras"] = [{"name": name, "weight": weight} for name, weight in loras]
    return json.dumps(params, ensure_ascii=False)


def parse_lora_arg(arg: str) -> tuple[Path, float]:
    """'style.safetensors:0.8' -> (path, 0.8); a drive letter's colon is not a weight."""
    from engine.errors import EngineError
    from engine.lora import check_weight

    path, sep, tail = arg.rpartition(":")
    weight = 1.0
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            path = arg
        else:
            check_weight(weight)
    else:
        path = arg
    p = Path(path)
    if not p.is_file():
        raise EngineError("invalid_params", f"--lora {path}: no such file", field="loras")
    return p, weight


def _check_writable(path: Path) -> None:
    from engine.errors import EngineError

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise EngineError("invalid_params", f"--output {path} is a folder; give a file name "
                          "such as out.png", field="output")
    if not parent.is_dir():
        raise EngineError("invalid_params", f"cannot write {path}: the folder {parent} does not "
                          "exist", field="output")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EngineError("invalid_params", f"cannot write {path}: permission denied",
                          field="output")


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from engine.loading import load_pipeline
    from engine.lora import LoraLibrary
    from engine.pipeline import Limits, check_request
    from protocol.request import GenerateRequest

    from engine.conditioning import default_size

    out = Path(args.output)
    _check_writable(out)
    lora_args = [parse_lora_arg(a) for a in args.lora]
    image = _read_image(args.image, "image") if args.image else None
    width, height = args.width, args.height
    if width is None or height is None:  # an input image's own size, else 1024
        dw, dh = default_size(image, Limits()) if image is not None else (1024, 1024)
        width, height = width or dw, height or dh
    req = GenerateRequest(
        prompt=args.prompt, width=width, height=height, steps=args.steps, seed=args.seed,
        num_images=args.num_images, init_image=image, strength=args.strength,
        mask=_read_image(args.mask, "mask", mode="L") if args.mask else None,
        control_image=(_read_image(args.control_image, "control_image")
                       if args.control_image else None),
        control_type=args.control_type, control_scale=args.control_scale, tile=args.tile,
        loras=tuple((path.stem, weight) for path, weight in lora_args))
    check_request(req, Limits())  # fail fast, before loading gigabytes
    library = LoraLibrary(files=[path for path, _ in lora_args])
    t0 = time.perf_counter()
    from engine.download_progress import listening, print_line
    with listening(print_line):     # the model download, when the hub has to be asked
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype,
                             controlnet=args.controlnet, loras=library, **memory_kwargs(args))
    print(f"loaded {pipe.info['model']} on {pipe.info['device']} ({pipe.info['dtype']}) in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if pipe.compile_seconds is not None:
        print(f"compiled and warmed up in {pipe.compile_seconds:.1f}s", file=sys.stderr)
    result = pipe.generate(req, on_progress=lambda p: _progress_bar(p.stage, p.step, p.steps))
    for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        info = PngInfo()
        info.add_text("parameters", png_parameters(req.prompt, seed, req.steps, req.width,
                                                   req.height, pipe.info["model"], req.loras))
        Image.fromarray(image).save(path, pnginfo=info)
        print(f"wrote {path} (seed {seed})", file=sys.stderr)
    t = result.timings
    print("timings: " + ", ".join(f"{k} {v:.0f} ms" for k, v in t.items()), file=sys.stderr)
    return 0


def _read_image(path: str, field: str, mode: str = "RGB"):
    """An image file -> H x W x 3 (mode "RGB") or H x W (mode "L") uint8 array."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from engine.errors import EngineError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise EngineError("invalid_params", f"--{field.replace('_', '-')} {path}: no such file",
                          field=field) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise EngineError("invalid_params", f"--{field.replace('_', '-')} {path} is not a "
                          f"readable image ({e})", field=field) from None


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from engine.tiny import build_tiny_model

    path = build_tiny_model(Path(args.dir), seed=args.seed)
    print(f"built a tiny RANDOM Z-Image model in {path} (it draws noise; for smoke runs and "
          "host-app development only)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine",
                                     description="Z-Image-Turbo engine")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate images from a prompt and write PNG files")
    _add_model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--width", type=int, default=None,
                   help="default: the --image's size (fitted to the limits), else 1024")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--steps", type=int, default=8)
    g.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    g.add_argument("--num-images", type=int, default=1,
                   help="images with seeds seed, seed+1, ... (files NAME-1.png, ...)")
    g.add_argument("--output", default="out.png")
    c = g.add_argument_group("image conditioning (docs/image-conditioning.md)")
    c.add_argument("--image", help="input image: image-to-image, or the image to inpaint")
    c.add_argument("--strength", type=float, default=None,
                   help="0..1, how much of --image is repainted (default 0.6; 1.0 with --mask)")
    c.add_argument("--mask", help="inpainting mask, same size as --image: white = repaint")
    c.add_argument("--control-image", help="control map (depth, canny edges, pose skeleton)")
    c.add_argument("--control-type", choices=["depth", "canny", "pose", "inpaint"])
    c.add_argument("--control-scale", type=float, default=None,
                   help="ControlNet conditioning scale (default 0.75; 0.65-0.8 typical)")
    c.add_argument("--controlnet", metavar="PATH",
                   help="Z-Image-Turbo-Fun-Controlnet-Union .safetensors (2.1 or lite)")
    c.add_argument("--tile", choices=["x", "y", "xy"],
                   help="seamless texture: the output tiles along x, y or both")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="a LoRA .safetensors file and its weight (default 1.0); repeatable")
    add_memory_args(g)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("tiny-model", help="build a tiny random model (draws noise) for smoke tests")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_tiny_model)

    try:
        from engine.serve_cli import add_cluster_parser, add_keys_parser, add_serve_parser
    except ImportError:  # the server module is optional for `generate`
        pass
    else:
        add_serve_parser(sub)
        add_cluster_parser(sub)
        add_keys_parser(sub)
    return parser


def one_line(message: str) -> str:
    """Multi-line messages (lists of missing files) folded into the single line a CLI prints."""
    out = ""
    for line in (ln.strip() for ln in message.splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    from protocol.errors import ProtocolError

    try:
        return args.func(args)
    except ProtocolError as e:
        print(f"error: {one_line(e.message)} [{e.code}]", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: one sentence, details in the log
        logging.getLogger("engine").debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {e} [internal_error]", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
