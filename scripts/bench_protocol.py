"""Protocol overhead: round trip of one 1024x1024 result through the engine.

Uses a stand-in pipeline that returns a precomputed image at once (test pattern plus 5 bits of
noise, so PNG has realistic work to do), so the time left over is the protocol's: submit ->
validate -> queue -> worker -> encode -> ZeroMQ -> client decode -> event. Runs the engine and
the client in this process on loopback (both share the CPU, as they would on one machine).

    .venv/bin/python scripts/bench_protocol.py [--n 20] [--side 1024]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq.auth  # noqa: E402

from engine.server import EngineServer  # noqa: E402
import numpy as np  # noqa: E402

from engine.standin import Result, StandInPipeline, pattern_image  # noqa: E402


class InstantPipeline(StandInPipeline):
    """Stand-in that returns a precomputed image immediately (no model, no per-call work)."""

    def __init__(self, side):
        super().__init__(0.0)
        noise = np.random.default_rng(0).integers(0, 32, (side, side, 3), dtype=np.uint8)
        self.image = pattern_image(1, side, side) // 2 + noise

    def generate(self, req, on_progress=None, should_cancel=None):
        return Result([self.image], [req.seed], {})
from protocol.client import EngineClient  # noqa: E402


def run(label, side, n, result_format="raw", curve=None):
    kw = {}
    ckw = {}
    if curve:
        kw = {"curve_secret_file": curve["secret"], "curve_authorized_dir": curve["authorized"]}
        ckw = {"curve_server_key": curve["server_public"], "curve_client_keys": curve["client"]}
    srv = EngineServer(InstantPipeline(side), bind="tcp://127.0.0.1:0", **kw).start()
    c = EngineClient(srv.endpoint, client_name="bench", **ckw).start()
    try:
        end = time.monotonic() + 10
        while c.state != "connected":
            c.poll(timeout=0.05)
            assert time.monotonic() < end, "no connection"
        totals, gens, encs = [], [], []
        for i in range(n + 2):
            t0 = time.perf_counter()
            jid = c.submit({"prompt": "bench", "width": side, "height": side, "steps": 1,
                            "seed": i}, result_format=result_format, preview_every=0)
            res = None
            while res is None:
                for ev in c.poll(timeout=1.0):
                    if ev.job_id == jid and ev.kind in ("result", "error", "cancelled"):
                        res = ev
            t1 = time.perf_counter()
            assert res.kind == "result", res
            if i >= 2:   # warm-up
                totals.append((t1 - t0) * 1000)
                gens.append(res.data["timings"]["generate_ms"])
                encs.append(res.data["timings"].get("encode_ms", 0.0))
        size = len(res.images[0].data)
        if curve:   # the session really is bound to the client's CURVE key
            assert srv.sessions[c.session].user_id == curve["client"][0].decode()
    finally:
        c.close()
        srv.stop()
    med = statistics.median
    over = [t - g for t, g in zip(totals, gens)]
    row = (label, size / 2**20, med(totals), med(gens), med(encs), med(over), min(over))
    print(f"| {row[0]} | {row[1]:.2f} | {row[2]:.1f} | {row[3]:.1f} | {row[4]:.1f} | "
          f"{row[5]:.1f} | {row[6]:.1f} |", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--side", type=int, default=1024)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, pyzmq {zmq.__version__} "
          f"(libzmq {zmq.zmq_version()}), {args.side}x{args.side} RGB, n={args.n}, medians")
    print("| case | result MiB | round trip ms | stand-in generate ms | encode ms | "
          "protocol overhead ms (median) | overhead min |")
    print("|---|---|---|---|---|---|---|")
    run("raw, loopback", args.side, args.n)
    run("PNG (level 1), loopback", args.side, args.n, "png")
    with tempfile.TemporaryDirectory() as d:
        auth = os.path.join(d, "authorized")
        os.makedirs(auth)
        spub, ssec = zmq.auth.create_certificates(d, "server")
        cpub, csec = zmq.auth.create_certificates(auth, "client")
        s_public, _ = zmq.auth.load_certificate(spub)
        c_public, c_secret = zmq.auth.load_certificate(csec)
        curve = {"secret": ssec, "authorized": auth, "server_public": s_public,
                 "client": (c_public, c_secret)}
        run("raw, CURVE", args.side, args.n, curve=curve)
        run("PNG, CURVE", args.side, args.n, "png", curve=curve)


if __name__ == "__main__":
    main()
