"""The farm gateway (engine/server/cluster.py) with real Ray Serve: one local Ray cluster for
the whole test session (2 CPUs, the `ray_cluster` fixture), CPU replicas of the stand-in pipeline, real loopback
sockets and the real protocol client. Skipped when the `cluster` extra (ray[serve]) is
not installed."""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import signal
import threading
import time

import pytest

from engine.server.cluster import ClusterServer, PipelineFactory  # noqa: E402  (before ray)

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from engine.server import EngineServer  # noqa: E402
from engine.standin import StandInPipeline, pattern_image  # noqa: E402
from protocol.client import EngineClient  # noqa: E402
from protocol.messages import Limits  # noqa: E402
from tests.engine import test_server as ts  # noqa: E402
from tests.engine.test_server import terminal  # noqa: E402

LIM = dict(min_side=64, max_side=512, max_pixels=512 * 512, max_steps=400)
FAST = dict(heartbeat_ivl_ms=300, heartbeat_timeout_ms=900, session_timeout_s=3.0,
            detach_grace_s=1.0)
CLIENT_FAST = {**ts.CLIENT_FAST, "give_up_s": 30.0}
STEP_S = 0.05


def small(**kw) -> dict:
    return {"prompt": "test", "width": 64, "height": 64, "steps": 3, "seed": 1, **kw}


@contextlib.contextmanager
def farm(factory: PipelineFactory, **kw):
    srv = ClusterServer(factory, bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                        replica_cpus=0.25, **{**FAST, **kw}).start()
    try:
        assert srv.wait_ready(120) == "ready", srv.model_error
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def two_replicas(ray_cluster):
    with farm(PipelineFactory("standin", kwargs={"step_seconds": STEP_S}), min_replicas=2,
              max_replicas=2, app_name="two") as srv:
        yield srv


# the engine tests' client helpers; the farm's Ray calls get more time
connect = functools.partial(ts.connect, give_up_s=30.0)
collect = functools.partial(ts.collect, timeout=30.0)


def run_many(endpoint: str, n_clients: int, n_jobs: int, seed0: int, timeout: float = 90):
    """n_clients clients submit n_jobs each at once; returns per client {job: seed} and
    every terminal event it saw."""
    clients = [EngineClient(endpoint, client_name=f"c{i}", **CLIENT_FAST).start()
               for i in range(n_clients)]
    try:
        submitted = [{} for _ in clients]
        for i, c in enumerate(clients):
            for k in range(n_jobs):
                seed = seed0 + 1000 * i + k
                submitted[i][c.submit(small(seed=seed), preview_every=0)] = seed
        ends = [collections.defaultdict(list) for _ in clients]
        end = time.monotonic() + timeout
        while time.monotonic() < end and sum(len(e) for e in ends) < n_clients * n_jobs:
            for i, c in enumerate(clients):
                for ev in c.poll(timeout=0.01):
                    if ev.kind in ("result", "cancelled", "error"):
                        ends[i][ev.job_id].append(ev)
        time.sleep(0.3)   # a duplicate would arrive now
        for i, c in enumerate(clients):
            for ev in c.poll():
                if ev.kind in ("result", "cancelled", "error"):
                    ends[i][ev.job_id].append(ev)
        return submitted, ends
    finally:
        for c in clients:
            c.close()


def test_four_clients_forty_jobs_each_result_to_its_sender(two_replicas):
    submitted, ends = run_many(two_replicas.endpoint, 4, 10, seed0=7)
    # the same jobs on a single `engine serve`
    with EngineServer(StandInPipeline(0.0), bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                      **FAST) as single:
        ref_sub, ref_ends = run_many(single.endpoint, 1, 1, seed0=7)
    ref = next(iter(ref_ends[0].values()))[0]
    for i in range(4):
        assert set(ends[i]) == set(submitted[i]), (i, len(ends[i]))   # to its sender only
        for jid, evs in ends[i].items():
            assert [e.kind for e in evs] == ["result"], evs   # exactly once
            seed = submitted[i][jid]
            img = evs[0].images[0]
            assert img.seed == seed and img.data == pattern_image(seed, 64, 64).tobytes()
    same = ends[0][next(j for j, s in submitted[0].items() if s == 7)][0].images[0]
    assert same.data == ref.images[0].data and same.seed == ref.images[0].seed
    # both replicas did work
    pids = {p for jid in two_replicas.replica_pids for p in two_replicas.replica_pids[jid]}
    assert len(pids) == 2, pids


