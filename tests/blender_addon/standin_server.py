"""A real engine server (engine.server.EngineServer over ZeroMQ on loopback) running the
stand-in pipeline, with a chosen capability list, for the add-on's plumbing tests.

    python tests/blender_addon/standin_server.py --bind tcp://127.0.0.1:PORT \
        [--step-seconds 0.1] [--caps txt2img,img2img,control,control.depth] [--min-side 64]
        [--max-prompt-chars N] [--curve-dir DIR] [--echo-hash 1]

With `tile` in --caps, a request with `tile` gets a tiling test image (a stand-in for the
real pipeline's circular VAE padding): periodic along the tiled axes, so the opposite edges
continue each other.

With ZIMAGE_TEST_ENGINE=cluster in the environment the same pipeline runs behind the farm
gateway (`engine cluster`: one Ray Serve replica; joins RAY_ADDRESS if set, else starts a
local Ray), so the add-on's engine tests run unchanged against it.

Prints `ready <endpoint>` when it accepts jobs; stops on SIGTERM or when stdin closes.
(`python -m engine serve --standin` serves the same pipeline with txt2img only.)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from engine.server import EngineServer  # noqa: E402
from engine.standin import StandInPipeline  # noqa: E402
from protocol.messages import Limits  # noqa: E402


def tiling_image(seed: int, width: int, height: int, tile: str) -> np.ndarray:
    """A smooth test image, periodic in x and/or y with the image's own size."""
    phase = (seed % 97) / 97 * 2 * np.pi
    x, y = np.arange(width) / width, np.arange(height) / height
    fx = np.sin(2 * np.pi * x + phase) if "x" in tile else 2 * x - 1
    fy = np.cos(2 * np.pi * y + phase) if "y" in tile else 2 * y - 1
    img = np.empty((height, width, 3), np.float64)
    for c, (a, b) in enumerate(((60, 30), (30, 60), (45, 45))):
        img[..., c] = 128 + a * fx[None, :] + b * fy[:, None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def echo_colour(rgb: bytes) -> tuple[int, int, int]:
    """The colour the --echo-hash stand-in paints for an input image's RGB8 pixels."""
    import hashlib
    return tuple(hashlib.sha256(bytes(rgb)).digest()[:3])


class TilingStandIn(StandInPipeline):
    echo_hash = False

    def generate(self, req, on_progress=None, should_cancel=None):
        result = super().generate(req, on_progress, should_cancel)
        source = req.init_image if req.init_image is not None else req.control_image
        if self.echo_hash and source is not None:
            # one colour from a hash of the input: the result shows which input it came from
            colour = echo_colour(np.ascontiguousarray(source, np.uint8).tobytes())
            result.images = [np.full((req.height, req.width, 3), colour, np.uint8)
                             for _ in result.seeds]
        if getattr(req, "tile", None):
            result.images = [tiling_image(s, req.width, req.height, req.tile)
                             for s in result.seeds]
        return result


class PreLiveServer(EngineServer):
    """An engine from before live keys (--pre-live 1): no `live` capability, the field
    ignored, as any v1 engine ignores fields it does not know."""

    def _welcome(self, s, mid, resume_jobs):
        h = super()._welcome(s, mid, resume_jobs)
        h["caps"] = [c for c in h["caps"] if c != "live"]
        return h

    def _on_submit(self, s, msg, now):
        msg["live"] = None
        super()._on_submit(s, msg, now)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--step-seconds", type=float, default=0.0)
    ap.add_argument("--caps", default="txt2img,img2img,control,control.depth")
    ap.add_argument("--min-side", type=int, default=64)
    ap.add_argument("--max-prompt-chars", type=int, default=Limits.max_prompt_chars)
    ap.add_argument("--curve-dir", default=None)
    ap.add_argument("--pre-live", default="0", help="1: an engine without live keys")
    ap.add_argument("--echo-hash", default="0",
                    help="1: an image input comes back as one colour from its hash")
    args = ap.parse_args()
    caps = tuple(c for c in args.caps.split(",") if c)
    pipe = TilingStandIn(args.step_seconds, capabilities=caps)
    pipe.echo_hash = args.echo_hash == "1"
    curve = {}
    if args.curve_dir:
        curve = {"curve_secret_file": os.path.join(args.curve_dir, "server.key_secret"),
                 "curve_authorized_dir": os.path.join(args.curve_dir, "authorized_clients")}
    limits = Limits(min_side=args.min_side, max_prompt_chars=args.max_prompt_chars)
    if os.environ.get("ZIMAGE_TEST_ENGINE") == "cluster":
        from engine.server.cluster import ClusterServer, PipelineFactory
        server = ClusterServer(PipelineFactory("object", obj=pipe), bind=args.bind,
                               limits=limits, replica_cpus=0.25,
                               ray_address=os.environ.get("RAY_ADDRESS"), **curve)
        server.start()
        if server.wait_ready(180) != "ready":
            print(f"failed {server.model_error}", flush=True)
            server.stop()
            return 1
    else:
        cls = PreLiveServer if args.pre_live == "1" else EngineServer
        server = cls(pipe, bind=args.bind, limits=limits, **curve)
        server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"ready {server.endpoint or args.bind}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
