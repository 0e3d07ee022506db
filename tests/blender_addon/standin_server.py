"""A real engine server (engine.server.EngineServer over ZeroMQ on loopback) running the
stand-in pipeline, with a chosen capability list, for the add-on's plumbing tests.

    python tests/blender_addon/standin_server.py --bind tcp://127.0.0.1:PORT \
        [--step-seconds 0.1] [--caps txt2img,img2img,control,control.depth] [--min-side 64]

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

from engine.server import EngineServer  # noqa: E402
from engine.standin import StandInPipeline  # noqa: E402
from protocol.messages import Limits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bind", required=True)
    ap.add_argument("--step-seconds", type=float, default=0.0)
    ap.add_argument("--caps", default="txt2img,img2img,control,control.depth")
    ap.add_argument("--min-side", type=int, default=64)
    args = ap.parse_args()
    caps = tuple(c for c in args.caps.split(",") if c)
    pipe = StandInPipeline(args.step_seconds, capabilities=caps)
    server = EngineServer(pipe, bind=args.bind, limits=Limits(min_side=args.min_side))
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
