"""Engine server over real loopback sockets, with the stand-in pipeline (plumbing only).

Faults use a subprocess engine (`python -m engine.serve_cli serve --standin`) for kill -9 and
SIGSTOP, and a tiny TCP proxy for "the network went away while the job finished".
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import EngineError
from engine.server import EngineServer, InsecureBindError, is_loopback_endpoint
from engine.standin import StandInPipeline, pattern_image
from protocol.client import EngineClient
from protocol.messages import Limits
from protocol.png import encode_png
from protocol.wire import SIGNATURE, decode_header, encode

REPO = Path(__file__).resolve().parents[2]
LIM = dict(min_side=64, max_side=512, max_pixels=512 * 512)
FAST = dict(heartbeat_ivl_ms=300, heartbeat_timeout_ms=900, session_timeout_s=3.0,
            detach_grace_s=1.0)
CLIENT_FAST = dict(heartbeat_ivl_ms=200, heartbeat_timeout_ms=600, heartbeat_ttl_ms=1000,
                   reconnect_ivl_ms=100, reconnect_ivl_max_ms=400, ping_interval_s=0.3,
                   unresponsive_s=1.5, accept_timeout_s=5.0, give_up_s=20.0)


def small(**kw) -> dict:
    return {"prompt": "test", "width": 64, "height": 64, "steps": 3, "seed": 1, **kw}


@contextlib.contextmanager
def serve(pipeline=None, limits: dict | None = None, **kw):
    srv = EngineServer(pipeline if pipeline is not None else StandInPipeline(0.0),
                       bind="tcp://127.0.0.1:0", limits=Limits(**{**LIM, **(limits or {})}),
                       **{**FAST, **kw})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def connect(endpoint: str, **kw):
    c = EngineClient(endpoint, client_name="test", **{**CLIENT_FAST, **kw}).start()
    try:
        yield c
    finally:
        c.close()


def collect(client, until, timeout: float = 10.0) -> list:
    """Poll events until until(event) is true; return all events seen (last one matches)."""
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        for ev in client.poll(timeout=0.05):
            seen.append(ev)
            if until(ev):
                return seen
    brief = [(e.kind, e.job_id and e.job_id[:6], e.data.get("code")) for e in seen]
    raise AssertionError(f"timed out; saw {brief[-15:]}")


def terminal(job_id):
    return lambda ev: ev.job_id == job_id and ev.kind in ("result", "cancelled", "error")


def run_one(client, params, **kw):
    jid = client.submit(params, **kw)
    evs = collect(client, terminal(jid))
    return jid, evs


class Raw:
    """A bare DEALER speaking the wire format by hand (for hostile and low-level tests)."""

    def __init__(self, endpoint: str, session: str | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.session = session or uuid.uuid4().hex

    def send(self, header: dict | None = None, blobs=(), frames=None) -> None:
        if frames is None:
            header = {"session": self.session, **header}
            frames = encode(header, blobs)
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 3.0):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        assert frames[0] == SIGNATURE
        return decode_header(frames[1], max_bytes=1 << 20, max_depth=16), frames[2:]

    def request(self, header: dict, blobs=(), timeout: float = 3.0, want: str | None = None):
        self.send(header, blobs)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.recv(end - time.monotonic())
            if got is None:
                break
            if want is None or got[0]["type"] == want or got[0]["type"] == "error":
                return got
        raise AssertionError(f"no reply to {header.get('type')}")

    def hello(self):
        h, _ = self.request({"type": "hello", "versions": [1]}, want="welcome")
        assert h["type"] == "welcome", h
        return h

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def raw_factory():
    made = []

    def make(endpoint, **kw):
        r = Raw(endpoint, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# ---- basics -------------------------------------------------------------------------------

def test_loopback_detection():
    assert is_loopback_endpoint("tcp://127.0.0.1:5555")
    assert is_loopback_endpoint("tcp://127.0.0.2:1")
    assert is_loopback_endpoint("tcp://[::1]:5555")
    assert is_loopback_endpoint("tcp://localhost:5555")
    assert is_loopback_endpoint("ipc:///tmp/x")
    for ep in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.2:5555", "tcp://eth0:1",
               "tcp://example.com:5555"):
        assert not is_loopback_endpoint(ep), ep


def test_end_to_end_raw_png_progress_preview():
    with serve(StandInPipeline(0.0)) as srv, connect(srv.endpoint) as c:
        jid, evs = run_one(c, small(steps=4, seed=42), preview_every=2, preview_max_side=32)
        kinds = [e.kind for e in evs if e.job_id == jid]
        assert kinds[0] == "accepted" and "started" in kinds and kinds[-1] == "result"
        steps = [e.data["step"] for e in evs if e.kind == "progress" and
                 e.data["stage"] == "denoise"]
        assert steps == [1, 2, 3, 4]
        fr = [e.data["fraction"] for e in evs if e.kind == "progress"]
        assert fr == sorted(fr) and 0 <= fr[0] and fr[-1] <= 1
        previews = [e for e in evs if e.kind == "preview"]
        assert previews and previews[0].images[0].format == "jpeg"
        assert previews[0].images[0].data[:3] == b"\xff\xd8\xff"
        res = evs[-1]
        img = res.images[0]
        assert (img.width, img.height, img.channels, img.format, img.seed) == (64, 64, 3, "raw",
                                                                               42)
        assert img.to_rgb_bytes() == pattern_image(42, 64, 64).tobytes()
        assert res.data["seeds"] == [42] and "generate_ms" in res.data["timings"]
        assert c.state == "connected" and c.welcome["engine"]["model"] == "stand-in"
        assert c.welcome["limits"]["min_side"] == 64

        jid, evs = run_one(c, small(seed=7), result_format="png")
        img = evs[-1].images[0]
        assert img.format == "png"
        from PIL import Image
        arr = np.asarray(Image.open(io.BytesIO(img.data)))
        assert (arr == pattern_image(7, 64, 64)).all()


def test_seed_null_is_chosen_and_echoed_num_images():
    with serve() as srv, connect(srv.endpoint) as c:
        jid, evs = run_one(c, small(seed=None, num_images=2))
        acc = next(e for e in evs if e.kind == "accepted")
        res = evs[-1]
        s = acc.data["seed"]
        assert isinstance(s, int) and 0 <= s < 2**63
        assert res.data["seeds"] == [s, s + 1] and [i.seed for i in res.images] == [s, s + 1]
        assert res.data["params"]["seed"] == s


def test_invalid_params_error_has_field_path():
    with serve() as srv, connect(srv.endpoint) as c:
        for params, field, code in [
            (small(width=65), "params.width", "invalid_params"),
            (small(width=32), "params.width", "invalid_params"),
            (small(steps=0), "params.steps", "invalid_params"),
            (small(steps=51), "params.steps", "invalid_params"),
            (small(seed=-1), "params.seed", "invalid_params"),
            (small(seed=2**63), "params.seed", "invalid_params"),
            (small(num_images=5), "params.num_images", "invalid_params"),
            (small(prompt=""), "params.prompt", "invalid_params"),
            (small(prompt="x" * 4001), "params.prompt", "invalid_params"),
            (small(steps="8"), "params.steps", "invalid_params"),
            (small(steps=True), "params.steps", "invalid_params"),
            (small(guidance=1e308 * 10 if False else 25.0), "params.guidance", "invalid_params"),
            (small(tile="z"), "params.tile", "invalid_params"),
            (small(strength=0.5), "params.strength", "invalid_params"),
            (small(init_image="init"), "params.init_image", "invalid_params"),
            (small(width=512, height=512 + 16), "params.height", "invalid_params"),
        ]:
            jid, evs = run_one(c, params)
            ev = evs[-1]
            assert ev.kind == "error" and ev.data["code"] == code, (params, ev)
            assert ev.data["field"] == field, (params, ev.data)


def test_status_snapshot_and_fetch_and_ping(raw_factory):
    with serve() as srv:
        r = raw_factory(srv.endpoint)
        r.hello()
        h, _ = r.request({"type": "submit", "job_id": "j1", "params": small()}, want="accepted")
        assert h["type"] == "accepted" and h["seq"] == 1
        deadline = time.monotonic() + 5
        while srv.jobs["j1"].state != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.01)
        h, _ = r.request({"type": "status"}, want="jobs")
        assert h["jobs"][0]["job_id"] == "j1" and h["jobs"][0]["state"] == "succeeded"
        h, blobs = r.request({"type": "fetch", "job_id": "j1"}, want="result")
        assert h["type"] == "result" and len(blobs[0]) == 64 * 64 * 3
        h, _ = r.request({"type": "fetch", "job_id": "nope"}, want="error")
        assert h["code"] == "unknown_job"
        h, _ = r.request({"type": "ping"}, want="pong")
        assert h["type"] == "pong" and "queue_len" in h
        # a session the engine does not know must say hello first
        r2 = raw_factory(srv.endpoint)
        h, _ = r2.request({"type": "ping"})
        assert h["code"] == "session_unknown" and h["retryable"] is True


def test_duplicate_job_id_is_idempotent_or_refused(raw_factory):
    with serve(StandInPipeline(0.05)) as srv:
        r = raw_factory(srv.endpoint)
        r.hello()
        sub = {"type": "submit", "job_id": "same", "params": small(steps=10)}
        h1, _ = r.request(sub, want="accepted")
        h2, _ = r.request(sub, want="accepted")
        assert h1["type"] == h2["type"] == "accepted" and h2.get("duplicate") is True
        h3, _ = r.request({**sub, "params": small(steps=9)}, want="error")
        assert h3["type"] == "error" and h3["code"] == "duplicate_job"
        other = raw_factory(srv.endpoint)
        other.hello()
        h4, _ = other.request(sub, want="error")
        assert h4["code"] == "duplicate_job"
        assert srv.pipeline.calls <= 1


# ---- concurrency and fairness ---------------------------------------------------------------

class RecordingStandIn(StandInPipeline):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.order = []

    def generate(self, req, on_progress=None, should_cancel=None):
        self.order.append(req.prompt.split(":")[0])
        return super().generate(req, on_progress, should_cancel)


def test_8_clients_x_25_jobs_all_delivered_once_and_fair():
    pipe = RecordingStandIn(0.002)
    n_clients, n_jobs = 8, 25
    with serve(pipe) as srv:
        clients = [EngineClient(srv.endpoint, client_name=f"c{i}", **CLIENT_FAST).start()
                   for i in range(n_clients)]
        try:
            for c in clients:
                collect(c, lambda e: e.kind == "welcome")
            submitted = collections.defaultdict(dict)
            barrier = threading.Barrier(n_clients)

            def burst(i, c):
                barrier.wait()
                for k in range(n_jobs):
                    seed = i * 1000 + k
                    jid = c.submit({"prompt": f"c{i}:{k}", "width": 64, "height": 64,
                                    "steps": 2, "seed": seed}, preview_every=0)
                    submitted[i][jid] = seed

            threads = [threading.Thread(target=burst, args=(i, c)) for i, c in
                       enumerate(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results = collections.defaultdict(list)
            others = []
            end = time.monotonic() + 60
            while time.monotonic() < end and sum(map(len, results.values())) < n_clients * \
                    n_jobs:
                for i, c in enumerate(clients):
                    for ev in c.poll():
                        if ev.kind == "result":
                            results[i].append(ev)
                        elif ev.kind in ("error", "cancelled"):
                            others.append(ev)
                time.sleep(0.01)
            assert not others, others[:3]
            for i in range(n_clients):
                got = [e.job_id for e in results[i]]
                assert len(got) == n_jobs and len(set(got)) == n_jobs, (i, len(got))
                assert set(got) == set(submitted[i])  # every result reached its sender
                for e in results[i]:
                    seed = submitted[i][e.job_id]
                    assert e.images[0].seed == seed
                    assert e.images[0].data == pattern_image(seed, 64, 64).tobytes()
        finally:
            for c in clients:
                c.close()
    # fairness: once everyone has queued work, no client runs more than twice in a row and
    # every window of 16 consecutive jobs serves most clients
    order = pipe.order
    assert len(order) == n_clients * n_jobs
    middle = order[40:160]
    runs = max(len(list(g)) for _, g in __import__("itertools").groupby(middle))
    assert runs <= 2, middle
    for i in range(0, len(middle) - 16, 8):
        assert len(set(middle[i:i + 16])) >= 6, middle[i:i + 16]


# ---- cancellation -------------------------------------------------------------------------

def test_cancel_queued_and_running_job():
    step = 0.05
    with serve(StandInPipeline(step)) as srv, connect(srv.endpoint) as c:
        a = c.submit(small(steps=40), preview_every=0)
        b = c.submit(small(steps=40), preview_every=0)
        collect(c, lambda e: e.job_id == a and e.kind == "progress" and e.data["step"] >= 2)
        c.cancel(b)
        ev = collect(c, terminal(b))[-1]
        assert ev.kind == "cancelled" and ev.data["at_step"] is None
        t0 = time.monotonic()
        c.cancel(a)
        evs = collect(c, terminal(a))
        dt = time.monotonic() - t0
        ev = evs[-1]
        assert ev.kind == "cancelled" and 2 <= ev.data["at_step"] < 40
        assert dt < step + 0.5, dt   # within about one step
        assert srv.jobs[a].state == "cancelled"
        # the engine keeps serving
        jid, evs = run_one(c, small())
        assert evs[-1].kind == "result"


def test_cancel_all_and_cancel_finished_is_harmless():
    with serve(StandInPipeline(0.05)) as srv, connect(srv.endpoint) as c:
        done, evs = run_one(c, small(steps=1))
        ids = [c.submit(small(steps=20), preview_every=0) for _ in range(3)]
        collect(c, lambda e: e.kind == "started")
        c.cancel_all()
        c.cancel(done)
        ends = {}
        collect(c, lambda e: terminal(e.job_id)(e) and not ends.update({e.job_id: e.kind})
                and set(ids) <= set(ends))
        assert [ends[j] for j in ids] == ["cancelled"] * 3


def test_cancel_or_fetch_of_another_sessions_job_is_forbidden():
    with serve(StandInPipeline(0.02)) as srv, connect(srv.endpoint) as owner, \
            connect(srv.endpoint) as thief:
        jid = owner.submit(small(steps=15), preview_every=0)
        collect(owner, lambda e: e.job_id == jid and e.kind == "started")
        collect(thief, lambda e: e.kind == "welcome")
        thief.cancel(jid)
        ev = collect(thief, lambda e: e.kind == "error")[-1]
        assert ev.data["code"] == "forbidden" and ev.job_id == jid
        thief.fetch(jid)
        ev = collect(thief, lambda e: e.kind == "error")[-1]
        assert ev.data["code"] == "forbidden"
        assert collect(owner, terminal(jid))[-1].kind == "result"


# ---- limits, deadlines, failures ----------------------------------------------------------

def test_queue_full_says_when_to_retry():
    with serve(StandInPipeline(0.1), limits={"max_queue_per_session": 2}) as srv, \
            connect(srv.endpoint) as c:
        first = c.submit(small(steps=10), preview_every=0)
        collect(c, lambda e: e.job_id == first and e.kind == "started")
        ids = [c.submit(small(steps=10), preview_every=0) for _ in range(2)]   # the cap: 2
        collect(c, lambda e: e.job_id == ids[1] and e.kind == "accepted")
        full = c.submit(small(steps=10), preview_every=0)
        ev = collect(c, terminal(full))[-1]
        assert ev.kind == "error" and ev.data["code"] == "queue_full"
        assert ev.data["retryable"] and ev.data["retry_after_ms"] > 0
        c.cancel_all()


def test_deadline_of_a_queued_job():
    with serve(StandInPipeline(0.05)) as srv, connect(srv.endpoint) as c:
        long = c.submit(small(steps=20), preview_every=0)
        late = c.submit(small(), preview_every=0, deadline_ms=200)
        ev = collect(c, terminal(late))[-1]
        assert ev.kind == "error" and ev.data["code"] == "deadline_exceeded"
        assert collect(c, terminal(long))[-1].kind == "result"


class FaultyStandIn(StandInPipeline):
    def generate(self, req, on_progress=None, should_cancel=None):
        if req.prompt == "oom":
            raise EngineError("out_of_memory", "CUDA out of memory (stand-in)")
        if req.prompt == "torch-oom":
            class OutOfMemoryError(RuntimeError):
                pass
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")
        if req.prompt == "boom":
            raise ZeroDivisionError("bug")
        return super().generate(req, on_progress, should_cancel)


def test_oom_and_crash_fail_only_that_job():
    with serve(FaultyStandIn()) as srv, connect(srv.endpoint) as c:
        for prompt, code in (("oom", "out_of_memory"), ("torch-oom", "out_of_memory"),
                             ("boom", "internal_error")):
            jid, evs = run_one(c, small(prompt=prompt))
            assert evs[-1].kind == "error" and evs[-1].data["code"] == code, evs[-1]
            assert "Traceback" not in evs[-1].data["message"]
            jid, evs = run_one(c, small())
            assert evs[-1].kind == "result"


def test_image_modes_need_the_capability_and_bombs_are_refused():
    png = encode_png(64, 64, pattern_image(3, 64, 64).tobytes())
    with serve(StandInPipeline()) as srv, connect(srv.endpoint) as c:
        jid, evs = run_one(c, small(init_image="init", strength=0.5), blobs={"init": png})
        assert evs[-1].data["code"] == "capability_unavailable"
        assert evs[-1].data["field"] == "params.init_image"

    class Img2Img(StandInPipeline):
        got = None

        def generate(self, req, on_progress=None, should_cancel=None):
            type(self).got = req.init_image
            return super().generate(req, on_progress, should_cancel)

    # a PNG whose IHDR claims 60000 x 60000: refused from the header, never decoded
    bomb = bytearray(encode_png(1, 1, b"\0\0\0"))
    bomb[16:24] = (60000).to_bytes(4, "big") * 2
    import zlib
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
    with serve(Img2Img(capabilities=("txt2img", "img2img"))) as srv, \
            connect(srv.endpoint) as c:
        jid, evs = run_one(c, small(init_image="init", strength=0.5), blobs={"init": png})
        assert evs[-1].kind == "result"
        assert Img2Img.got.shape == (64, 64, 3) and (Img2Img.got ==
                                                     pattern_image(3, 64, 64)).all()
        jid, evs = run_one(c, small(init_image="init"), blobs={"init": bytes(bomb)})
        assert evs[-1].kind == "error" and evs[-1].data["code"] == "too_large"
        assert evs[-1].data["field"] == "params.init_image"
        jid, evs = run_one(c, small(init_image="init"), blobs={"init": png[:40]})
        assert evs[-1].data["code"] == "invalid_params"
        assert srv._input_bytes == 0   # input blobs are released with their jobs
    with serve(Img2Img(0.05, capabilities=("txt2img", "img2img")),
               limits={"max_input_bytes": len(png) + 10}) as srv, connect(srv.endpoint) as c:
        first = c.submit(small(init_image="init", steps=40), blobs={"init": png})
        second = c.submit(small(init_image="init"), blobs={"init": png})
        ev = collect(c, terminal(second))[-1]
        assert ev.kind == "error" and ev.data["code"] == "queue_full"
        assert collect(c, terminal(first))[-1].kind == "result"


def c_raw_ping(endpoint):
    r = Raw(endpoint)
    try:
        r.hello()
        return r.request({"type": "ping"}, want="pong")
    finally:
        r.close()


def test_model_loading_then_ready():
    def loader():
        time.sleep(1.0)
        return StandInPipeline()

    srv = EngineServer(None, loader=loader, bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                       **FAST).start()
    try:
        with connect(srv.endpoint) as c:
            w = collect(c, lambda e: e.kind == "welcome")[-1]
            assert w.data["engine"]["state"] == "loading"
            h, _ = c_raw_ping(srv.endpoint)
            assert h["model_state"] == "loading"   # the I/O loop answers during the load
            jid = c.submit(small())
            evs = collect(c, terminal(jid))
            assert any(e.kind == "queued" and e.data.get("waiting") == "model_loading"
                       for e in evs)
            assert evs[-1].kind == "result"
            # an unsolicited welcome told the client that the model is ready
            assert any(e.kind == "welcome" and e.data["engine"]["state"] == "ready"
                       for e in evs)
            assert c.welcome["engine"]["state"] == "ready" and "txt2img" in c.welcome["caps"]
    finally:
        srv.stop()


def test_io_loop_answers_in_milliseconds_while_a_step_blocks(raw_factory):
    with serve(StandInPipeline(0.5)) as srv:
        r = raw_factory(srv.endpoint)
        r.hello()
        r.request({"type": "submit", "job_id": "slow", "params": small(steps=3),
                   "want": {"preview_every": 0}}, want="accepted")
        time.sleep(0.2)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            h, _ = r.request({"type": "ping"}, want="pong")
            times.append(time.perf_counter() - t0)
            assert h["running"] == "slow"
        assert sorted(times)[2] < 0.05, times
        r.request({"type": "cancel", "job_id": "slow"}, want="cancelled")


# ---- hostile input ------------------------------------------------------------------------

ALLOWED = {"bad_request", "invalid_params", "too_large", "unsupported_version",
           "session_unknown"}


def _alive(r: Raw) -> None:
    """The engine still answers: send a ping and skip earlier replies until the pong."""
    r.send({"type": "ping"})
    end = time.monotonic() + 3
    while time.monotonic() < end:
        got = r.recv(end - time.monotonic())
        assert got is not None, "engine stopped answering"
        if got[0]["type"] == "pong":
            return
    raise AssertionError("no pong")


@pytest.fixture(scope="module")
def hostile():
    srv = EngineServer(StandInPipeline(), bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                       max_sessions=64, **FAST).start()
    r = Raw(srv.endpoint)
    r.hello()
    yield srv, r
    r.close()
    srv.stop()


def _drain(r: Raw, wait: float = 0.3) -> list:
    out, end = [], time.monotonic() + wait
    while True:
        got = r.recv(max(0.0, end - time.monotonic()))
        if got is None:
            return out
        out.append(got[0])
        if got[0]["type"] in ("error", "pong", "jobs", "welcome", "accepted", "cancelled"):
            return out


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_doc = st.recursive(json_leaf, lambda ch: st.lists(ch, max_size=4) |
                        st.dictionaries(st.text(max_size=8), ch, max_size=4), max_leaves=20)
FIELDS = ["type", "session", "job_id", "params", "want", "blobs", "deadline_ms", "versions",
          "msg_id", "all", "job_ids", "resume_jobs", "priority"]
PARAM_FIELDS = ["prompt", "width", "height", "steps", "seed", "num_images", "guidance",
                "init_image", "strength", "mask", "control_image", "control_type",
                "control_scale", "tile", "negative_prompt"]
HS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@HS
@given(frames=st.lists(st.binary(max_size=64), max_size=5))
def test_random_frames_never_hurt_the_engine(hostile, frames):
    srv, r = hostile
    r.send(frames=frames or [b""])
    for h in _drain(r, 0.02):
        assert h["type"] != "error" or h["code"] in ALLOWED
    _alive(r)


@HS
@given(kind=st.sampled_from(["submit", "hello", "cancel", "status", "fetch", "ping", "x", 3]),
       fields=st.dictionaries(st.sampled_from(FIELDS), json_doc, max_size=6),
       params=st.dictionaries(st.sampled_from(PARAM_FIELDS), json_doc, max_size=8),
       nblobs=st.integers(0, 3))
def test_wrong_types_and_values_get_coded_errors(hostile, kind, fields, params, nblobs):
    srv, r = hostile
    header = {"session": r.session, **fields, "type": kind}
    if kind == "hello":
        header["session"] = r.session   # keep our own session usable
    if kind == "submit":
        header["params"] = params
    frames = encode(header, [b"x" * 10] * nblobs)
    r.send(frames=frames)
    replies = _drain(r, 0.3 if kind in ("submit", "hello", "cancel", "fetch", "status",
                                        "ping") else 0.05)
    for h in replies:
        if h["type"] == "error":
            assert h["code"] in ALLOWED | {"capability_unavailable", "unknown_job",
                                           "duplicate_job", "forbidden", "queue_full",
                                           "result_expired", "not_finished"}, h
            assert h["message"]
    r.send({"type": "cancel", "all": True})
    _alive(r)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(depth=st.integers(1, 20000), kind=st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_is_bad_request(hostile, depth, kind):
    srv, r = hostile
    close = "]" if kind == "[" else "}"
    body = kind * depth + "1" + close * depth
    text = '{"type":"ping","session":"%s","x":%s}' % (r.session, body)
    r.send(frames=[SIGNATURE, text.encode()])
    h = _drain(r, 1.0)[-1]
    if len(text) > 64 * 1024:
        assert h["code"] == "too_large"
    elif depth + 1 > 8:
        assert h["code"] == "bad_request"
    else:
        assert h["type"] == "pong"
    _alive(r)


@pytest.mark.parametrize("frames,code", [
    ([SIGNATURE, b'{"type":"ping","session":"%s","x":NaN}'], "bad_request"),
    ([SIGNATURE, b'{"type":"ping","session":"%s","x":Infinity}'], "bad_request"),
    ([SIGNATURE, b'{"type":"ping","session":"%s","x":1e999}'], "bad_request"),
    ([SIGNATURE, b'{"type":"ping","session":"%s","x":' + b"9" * 5000 + b"}"], "bad_request"),
    ([SIGNATURE, b'{"type":"ping","session":"%s","session":"x"}'], "bad_request"),
    ([SIGNATURE, b'\xff\xfe{"type":"ping"}'], "bad_request"),
    ([SIGNATURE, b"[1,2,3]"], "bad_request"),
    ([SIGNATURE, b" " * (64 * 1024 + 1)], "too_large"),
    ([b"ZIE2", b'{"type":"hello"}'], "unsupported_version"),
    ([SIGNATURE], "bad_request"),
    ([SIGNATURE, b'{"type":"submit","session":"%s","job_id":"b1","params":{"prompt":"x",'
      b'"width":64,"height":64},"blobs":[{"name":"a","mime":"image/png","bytes":3}]}'],
     "bad_request"),                                                   # blob frame missing
    ([SIGNATURE, b'{"type":"submit","session":"%s","job_id":"b2","params":{"prompt":"x",'
      b'"width":64,"height":64,"steps":1e400}}'], "bad_request"),
    ([SIGNATURE, b'{"type":"submit","session":"%s","job_id":"b3","params":{"prompt":"x",'
      b'"width":99999999999999999999999,"height":64}}'], "invalid_params"),
    ([SIGNATURE, b'{"type":"hello","session":"%s","versions":[2,3]}'], "unsupported_version"),
])
def test_specific_hostile_messages(hostile, frames, code):
    srv, r = hostile
    frames = [f.replace(b"%s", r.session.encode()) for f in frames]
    r.send(frames=frames)
    replies = _drain(r, 1.0)
    assert replies and replies[-1]["type"] == "error", replies
    assert replies[-1]["code"] == code, replies[-1]
    _alive(r)


def test_oversized_blobs_and_wrong_counts(hostile):
    srv, r = hostile
    base = {"type": "submit", "params": small()}
    cases = [
        ({**base, "job_id": "o1", "blobs": [{"name": "a", "mime": "image/png", "bytes": 4}] * 9},
         [b"abcd"] * 9, "too_large"),
        ({**base, "job_id": "o2", "blobs": [{"name": "a", "mime": "image/png",
                                             "bytes": 64 * 1024 * 1024}]}, [b"abcd"],
         "too_large"),
        ({**base, "job_id": "o3", "blobs": [{"name": "a", "mime": "image/png", "bytes": 5}]},
         [b"abcd"], "bad_request"),
        ({**base, "job_id": "o4"}, [b"abcd"], "bad_request"),
        ({**base, "job_id": "o5", "blobs": [{"name": "a", "mime": "application/x-raw",
                                             "bytes": 12, "width": 100000, "height": 1,
                                             "channels": 3}]}, [b"x" * 12], "too_large"),
        ({**base, "job_id": "o6", "blobs": [{"name": "a", "mime": "text/html", "bytes": 1}]},
         [b"x"], "bad_request"),
    ]
    for header, blobs, code in cases:
        h, _ = r.request(header, blobs)
        assert h["type"] == "error" and h["code"] == code, (header["job_id"], h)
    _alive(r)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_memory_and_state_stay_flat_under_garbage(hostile):
    srv, r = hostile
    garbage = [
        [os.urandom(16)],
        [SIGNATURE, os.urandom(200)],
        [SIGNATURE, b'{"type":"submit","session":"%s","params":{"width":"x"}}' %
         r.session.encode()],
        [SIGNATURE, b"[" * 5000],
        [SIGNATURE, b" " * 70000],
    ]

    def burst(n):
        for i in range(n):
            r.send(frames=garbage[i % len(garbage)])
            if i % 50 == 0:
                _drain(r, 0.0)
                _alive(r)
        _drain(r, 0.2)

    burst(500)
    before = _rss_kb()
    burst(3000)
    grown = _rss_kb() - before
    assert grown < 30_000, f"RSS grew {grown} kB"
    assert len(srv.jobs) < 50 and len(srv.sessions) <= 64
    # many hellos with fresh sessions stay within max_sessions
    for i in range(100):
        r.send({"type": "hello", "versions": [1], "session": uuid.uuid4().hex})
    _drain(r, 0.5)
    assert len(srv.sessions) <= 64
    _alive(r)


# ---- faults -------------------------------------------------------------------------------

def test_client_that_vanishes_mid_job_is_freed_and_others_are_served():
    with serve(StandInPipeline(0.05), session_timeout_s=1.0, detach_grace_s=0.5) as srv:
        ghost = Raw(srv.endpoint)
        ghost.hello()
        ghost.request({"type": "submit", "job_id": "ghost1", "params": small(steps=50),
                       "want": {"preview_every": 0}}, want="accepted")
        ghost.request({"type": "submit", "job_id": "ghost2", "params": small(steps=50)},
                      want="accepted")
        time.sleep(0.2)
        assert srv.jobs["ghost1"].state == "running"
        ghost.close()   # vanishes: no bye, socket gone
        t0 = time.monotonic()
        with connect(srv.endpoint) as c:
            jid, evs = run_one(c, small(steps=2))
            assert evs[-1].kind == "result"
        # the ghost's 2.5 s job was stopped instead of running to the end
        assert time.monotonic() - t0 < 2.4
        assert srv.jobs["ghost1"].state == "cancelled"
        assert srv.jobs["ghost2"].state == "cancelled"


class Proxy:
    """TCP proxy on a fixed port that can be cut (all connections dropped) and restored."""

    def __init__(self, upstream_port: int):
        self.up = upstream_port
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.conns = []
        self.running = False
        self.restore()

    def restore(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(8)
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while self.running:
            socks = [self.lsock] + [s for pair in self.conns for s in pair]
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                continue
            for s in ready:
                if s is self.lsock:
                    try:
                        a, _ = self.lsock.accept()
                        b = socket.create_connection(("127.0.0.1", self.up))
                        self.conns.append((a, b))
                    except OSError:
                        pass
                    continue
                for a, b in list(self.conns):
                    if s in (a, b):
                        other = b if s is a else a
                        try:
                            data = s.recv(65536)
                            if not data:
                                raise OSError
                            other.sendall(data)
                        except OSError:
                            self._drop(a, b)

    def _drop(self, a, b):
        for x in (a, b):
            try:
                x.close()
            except OSError:
                pass
        if (a, b) in self.conns:
            self.conns.remove((a, b))

    def cut(self):
        self.running = False
        self.thread.join()
        self.lsock.close()
        for a, b in list(self.conns):
            for x in (a, b):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)
            self._drop(a, b)


def test_reconnecting_client_gets_the_result_that_finished_while_it_was_away():
    with serve(StandInPipeline(0.05)) as srv:
        port = int(srv.endpoint.rsplit(":", 1)[1])
        proxy = Proxy(port)
        try:
            with connect(f"tcp://127.0.0.1:{proxy.port}") as c:
                jid = c.submit(small(steps=16, seed=5), preview_every=0)
                collect(c, lambda e: e.job_id == jid and e.kind == "started")
                proxy.cut()
                collect(c, lambda e: e.kind == "disconnected", timeout=5)
                end = time.monotonic() + 5
                while srv.jobs[jid].state != "succeeded" and time.monotonic() < end:
                    time.sleep(0.02)
                assert srv.jobs[jid].state == "succeeded"
                time.sleep(0.3)
                proxy.restore()
                evs = collect(c, terminal(jid), timeout=10)
                assert evs[-1].kind == "result", evs[-1]
                assert evs[-1].images[0].data == pattern_image(5, 64, 64).tobytes()
                assert any(e.kind == "connected" and e.data["reconnected"] for e in evs)
                assert c.state == "connected"
        finally:
            proxy.cut()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_engine_process(port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "engine.serve_cli", "serve", "--standin",
           "--bind", f"tcp://127.0.0.1:{port}", "--min-side", "64", "--heartbeat-ivl-ms",
           "300", "--heartbeat-timeout-ms", "900", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith("ready tcp://127.0.0.1:"), line
    return proc


def _kill(proc):
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    proc.wait(5)


def test_engine_killed_mid_job_client_notices_and_reconnects():
    port = _free_port()
    proc = start_engine_process(port, "--step-seconds", "0.1")
    try:
        with connect(f"tcp://127.0.0.1:{port}") as c:
            jid = c.submit(small(steps=40), preview_every=0)
            collect(c, lambda e: e.job_id == jid and e.kind == "progress")
            os.kill(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            collect(c, lambda e: e.kind == "disconnected", timeout=5)
            assert time.monotonic() - t0 < 3.0
            assert c.state == "disconnected"
            proc.wait(5)
            proc = start_engine_process(port, "--step-seconds", "0.01")
            evs = collect(c, terminal(jid), timeout=15)
            assert evs[-1].kind == "error" and evs[-1].data["code"] == "engine_crashed"
            assert any(e.kind == "connected" and e.data["engine_restarted"] for e in evs)
            jid2, evs = run_one(c, small())
            assert evs[-1].kind == "result"
    finally:
        _kill(proc)


def test_frozen_engine_is_seen_by_the_watchdog_and_recovers():
    port = _free_port()
    proc = start_engine_process(port, "--step-seconds", "0.05")
    try:
        with connect(f"tcp://127.0.0.1:{port}") as c:
            jid = c.submit(small(steps=30, seed=9), preview_every=0)
            collect(c, lambda e: e.job_id == jid and e.kind == "progress")
            os.kill(proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            ev = collect(c, lambda e: e.kind == "disconnected", timeout=6)[-1]
            assert time.monotonic() - t0 < 3.5
            assert ev.data["reason"] in ("engine_unresponsive", "engine_unreachable")
            time.sleep(0.5)
            os.kill(proc.pid, signal.SIGCONT)
            evs = collect(c, terminal(jid), timeout=15)
            assert evs[-1].kind == "result", evs[-1]   # same epoch: the job survived
            assert evs[-1].images[0].data == pattern_image(9, 64, 64).tobytes()
    finally:
        _kill(proc)


# ---- security -----------------------------------------------------------------------------

@pytest.fixture
def keydir(tmp_path):
    from engine.serve_cli import run_keys
    args = type("A", (), {"dir": str(tmp_path / "keys"),
                          "client": ["alice", "bob", "mallory"]})
    assert run_keys(args) == 0
    os.remove(tmp_path / "keys" / "authorized_clients" / "mallory.key")   # not allowed
    return tmp_path / "keys"


def _keys(keydir, name):
    import zmq.auth
    server_public, _ = zmq.auth.load_certificate(str(keydir / "server.key"))
    pub, sec = zmq.auth.load_certificate(str(keydir / "clients" / f"{name}.key_secret"))
    return server_public, (pub, sec)


def test_curve_allowed_key_connects_and_unknown_key_is_refused(keydir):
    srv = EngineServer(StandInPipeline(), bind="tcp://127.0.0.1:0", limits=Limits(**LIM),
                       curve_secret_file=str(keydir / "server.key_secret"),
                       curve_authorized_dir=str(keydir / "authorized_clients"), **FAST).start()
    try:
        skey, ckeys = _keys(keydir, "alice")
        with connect(srv.endpoint, curve_server_key=skey, curve_client_keys=ckeys) as c:
            jid, evs = run_one(c, small())
            assert evs[-1].kind == "result"
            sess = srv.sessions[c.session]
            assert sess.user_id == ckeys[0].decode()
        # bob is allowed, but may not take over alice's session
        with connect(srv.endpoint, curve_server_key=skey, curve_client_keys=ckeys) as alice:
            collect(alice, lambda e: e.kind == "welcome")
            skey, bkeys = _keys(keydir, "bob")
            with connect(srv.endpoint, curve_server_key=skey, curve_client_keys=bkeys,
                         session=alice.session) as bob:
                ev = collect(bob, lambda e: e.kind in ("disconnected", "welcome"))[-1]
                assert ev.kind == "disconnected" and ev.data["reason"] == "unauthorized"
        skey, ckeys = _keys(keydir, "mallory")
        with connect(srv.endpoint, curve_server_key=skey, curve_client_keys=ckeys) as c:
            ev = collect(c, lambda e: e.kind in ("disconnected", "welcome"), timeout=5)[-1]
            assert ev.kind == "disconnected" and ev.data["reason"] == "unauthorized"
            assert c.welcome is None
        # a plain (NULL) client gets nowhere either
        with connect(srv.endpoint) as c:
            ev = collect(c, lambda e: e.kind in ("disconnected", "welcome"), timeout=5)[-1]
            assert ev.kind == "disconnected"
    finally:
        srv.stop()


def test_non_loopback_bind_without_keys_refuses_before_binding():
    port = _free_port()
    with pytest.raises(InsecureBindError):
        EngineServer(StandInPipeline(), bind=f"tcp://0.0.0.0:{port}")
    proc = subprocess.run([sys.executable, "-m", "engine.serve_cli", "serve", "--standin",
                           "--bind", f"tcp://0.0.0.0:{port}"], cwd=REPO, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "CURVE" in proc.stderr
    s = socket.socket()
    s.bind(("0.0.0.0", port))   # nobody took the port
    s.close()


def test_unload_frees_between_jobs_and_is_refused_without_the_capability():
    class Counting(StandInPipeline):
        unloads = 0

        def unload(self):
            type(self).unloads += 1
            return 1234

    with serve(Counting(0.02)) as srv, connect(srv.endpoint) as c:
        collect(c, lambda e: e.kind == "welcome")
        assert "unload" in c.welcome["caps"]
        running = c.submit(small(steps=10))
        collect(c, lambda e: e.job_id == running and e.kind == "started")
        c.unload()
        evs = collect(c, lambda e: e.kind == "unloaded")
        # the running job was not disturbed: it finished before the worker unloaded
        assert any(e.job_id == running and e.kind == "result" for e in evs)
        assert evs[-1].data["freed_bytes"] == 1234 and Counting.unloads == 1
        assert run_one(c, small())[1][-1].kind == "result"  # the next job loads back

    class NoUnload:  # a pipeline object without unload(): only generate/preview/info
        info = {"model": "x", "device": "cpu", "dtype": "float32", "capabilities": ["txt2img"]}
        _inner = StandInPipeline()

        def generate(self, *a, **k):
            return self._inner.generate(*a, **k)

        def preview(self, *a, **k):
            return self._inner.preview(*a, **k)

    with serve(NoUnload()) as srv, connect(srv.endpoint) as c:
        collect(c, lambda e: e.kind == "welcome")
        assert "unload" not in c.welcome["caps"]
        c.unload()
        ev = collect(c, lambda e: e.kind == "error")[-1]
        assert ev.data["code"] == "capability_unavailable"
