"""JobBoard: client events -> job state (bpy-free)."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from blender_addon.core import jobs, live
from blender_addon.core.jobs import JobBoard
from protocol.messages import JobState

PENDING, QUEUED, RUNNING = JobState.PENDING, JobState.QUEUED, JobState.RUNNING
SUCCEEDED, FAILED, CANCELLED = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


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
    assert job.phase == PENDING and not b.can_submit("texture") and b.can_submit("concept")
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
    assert job.phase == SUCCEEDED and b.can_submit("texture") and job.progress == 1.0


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
    assert sending.phase == PENDING
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


# ---- one vocabulary: the protocol's JobState (protocol/messages.py) ----------------------

def _phases_seen(script) -> set:
    """Run `script(board, clock)` and collect the type and value of every phase a job had."""
    seen = set()
    b, clock = board()
    orig = JobBoard.handle

    def note():
        seen.update((type(j.phase), j.phase) for j in b.jobs.values())

    def handle(self, ev):
        out = orig(self, ev)
        note()
        return out

    b.handle = handle.__get__(b)
    script(b, clock, note)
    note()
    return seen


def test_every_phase_the_board_sets_is_a_protocol_job_state():
    def script(b, clock, note):
        b.handle(Ev("connected"))
        for slot, jid in (("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")):
            b.submit(slot, jid, {"steps": 2})
            note()
        for jid in "12345":
            b.handle(Ev("accepted", jid))
            b.handle(Ev("queued", jid, {"position": 1}))
        for jid in "1234":
            b.handle(Ev("started", jid))
            b.handle(Ev("progress", jid, {"stage": "denoise", "step": 1, "steps": 2,
                                          "fraction": 0.5}))
            b.handle(Ev("preview", jid, {"step": 1}, ["img"]))
        b.handle(Ev("result", "1", {}, ["img"]))
        b.complete(b.jobs["a"])
        b.handle(Ev("cancelled", "2"))
        b.handle(Ev("error", "3", {"code": "out_of_memory"}))
        b.cancel("d")
        b.handle(Ev("disconnected"))
        b.submit("f", "6", {})
        clock.t += 60
        b.tick()

    seen = _phases_seen(script)
    assert {t for t, _ in seen} == {JobState}     # members, not look-alike strings
    assert {v for _, v in seen} == set(JobState)       # and every state is reachable


def test_live_frames_use_the_same_job_states():
    clock = Clock()
    c = live.LiveController(clock=clock)
    c.touch()
    frame = c.sent("j1")
    seen = [frame.phase]
    for kind in ("accepted", "started"):
        c.handle(Ev(kind, "j1"))
        seen.append(frame.phase)
    assert seen == [PENDING, QUEUED, RUNNING] and all(type(p) is JobState for p in seen)


def test_the_addon_spells_no_job_state_of_its_own():
    """No phase is compared with or set to a string literal in the add-on or the Krita
    plugin: job phases are JobState members (a Run's working steps are named constants in
    core/projection_jobs.py)."""
    root = Path(jobs.__file__).resolve().parents[2]
    offenders = []
    for path in sorted([*root.glob("blender_addon/**/*.py"),
                        *root.glob("krita_plugin/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            pairs = []          # (a phase?, the value it meets)
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                pairs = [(a, b) for a in sides for b in sides if a is not b]
            elif isinstance(node, ast.Assign):
                for tgt in node.targets:
                    if isinstance(tgt, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        pairs += zip(tgt.elts, node.value.elts)
                    else:
                        pairs.append((tgt, node.value))
            if any(_is_phase(a) and _has_str(b) for a, b in pairs):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
    assert not hasattr(jobs, "ACTIVE_PHASES") and not hasattr(jobs, "SENDING")


def _is_phase(node) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "phase"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):   # d.get("phase")
        return node.func.attr == "get" and any(
            isinstance(a, ast.Constant) and a.value == "phase" for a in node.args)
    if isinstance(node, ast.Subscript):                                       # d["phase"]
        return isinstance(node.slice, ast.Constant) and node.slice.value == "phase"
    return False


def _has_str(node) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) for n in ast.walk(node))