def test_welcome_names_the_farm_and_unload_is_not_offered(two_replicas):
    with connect(two_replicas.endpoint) as c:
        ev = collect(c, lambda e: e.kind == "welcome")[-1]
        w = c.welcome
        assert w["engine"]["name"] == "zimage-cluster" and w["engine"]["state"] == "ready"
        assert "txt2img" in w["caps"] and "unload" not in w["caps"], ev
        c.unload()
        ev = collect(c, lambda e: e.kind == "error")[-1]
        assert ev.data["code"] == "capability_unavailable"


def test_progress_and_previews_stream_back(two_replicas):
    with connect(two_replicas.endpoint) as c:
        jid = c.submit(small(steps=6), preview_every=2)
        evs = collect(c, terminal(jid))
        steps = [e.data["step"] for e in evs if e.kind == "progress" and
                 e.data.get("stage") == "denoise"]
        assert steps == [1, 2, 3, 4, 5, 6], steps
        previews = [e for e in evs if e.kind == "preview"]
        assert previews and previews[0].images[0].data[:3] == b"\xff\xd8\xff"
        assert evs[-1].kind == "result"


def test_cancel_of_a_queued_and_of_a_running_job(two_replicas):
    with connect(two_replicas.endpoint) as c:
        # 2 replicas x 1 + 2 waiting in Serve = 4 in flight: the 6th waits in the gateway.
        # `a` is long (20 s): on a loaded box its progress can reach us late, and a short job
        # could end before its cancel while we wait for the other one's (collect skips it)
        ids = [c.submit(small(steps=400 if k == 0 else 40, seed=100 + k), preview_every=0)
               for k in range(6)]
        a, queued = ids[0], ids[-1]
        collect(c, lambda e: e.job_id == a and e.kind == "progress" and e.data["step"] >= 2)
        c.cancel(queued)
        ev = collect(c, terminal(queued))[-1]
        assert ev.kind == "cancelled" and ev.data["at_step"] is None
        t0 = time.monotonic()
        c.cancel(a)
        ev = collect(c, terminal(a))[-1]
        assert ev.kind == "cancelled" and 2 <= ev.data["at_step"] < 400, ev
        assert time.monotonic() - t0 < 2.0    # next step (50 ms) + board poll + Ray RPCs on 2 busy cores
        c.cancel_all()
        rest = set(ids[1:-1])
        ends = {}
        collect(c, lambda e: terminal(e.job_id)(e) and not ends.update({e.job_id: e.kind})
                and rest <= set(ends))
        assert set(ends[j] for j in rest) == {"cancelled"}
        jid = c.submit(small(seed=5), preview_every=0)   # keeps serving
        assert collect(c, terminal(jid))[-1].kind == "result"


def test_a_job_the_farm_does_not_stop_still_ends_once(ray_cluster):
    # the replica is stuck (the stand-in stalls 4 s before its first step, deaf to cancel and
    # deadline): the gateway ends the job itself end_grace_s after the cancel or the deadline,
    # and the replica's late outcomes make no second event
    stall = 4.0
    with farm(PipelineFactory("standin", kwargs={"step_seconds": STEP_S,
                                                 "stall_seconds": stall}),
              app_name="stuck", end_grace_s=1.0) as srv, connect(srv.endpoint) as c:
        a = c.submit(small(seed=7), preview_every=0)
        collect(c, lambda e: e.job_id == a and e.kind == "progress")     # it runs, stalled
        t0 = time.monotonic()
        c.cancel(a)
        ev = collect(c, terminal(a))[-1]
        waited = time.monotonic() - t0
        # the replica would say at_step 1, after the stall; the gateway says it sooner
        assert ev.kind == "cancelled" and ev.data["at_step"] is None, ev
        assert waited < stall - 0.5, waited
        b = c.submit(small(seed=8), preview_every=0, deadline_ms=1000)
        ev = collect(c, terminal(b))[-1]
        assert ev.kind == "error" and ev.data["code"] == "deadline_exceeded", ev
        assert "gateway ended it" in ev.data["message"], ev
        time.sleep(2 * stall)                  # the replica ends both now: ignored
        late = [e for e in c.poll() if terminal(a)(e) or terminal(b)(e)]
        assert late == [], late
        jid = c.submit(small(seed=9), preview_every=0)                    # keeps serving
        assert collect(c, terminal(jid), timeout=60)[-1].kind == "result"


