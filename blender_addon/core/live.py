"""Live mode's bookkeeping, without bpy: debounce, the frames in flight, which result to show.

Newest frame wins: every frame is submitted with the same live key, so the engine drops the
queued frame and stops the running one at its next step (PROTOCOL.md §4.1). This side only
debounces scene changes, remembers which job is which frame, and shows a result only when it
is newer than the one on screen. The clock is injected (tests drive it).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Callable

from .jobs import JobState

LIVE_KEY = "blender-live"


@dataclass
class Frame:
    number: int
    job_id: str
    changed_at: float          # the scene change this frame shows (the last one debounced)
    sent_at: float
    capture_ms: float = 0.0
    phase: JobState = JobState.PENDING   # sent, not accepted yet
    started_at: float | None = None
    compute_ms: float | None = None   # the engine's generate time (result timings)


class LiveController:
    def __init__(self, clock: Callable[[], float] = time.monotonic, debounce_s: float = 0.15):
        self.clock = clock
        self.debounce_s = debounce_s
        self.changed_at: float | None = None   # a change not yet sent
        self.frames: dict[str, Frame] = {}     # job id -> frame, while in flight
        self.number = 0
        self.shown: Frame | None = None
        self.pending: tuple[Frame, Any] | None = None   # a result waiting to be drawn
        self.error: str | None = None
        self.counts = collections.Counter()    # sent, finished, superseded, failed, shown
        self.peak = {JobState.QUEUED: 0, JobState.RUNNING: 0}   # most frames at once

    # ---- scene side ---------------------------------------------------------------------
    def touch(self) -> None:
        """The scene changed: a frame is due once it has been quiet for the debounce."""
        self.changed_at = self.clock()
        self.counts["changes"] += 1

    def due(self) -> bool:
        return (self.changed_at is not None
                and self.clock() - self.changed_at >= self.debounce_s)

    def sent(self, job_id: str, capture_ms: float = 0.0) -> Frame:
        self.number += 1
        frame = Frame(self.number, job_id, self.changed_at or self.clock(), self.clock(),
                      capture_ms)
        self.frames[job_id] = frame
        self.changed_at = None
        self.counts["sent"] += 1
        return frame

    def in_flight(self) -> list[str]:
        return list(self.frames)

    def stop(self) -> list[str]:
        """Forget everything in flight; returns the job ids to cancel on the engine."""
        ids = list(self.frames)
        self.frames.clear()
        self.changed_at = None
        self.pending = None
        return ids

    # ---- engine side --------------------------------------------------------------------
    def handle(self, event) -> bool:
        """One client event; True if it was about a live frame."""
        frame = self.frames.get(getattr(event, "job_id", None) or "")
        if frame is None:
            return False
        kind = event.kind
        data = getattr(event, "data", None) or {}
        if kind == "accepted" and frame.phase == JobState.PENDING:
            frame.phase = JobState.QUEUED
        elif kind == "started":
            frame.phase, frame.started_at = JobState.RUNNING, self.clock()
        elif kind == "result":
            del self.frames[frame.job_id]
            self.counts["finished"] += 1
            timings = data.get("timings") or {}
            gen = timings.get("generate_ms")
            frame.compute_ms = float(gen) if isinstance(gen, (int, float)) else None
            images = list(getattr(event, "images", None) or [])
            if images and (self.shown is None or frame.number > self.shown.number) and (
                    self.pending is None or frame.number > self.pending[0].number):
                self.pending = (frame, images[0])
        elif kind == "cancelled":
            del self.frames[frame.job_id]
            self.counts["superseded" if data.get("reason") == "superseded"
                        else "cancelled"] += 1
        elif kind == "error":
            del self.frames[frame.job_id]
            self.counts["failed"] += 1
            self.error = str(data.get("message") or data.get("code") or "error")[:300]
        self._note_peak()
        return True

    def take(self) -> tuple[Frame, Any] | None:
        """The newest finished frame not drawn yet (once)."""
        item, self.pending = self.pending, None
        if item is not None:
            self.shown = item[0]
            self.counts["shown"] += 1
        return item

    def _note_peak(self) -> None:
        for phase in (JobState.QUEUED, JobState.RUNNING):
            n = sum(1 for f in self.frames.values() if f.phase == phase)
            self.peak[phase] = max(self.peak[phase], n)


def live_size(aspect: float, long_side: int, min_side: int = 64, max_side: int = 2048,
              multiple: int = 16) -> tuple[int, int]:
    """width x height for a live frame: `long_side` on the long side, the camera's aspect,
    both multiples of `multiple` inside the engine's side limits."""
    if not (aspect > 0 and aspect < float("inf")):
        aspect = 1.0
    long_side = max(min_side, min(int(long_side), max_side))
    short = max(min_side, min(max_side, int(round(long_side / max(aspect, 1 / aspect)
                                                  / multiple)) * multiple))
    long_side = long_side // multiple * multiple
    return (long_side, short) if aspect >= 1.0 else (short, long_side)
