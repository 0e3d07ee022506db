"""EngineClient behaviour that the Blender add-on relies on (in-process stand-in engine)."""

from __future__ import annotations

import contextlib
import time

import pytest

from engine.server import EngineServer
from engine.standin import StandInPipeline, pattern_image
from protocol.client import EngineClient, ImageData, generate
from protocol.errors import ProtocolError
from protocol.messages import Limits

LIM = Limits(min_side=64, max_side=512, max_pixels=512 * 512)
FAST = dict(heartbeat_ivl_ms=200, heartbeat_timeout_ms=600, heartbeat_ttl_ms=1000,
            reconnect_ivl_ms=100, reconnect_ivl_max_ms=400, ping_interval_s=0.3,
            unresponsive_s=1.5)


ENGINE = {"kind": "serve"}


@pytest.fixture(autouse=True, params=["serve", "cluster"])
def engine_kind(request):
    """Every test runs against `engine serve` and against the farm gateway (`engine cluster`:
    the same pipeline as one Ray Serve replica); the tests themselves are the same."""
    if request.param == "cluster":
        request.getfixturevalue("ray_cluster")
    ENGINE["kind"] = request.param
    yield request.param
    ENGINE["kind"] = "serve"


@contextlib.contextmanager
def serve(pipeline=None):
    pipeline = pipeline or StandInPipeline()
    kw = dict(bind="tcp://127.0.0.1:0", limits=LIM, heartbeat_ivl_ms=300,
              heartbeat_timeout_ms=900)
    if ENGINE["kind"] == "cluster":
        from engine.server.cluster import ClusterServer, PipelineFactory
        srv = ClusterServer(PipelineFactory("object", obj=pipeline), replica_cpus=0.25,
                            **kw).start()
        assert srv.wait_ready(120) == "ready", srv.model_error
    else:
        srv = EngineServer(pipeline, **kw).start()
    try:
        yield srv
    finally:
        srv.stop()


def wait(client, pred, timeout=10.0):
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        for ev in client.poll(timeout=0.05):
            seen.append(ev)
            if pred(ev):
                return ev, seen
    raise AssertionError(f"timed out; saw {seen[-10:]}")


def test_unreachable_engine_is_reported_and_poll_never_blocks():
    c = EngineClient("tcp://127.0.0.1:1", accept_timeout_s=1.0, **FAST).start()
    try:
        jid = c.submit({"prompt": "x"})
        t0 = time.perf_counter()
        assert c.poll() == []
        assert time.perf_counter() - t0 < 0.05
        assert c.state in ("connecting", "disconnected") and c.welcome is None
        ev, _ = wait(c, lambda e: e.job_id == jid, timeout=5)
        assert ev.kind == "error" and ev.data["code"] == "engine_unreachable"
        assert ev.data["retryable"] is True
    finally:
        t0 = time.perf_counter()
        c.close()
        c.close()
        assert time.perf_counter() - t0 < 1.0


def test_submit_before_start_and_unencodable_params():
    with serve() as srv:
        c = EngineClient(srv.endpoint, **FAST)
        jid = c.submit({"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3})
        with pytest.raises(ProtocolError) as e:
            c.submit({"prompt": "x", "guidance": float("nan")})
        assert e.value.code == "invalid_params"
        with pytest.raises(ProtocolError):
            c.submit({"prompt": object()})
        c.start()
        try:
            ev, seen = wait(c, lambda e: e.job_id == jid and e.kind == "result")
            kinds = [e.kind for e in seen]
            assert kinds.index("connected") < kinds.index("welcome") < kinds.index("accepted")
            assert ev.images[0].to_rgb_bytes() == pattern_image(3, 64, 64).tobytes()
        finally:
            c.close()


def test_blocking_generate_returns_result_and_raises_protocol_errors():
    with serve(StandInPipeline(0.01)) as srv:
        seen = []
        res = generate(srv.endpoint, {"prompt": "x", "width": 64, "height": 64, "steps": 3,
                                      "seed": 11}, on_event=seen.append, timeout=30)
        assert res.kind == "result" and res.images[0].seed == 11
        assert any(e.kind == "progress" for e in seen)
        with pytest.raises(ProtocolError) as e:
            generate(srv.endpoint, {"prompt": "x", "width": 65, "height": 64}, timeout=30)
        assert e.value.code == "invalid_params" and e.value.field == "params.width"
        with pytest.raises(ProtocolError) as e:
            generate(srv.endpoint, {"prompt": "x", "width": 64, "height": 64, "steps": 50},
                     timeout=0.2)
        assert e.value.code == "deadline_exceeded"


class StuckStandIn(StandInPipeline):
    """The worker blocks inside a step (like a hung kernel); the I/O loop stays alive."""

    def generate(self, req, on_progress=None, should_cancel=None):
        on_progress(type("P", (), {"stage": "denoise", "step": 1, "steps": req.steps,
                                   "latents": None})())
        end = time.monotonic() + 3.0
        while time.monotonic() < end and not should_cancel():
            time.sleep(0.01)
        return super().generate(req, on_progress, should_cancel)


def test_progress_watchdog_flags_a_stuck_worker_while_pings_still_work():
    with serve(StuckStandIn()) as srv:
        c = EngineClient(srv.endpoint, stall_timeout_s=0.8, **FAST).start()
        try:
            jid = c.submit({"prompt": "x", "width": 64, "height": 64, "steps": 2})
            ev, seen = wait(c, lambda e: e.job_id == jid and e.kind == "error")
            assert ev.data["code"] == "engine_unresponsive" and ev.data["local"]
            assert c.state == "connected"   # the engine's loop answered pings throughout
            assert not any(e.kind == "disconnected" for e in seen)
        finally:
            c.close()


def test_image_data_helpers():
    rgba = ImageData(2, 1, 4, "raw", bytes([1, 2, 3, 255, 4, 5, 6, 255]))
    assert rgba.to_rgb_bytes() == bytes([1, 2, 3, 4, 5, 6])
    assert rgba.to_png_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        ImageData(2, 1, 3, "png", b"\x89PNG...").to_rgb_bytes()