def test_kill_9_of_a_replica_mid_job_runs_it_again_once(two_replicas):
    srv = two_replicas
    with connect(srv.endpoint) as c:
        jid = c.submit(small(steps=30, seed=4242), preview_every=0)
        collect(c, lambda e: e.job_id == jid and e.kind == "progress" and e.data["step"] >= 3)
        victim = srv.replica_pids[jid][0]
        os.kill(victim, signal.SIGKILL)
        evs = collect(c, terminal(jid), timeout=90)
        time.sleep(0.5)
        evs += c.poll()
        ends = [e for e in evs if terminal(jid)(e)]
        assert [e.kind for e in ends] == ["result"], ends          # once, not lost
        assert ends[0].images[0].data == pattern_image(4242, 64, 64).tobytes()  # same image
        pids = srv.replica_pids[jid]
        assert len(pids) == 2 and pids[1] != victim, pids          # ran again elsewhere
        for k in range(3):                                         # keeps serving
            j = c.submit(small(seed=k), preview_every=0)
            assert collect(c, terminal(j), timeout=60)[-1].kind == "result"
    # Serve replaces the dead replica
    end = time.monotonic() + 60
    while time.monotonic() < end and srv.replicas().get("RUNNING") != 2:
        time.sleep(0.5)
    assert srv.replicas().get("RUNNING") == 2, srv.replicas()


def test_autoscaling_from_one_to_two_replicas_under_load_and_back(ray_cluster):
    auto = {"metrics_interval_s": 0.2, "look_back_period_s": 1.0, "upscale_delay_s": 0.5,
            "downscale_delay_s": 3.0}
    with farm(PipelineFactory("standin", kwargs={"step_seconds": STEP_S}), min_replicas=1,
              max_replicas=2, autoscaling=auto, app_name="scaling") as srv:
        assert srv.replicas().get("RUNNING") == 1
        with connect(srv.endpoint) as c:
            ids = [c.submit(small(steps=20, seed=k), preview_every=0) for k in range(10)]
            seen = 1
            ends = {}
            end = time.monotonic() + 120
            while time.monotonic() < end and len(ends) < len(ids):
                for ev in c.poll(timeout=0.1):
                    if terminal(ev.job_id)(ev):
                        ends[ev.job_id] = ev.kind
                seen = max(seen, srv.replicas().get("RUNNING", 0))
            assert set(ends.values()) == {"result"} and len(ends) == 10
            assert seen == 2
            pids = {p for j in ids for p in srv.replica_pids[j]}
            assert len(pids) == 2    # the new replica took jobs once loaded
        end = time.monotonic() + 60
        while time.monotonic() < end and srv.replicas().get("RUNNING") != 1:
            time.sleep(0.5)
        assert srv.replicas().get("RUNNING") == 1, srv.replicas()


