"""JobBoard: client events -> job state (bpy-free)."""

from __future__ import annotations

from dataclasses import dataclass, field

from blender_addon.core.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, SENDING, JobBoard


@dataclass
class Ev:
    kind: str
    job_id: str | None = None
    data: dict = field(default_factory=dict)
    images: list = field(default_factory=list)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def board():
    clock = Clock()
    return JobBoard(clock=clock, connect_timeout=5.0), clock


def test_full_job_lifecycle_and_progress():
    b, _ = board()
    b.handle(Ev("welcome", data={"caps": ["txt2img"]}))
    job = b.submit("texture", "j1", {"prompt": "p", "steps": 4, "seed": 9})
    assert job.phase == SENDING and not b.can_submit("texture") and b.can_submit("concept")
    b.handle(Ev("accepted", "j1"))
    assert job.phase == QUEUED
    b.handle(Ev("started", "j1"))
    b.handle(Ev("progress", "j1", {"stage": "denoise", "step": 2, "steps": 4,
                                   "fraction": 0.475}))
    assert job.phase == RUNNING and job.status_text() == "Denoising 2/4"
    assert job.progress == 0.475            # the engine's fraction, not a local formula
    for bogus in (0.1, 7, "0.9", True, None):   # never backwards, never out of range
        b.handle(Ev("progress", "j1", {"stage": "denoise", "step": 2, "steps": 4,
                                       "fraction": bogus}))
    assert job.progress == 0.475
    effects = b.handle(Ev("preview", "j1", {"step": 2}, ["img"]))
    assert [e.kind for e in effects] == ["preview"] and job.preview_version == 1
    effects = b.handle(Ev("result", "j1", {}, ["a", "b"]))
    assert [e.kind for e in effects] == ["result"] and job.images == ["a", "b"]
    assert not b.can_submit("texture")          # until the glue has applied it
    b.complete(job)
    assert job.phase == DONE and b.can_submit("texture") and job.progress == 1.0


def test_cancel_is_immediate_and_late_events_are_ignored():
    b, _ = board()
    job = b.submit("texture", "j1", {"seed": 1})
    b.handle(Ev("started", "j1"))
    assert b.cancel("texture") == "j1"
    assert job.phase == CANCELLED and b.can_submit("texture")
    assert b.handle(Ev("result", "j1", {}, ["late"])) == []
    assert job.phase == CANCELLED and job.images == []
    assert b.cancel("texture") is None


def test_engine_errors_are_explained():
    b, _ = board()
    job = b.submit("texture", "j1", {})
    [eff] = b.handle(Ev("error", "j1", {"code": "out_of_memory", "message": "CUDA OOM"}))
    assert eff.kind == "failed" and job.phase == FAILED
    assert job.error.code == "out_of_memory" and "smaller size" in job.error.hint
    job = b.submit("texture", "j2", {})
    b.handle(Ev("error", "j2", {"code": "invalid_params", "field": "params.width",
                                "message": "must be a multiple of 16"}))
    assert job.error.code == "unsupported_size"


def test_disconnect_mid_job_fails_it_but_not_a_job_still_sending():
    b, clock = board()
    b.handle(Ev("connected"))
    running = b.submit("texture", "j1", {})
    b.handle(Ev("started", "j1"))
    sending = b.submit("concept", "j2", {})
    effects = b.handle(Ev("disconnected", data={"reason": "engine_unreachable"}))
    assert [e.job.job_id for e in effects] == ["j1"]
    assert running.error.code == "engine_lost" and "Nothing was applied" in running.error.text
    assert sending.phase == SENDING
    clock.t += 6
    [eff] = b.tick()
    assert eff.job is sending and sending.error.code == "engine_unreachable"


def test_engine_not_running_times_out_only_without_connection():
    b, clock = board()
    job = b.submit("texture", "j1", {})
    clock.t += 4
    assert b.tick() == []
    clock.t += 2
    assert [e.job for e in b.tick()] == [job] and job.phase == FAILED


def test_unknown_job_events_and_snapshot_changes():
    b, _ = board()
    assert b.handle(Ev("progress", "nope", {"step": 1})) == []
    s0 = b.snapshot()
    b.submit("texture", "j1", {})
    s1 = b.snapshot()
    assert s0 != s1
    assert b.snapshot() == s1        # nothing changed -> same snapshot -> no redraw
    b.handle(Ev("progress", "j1", {"stage": "denoise", "step": 1, "steps": 8}))
    assert b.snapshot() != s1
