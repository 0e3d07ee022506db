"""The plugin's Krita-free Session over real sockets: a studio engine with CURVE keys (key
files as `python -m engine keys` writes them), the stand-in pipeline (no model needed)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from engine.server import EngineServer
from engine.standin import StandInPipeline, pattern_image
from protocol.messages import Limits

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "krita_plugin"))

from zimage_krita.core import requests  # noqa: E402
from zimage_krita.core.session import Session  # noqa: E402


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys") / "keys"
    subprocess.run([sys.executable, "-m", "engine", "keys", "--dir", str(d), "--client",
                    "alice", "--client", "mallory"], cwd=ROOT, check=True, capture_output=True)
    (d / "authorized_clients" / "mallory.key").unlink()
    return d


@pytest.fixture()
def studio(keydir):
    srv = EngineServer(StandInPipeline(0.02), bind="tcp://127.0.0.1:0",
                       limits=Limits(min_side=64),
                       curve_secret_file=str(keydir / "server.key_secret"),
                       curve_authorized_dir=str(keydir / "authorized_clients")).start()
    yield srv
    srv.stop()


def pump_until(session, pred, timeout=20):
    effects = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        effects += session.pump()
        if pred(effects):
            return effects
        time.sleep(0.02)
    raise AssertionError(f"timed out; {session.status_text()!r}")


def test_studio_engine_with_curve_key_files(studio, keydir):
    s = Session()
    try:
        assert s.connect(studio.endpoint, str(keydir / "server.key"),
                         str(keydir / "clients" / "alice.key_secret"))
        pump_until(s, lambda _e: s.connected)
        assert s.caps() and "txt2img" in s.caps()
        settings = requests.KritaSettings("a fox", seed_random=False, seed=3, steps=2)
        req = requests.build(settings, s.limits(), s.caps(), (64, 96))
        job = s.submit(req, {})
        effects = pump_until(s, lambda e: any(x.kind == "result" for x in e))
        assert [x.kind for x in effects].count("result") == 1
        img = job.images[0]
        assert (img.width, img.height) == (64, 96)
        assert img.to_rgb_bytes() == pattern_image(3, 64, 96).tobytes()
        s.complete(job, [s.record(job, settings, 3, "a fox (3)")])
        assert s.status_text() == "Done" and s.history[0].recall()["seed"] == 3
    finally:
        s.close()


def test_a_key_the_engine_does_not_know_is_a_message(studio, keydir):
    s = Session()
    try:
        assert s.connect(studio.endpoint, str(keydir / "server.key"),
                         str(keydir / "clients" / "mallory.key_secret"))
        pump_until(s, lambda _e: "refused" in s.notice)
        assert s.notice.startswith("The engine refused this client's key")
        assert "docker's Engine section" in s.notice
        assert not s.connected
    finally:
        s.close()


def test_missing_or_unreadable_key_files_are_a_message(keydir, tmp_path):
    s = Session()
    assert not s.connect("tcp://127.0.0.1:5555", str(keydir / "server.key"), "")
    assert "both key files" in s.notice
    assert not s.connect("tcp://127.0.0.1:5555", str(tmp_path / "nope.key"),
                         str(keydir / "clients" / "alice.key_secret"))
    assert s.notice.startswith("The CURVE key files cannot be used (cannot read them")


def test_cancel_in_the_session_drops_whatever_the_engine_sends(keydir):
    srv = EngineServer(StandInPipeline(0.05), bind="tcp://127.0.0.1:0",
                       limits=Limits(min_side=64)).start()
    s = Session()
    try:
        s.connect(srv.endpoint)
        pump_until(s, lambda _e: s.connected)
        req = requests.build(requests.KritaSettings("x", steps=30), s.limits(), s.caps(),
                             (64, 64))
        job = s.submit(req, {})
        pump_until(s, lambda _e: job.step >= 1)
        assert s.cancel() and job.phase == "cancelled"
        time.sleep(0.5)
        late = pump_until(s, lambda _e: not s.link.pending(), timeout=10)
        assert not [e for e in late if e.kind in ("result", "failed")]
        assert s.status_text() == "Cancelled"
    finally:
        s.close()
        srv.stop()