def test_tiny_model_on_two_replicas_equals_a_single_engine(ray_cluster, tiny_model_dir):
    import numpy as np

    from engine.loading import load_pipeline
    kw = {"device": "cpu", "dtype": "float32"}
    seeds = [3, 4, 5, 6]
    with farm(PipelineFactory("model", str(tiny_model_dir), kw), min_replicas=2,
              max_replicas=2, app_name="tiny") as srv, connect(srv.endpoint) as c:
        assert "txt2img" in srv.pipeline.info["capabilities"]
        ids = {c.submit(small(seed=s, steps=2, width=64, height=96), preview_every=1): s
               for s in seeds}
        got = {}
        collect(c, lambda e: terminal(e.job_id)(e) and not got.update({e.job_id: e})
                and len(got) == len(ids), timeout=180)
        pids = {p for j in ids for p in srv.replica_pids[j]}
    with EngineServer(load_pipeline(str(tiny_model_dir), **kw), bind="tcp://127.0.0.1:0",
                      limits=Limits(**LIM), **FAST) as single, connect(single.endpoint) as c1:
        for jid, seed in ids.items():
            j1 = c1.submit(small(seed=seed, steps=2, width=64, height=96), preview_every=0)
            ref = collect(c1, terminal(j1), timeout=120)[-1]
            assert got[jid].kind == "result" and ref.kind == "result"
            a, b = got[jid].images[0], ref.images[0]
            assert a.seed == b.seed == seed and a.data == b.data   # the same bytes
            assert np.frombuffer(a.data, np.uint8).std() > 0
    assert len(pids) == 2, pids


def test_cluster_command_joins_a_ray_cluster_and_serves_the_cli_client(ray_cluster, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "cluster", "--standin", "--ray-address", address,
         "--bind", "tcp://127.0.0.1:0", "--no-token", "--min-side", "64",
         "--replica-cpus", "0.25"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready "), line + proc.stderr.read()
        endpoint = line.split()[1]
        out = tmp_path / "x.png"
        r = subprocess.run([sys.executable, "-m", "protocol", "generate", "--engine", endpoint,
                            "--prompt", "x", "--width", "64", "--height", "64", "--steps", "2",
                            "--seed", "11", "--output", str(out)], cwd=root,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        from PIL import Image
        import numpy as np
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")),
                              pattern_image(11, 64, 64))
        # the same validation and error codes as `engine serve`
        r = subprocess.run([sys.executable, "-m", "protocol", "generate", "--engine", endpoint,
                            "--prompt", "x", "--width", "70", "--height", "64", "--output",
                            str(tmp_path / "y.png")], cwd=root, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert "width" in r.stderr.strip().splitlines()[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


def test_curve_and_the_token_guard_the_gateway_as_they_guard_serve(ray_cluster, tmp_path):
    import zmq.auth

    from engine.serve_cli import run_keys
    keydir = tmp_path / "keys"
    assert run_keys(type("A", (), {"dir": str(keydir), "client": ["alice", "mallory"]})) == 0
    os.remove(keydir / "authorized_clients" / "mallory.key")   # not allowed
    skey, _ = zmq.auth.load_certificate(str(keydir / "server.key"))

    def keys(name):
        return zmq.auth.load_certificate(str(keydir / "clients" / f"{name}.key_secret"))

    with farm(PipelineFactory("standin"), app_name="curve",
              curve_secret_file=str(keydir / "server.key_secret"),
              curve_authorized_dir=str(keydir / "authorized_clients")) as srv:
        with EngineClient(srv.endpoint, client_name="alice", curve_server_key=skey,
                          curve_client_keys=keys("alice"), **CLIENT_FAST).start() as c:
            jid = c.submit(small(seed=21), preview_every=0)
            ev = collect(c, terminal(jid))[-1]
            assert ev.kind == "result" and ev.images[0].data == pattern_image(21, 64, 64).tobytes()
        with EngineClient(srv.endpoint, client_name="mallory", curve_server_key=skey,
                          curve_client_keys=keys("mallory"), **CLIENT_FAST).start() as c:
            ev = collect(c, lambda e: e.kind in ("disconnected", "welcome"), timeout=5)[-1]
            assert ev.kind == "disconnected" and ev.data["reason"] == "unauthorized"
    with farm(PipelineFactory("standin"), app_name="token", token="s3cret") as srv:
        with connect(srv.endpoint) as c:       # no token
            ev = collect(c, lambda e: e.kind in ("disconnected", "welcome", "error"))[-1]
            assert ev.kind != "welcome" and c.welcome is None
