#!/usr/bin/env python3
"""Benchmark of the farm gateway (`engine cluster`, engine/server/cluster.py) on a local Ray
cluster with CPU replicas of the stand-in pipeline. Figures go to docs/benchmarks.md.

1. throughput with 1 vs 2 replicas on a pipeline that takes a fixed 500 ms per job
   (the stand-in: 1 step of 0.5 s; it sleeps, so two replicas can overlap on any CPU)
2. added latency per job through the gateway vs `engine serve`: one client, one job at a
   time, 1024x1024 raw result (3 MiB), 1 step of 0 s: what is left is plumbing.

    .venv/bin/python scripts/bench_cluster.py [--jobs 16] [--latency-jobs 30]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.server.cluster import ClusterServer, PipelineFactory  # noqa: E402  (before ray)
import ray  # noqa: E402
from ray import serve  # noqa: E402

from engine.server import EngineServer  # noqa: E402
from engine.standin import StandInPipeline  # noqa: E402
from protocol.client import EngineClient  # noqa: E402
from protocol.messages import Limits  # noqa: E402

LIM = dict(min_side=64, max_side=1024, max_pixels=1024 * 1024, max_queue_per_session=64)


@contextlib.contextmanager
def farm(step_s: float, replicas: int, name: str):
    srv = ClusterServer(PipelineFactory("standin", kwargs={"step_seconds": step_s}),
                        bind="tcp://127.0.0.1:0", limits=Limits(**LIM), min_replicas=replicas,
                        max_replicas=replicas, replica_cpus=0.25, app_name=name).start()
    try:
        assert srv.wait_ready(120) == "ready", srv.model_error
        yield srv
    finally:
        srv.stop()


def throughput(endpoint: str, jobs: int) -> float:
    """Jobs per second for `jobs` jobs submitted at once (after one warm-up job)."""
    with EngineClient(endpoint, client_name="bench").start() as c:
        run(c, {"prompt": "warm", "width": 64, "height": 64, "steps": 1, "seed": 0})
        t0 = time.perf_counter()
        ids = {c.submit({"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": k},
                        preview_every=0) for k in range(jobs)}
        done = set()
        while done != ids:
            for ev in c.poll(timeout=0.05):
                if ev.kind in ("result", "error", "cancelled") and ev.job_id in ids:
                    assert ev.kind == "result", ev
                    done.add(ev.job_id)
        return jobs / (time.perf_counter() - t0)


def run(c: EngineClient, params: dict, fmt: str = "raw") -> float:
    t0 = time.perf_counter()
    jid = c.submit(params, result_format=fmt, preview_every=0)
    while True:
        for ev in c.poll(timeout=0.05):
            if ev.job_id == jid and ev.kind in ("result", "error", "cancelled"):
                assert ev.kind == "result", ev
                return (time.perf_counter() - t0) * 1000


def latency(endpoint: str, n: int) -> list[float]:
    p = {"prompt": "x", "width": 1024, "height": 1024, "steps": 1}
    with EngineClient(endpoint, client_name="bench").start() as c:
        for k in range(3):
            run(c, {**p, "seed": k})
        return [run(c, {**p, "seed": k}) for k in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--latency-jobs", type=int, default=30)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        rates = {}
        for n in () if args.skip_throughput else (1, 2):
            with farm(0.5, n, f"bench{n}") as srv:
                rates[n] = throughput(srv.endpoint, args.jobs)
            print(f"throughput, {n} replica(s), 500 ms/job, {args.jobs} jobs: "
                  f"{rates[n]:.2f} jobs/s", flush=True)
        if rates:
            print(f"speed-up 2 vs 1 replicas: {rates[2] / rates[1]:.2f}x", flush=True)

        with EngineServer(StandInPipeline(0.0), bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                          token=None) as single:
            direct = latency(single.endpoint, args.latency_jobs)
        with farm(0.0, 1, "benchlat") as srv:
            gw = latency(srv.endpoint, args.latency_jobs)
        md, mg = statistics.median(direct), statistics.median(gw)
        print(f"1024x1024 raw, 1 step of 0 s, {args.latency_jobs} jobs one at a time: "
              f"engine serve median {md:.1f} ms, gateway median {mg:.1f} ms, "
              f"added {mg - md:.1f} ms (p90 added "
              f"{sorted(gw)[int(0.9 * len(gw))] - sorted(direct)[int(0.9 * len(direct))]:.1f} ms)",
              flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
