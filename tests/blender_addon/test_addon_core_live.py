"""core.live on its own: debounce on an injected clock, frames in flight, newest shown."""

from __future__ import annotations

from types import SimpleNamespace as NS

from blender_addon.core.live import LiveController


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def ev(kind, job_id, images=(), **data):
    return NS(kind=kind, job_id=job_id, data=data, images=list(images))


def test_debounce_waits_for_a_quiet_scene():
    c = LiveController(Clock(), debounce_s=0.15)
    assert not c.due()
    c.touch()
    c.clock.t += 0.1
    c.touch()                       # still moving: the wait starts again
    c.clock.t += 0.1
    assert not c.due()
    c.clock.t += 0.06
    assert c.due()
    c.sent("j1")
    assert not c.due() and c.counts["changes"] == 2


def test_only_a_newer_result_is_shown_and_superseded_frames_are_counted():
    c = LiveController(Clock(), debounce_s=0.0)
    for j in ("a", "b", "c"):
        c.touch()
        c.sent(j)
    c.handle(ev("accepted", "a"))
    c.handle(ev("started", "a"))
    c.handle(ev("accepted", "b"))
    c.handle(ev("cancelled", "b", reason="superseded", at_step=None))
    c.handle(ev("accepted", "c"))
    assert c.peak == {"queued": 1, "running": 1}
    c.handle(ev("result", "c", images=["C"], timings={"generate_ms": 40.0}))
    c.handle(ev("result", "a", images=["A"]))    # late and older: never shown
    frame, image = c.take()
    assert image == "C" and frame.number == 3 and frame.compute_ms == 40.0
    assert c.take() is None
    assert c.counts["superseded"] == 1 and c.counts["finished"] == 2
    assert not c.handle(ev("result", "someone-else"))


def test_stop_returns_what_to_cancel_and_forgets_it():
    c = LiveController(Clock(), debounce_s=0.0)
    c.touch()
    c.sent("x")
    c.touch()
    assert c.stop() == ["x"] and not c.frames and not c.due()
    assert not c.handle(ev("result", "x", images=["late"])) and c.take() is None


def test_live_size_keeps_the_long_side_and_the_aspect():
    from blender_addon.core.live import live_size
    assert live_size(16 / 9, 512) == (512, 288)
    assert live_size(9 / 16, 768) == (432, 768)
    assert live_size(1.0, 512) == (512, 512)
    assert live_size(100.0, 512, min_side=64) == (512, 64)
