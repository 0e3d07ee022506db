"""A real engine server (engine.server.EngineServer on loopback) whose pipeline is a stand-in
for the texturing tests: it "generates" exactly what the textured object looks like from the
requested view, because the test rendered those views beforehand.

    python tests/blender_addon/replay_server.py --bind tcp://127.0.0.1:PORT --dir DIR \
        [--caps img2img,inpaint,control,control.depth]

The n-th job (0-based) answers DIR/view_<n>.png (the test's render of the object with its
known texture through view n; flat grey when there is none), and writes what it was sent to
DIR/req_<n>_<input>.png (init_image, mask, control_image) and DIR/req_<n>.json (the params
it saw), so the test can check the requests. It is NOT a model; it stands in for the GPU, as engine/standin.py does.
Prints `ready <endpoint>`; stops when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from engine.errors import EngineError  # noqa: E402
from engine.server import EngineServer  # noqa: E402
from engine.standin import Progress, Result, StandInPipeline  # noqa: E402


class ReplayPipeline(StandInPipeline):
    def __init__(self, folder: str, capabilities):
        super().__init__(0.0, capabilities=capabilities, model="replay")
        self.folder = folder
        self.count = 0

    def generate(self, req, on_progress=None, should_cancel=None) -> Result:
        n = self.count
        self.count += 1
        for key in ("init_image", "mask", "control_image"):
            value = getattr(req, key, None)
            if value is not None:
                Image.fromarray(np.asarray(value, np.uint8)).save(
                    os.path.join(self.folder, f"req_{n}_{key}.png"))
        with open(os.path.join(self.folder, f"req_{n}.json"), "w") as fh:
            json.dump({"prompt": req.prompt, "width": req.width, "height": req.height,
                       "seed": req.seed, "strength": req.strength,
                       "control_type": req.control_type}, fh)
        if on_progress:
            on_progress(Progress("denoise", req.steps, req.steps))
        path = os.path.join(self.folder, f"view_{n}.png")
        if not os.path.exists(path):         # no prepared view: a flat grey image
            return Result([np.full((req.height, req.width, 3), 128, np.uint8)],
                          [int(req.seed or 0)])
        img = Image.open(path).convert("RGB")
        if img.size != (req.width, req.height):
            raise EngineError("invalid_params", f"view {n} is {img.size}, asked "
                              f"{req.width}x{req.height}")
        return Result([np.asarray(img, np.uint8)], [int(req.seed or 0)])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--caps", default="txt2img,img2img,inpaint,control,control.depth")
    args = ap.parse_args()
    pipe = ReplayPipeline(args.dir, tuple(c for c in args.caps.split(",") if c))
    server = EngineServer(pipe, bind=args.bind)
    server.start()
    stop = threading.Event()

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
