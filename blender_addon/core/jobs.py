"""Job state: client events in, state changes and effects out. Main thread only, no bpy.

One job in flight per slot (a slot is a button: "texture", "concept"). Cancel is immediate
in the UI: the job is marked cancelled at once and every later event for its id is ignored,
whatever the engine still sends. A dropped connection fails the jobs in flight ("engine
lost"), so nothing arrives half-way later. `tick()` fails a job that never reached the
engine (engine not running) after `connect_timeout` seconds of the injected clock.

A job's `phase` is the protocol's JobState (protocol/messages.py), the one vocabulary of the
engine, the client library and the host apps: PENDING while the add-on is sending it (not
yet accepted), then QUEUED, RUNNING and a terminal state. "Applying" a result is the glue's
work on a RUNNING job, shown in the message, not a state of its own. The texts the panels
show ("Sending", "Queued", "Done") are the job's `message`, not its state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import UserError, code_for_engine_error, engine_error_detail, explain

try:        # the built add-on (and the Krita plugin) carry protocol/ as vendor/protocol/
    from ..vendor.protocol.messages import JobState
except ImportError:     # running from the checkout (tests)
    from protocol.messages import JobState

STAGE_LABELS = {"encode_text": "Reading prompt", "denoise": "Denoising",
                "decode": "Decoding", "encode_image": "Encoding image"}


@dataclass
class Job:
    slot: str
    job_id: str
    params: dict
    context: dict = field(default_factory=dict)     # glue data: target object, placement ...
    phase: JobState = JobState.PENDING
    stage: str = ""
    step: int = 0
    steps: int = 0
    fraction: float = 0.0        # overall progress 0..1, as the engine reports it
    message: str = "Sending"
    error: UserError | None = None
    started: float = 0.0
    finished: float | None = None
    preview: Any = None          # latest preview ImageData
    preview_version: int = 0
    images: list = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not self.phase.terminal

    @property
    def seed(self) -> int | None:
        return self.params.get("seed")

    @property
    def progress(self) -> float:
        if self.phase == JobState.SUCCEEDED:
            return 1.0
        return self.fraction   # the engine owns the stage shares (engine/server.py)

    def status_text(self) -> str:
        if self.phase == JobState.RUNNING and self.stage:
            label = STAGE_LABELS.get(self.stage, self.stage.replace("_", " ").capitalize())
            if self.stage == "denoise" and self.steps:
                return f"{label} {self.step}/{self.steps}"
            return label
        return self.message


@dataclass
class Effect:
    kind: str          # "preview" | "result" | "failed" | "cancelled"
    job: Job


class JobBoard:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = 8.0):
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.jobs: dict[str, Job] = {}           # latest job of each slot
        self._by_id: dict[str, Job] = {}         # jobs in flight
        self.connection = "disconnected"
        self.welcome: dict | None = None
        self.last_error: UserError | None = None

    # ---- queries ----------------------------------------------------------------------
    def active(self, slot: str) -> Job | None:
        job = self.jobs.get(slot)
        return job if job is not None and job.active else None

    def can_submit(self, slot: str) -> bool:
        return self.active(slot) is None

    @property
    def busy(self) -> bool:
        return bool(self._by_id)

    def snapshot(self) -> tuple:
        """Everything the panels draw; the pump redraws only when this changes."""
        rows = tuple((j.slot, j.job_id, j.phase, j.stage, j.step, j.steps, j.message,
                      j.preview_version, j.error.code if j.error else None)
                     for j in sorted(self.jobs.values(), key=lambda j: j.slot))
        return (self.connection, bool(self.welcome), rows,
                self.last_error.code if self.last_error else None)

    # ---- main-thread actions ----------------------------------------------------------
    def submit(self, slot: str, job_id: str, params: dict, context: dict | None = None
               ) -> Job:
        if not self.can_submit(slot):
            raise RuntimeError(f"a {slot} job is already running")
        job = Job(slot, job_id, dict(params), dict(context or {}), started=self.clock())
        self.jobs[slot] = job
        self._by_id[job_id] = job
        self.last_error = None
        return job

    def cancel(self, slot: str) -> str | None:
        """Mark the slot's job cancelled now; returns the engine job id to cancel."""
        job = self.active(slot)
        if job is None:
            return None
        self._finish(job, JobState.CANCELLED, "Cancelled")
        return job.job_id

    def fail(self, job: Job, code: str, detail: str | None = None) -> Effect:
        """Fail a job from the add-on side (capture or apply failed, engine lost ...)."""
        job.error = explain(code, detail)
        self.last_error = job.error
        self._finish(job, JobState.FAILED, job.error.message)
        return Effect("failed", job)

    def complete(self, job: Job) -> None:
        """The glue applied the result."""
        self._finish(job, JobState.SUCCEEDED, "Done")

    # ---- events -----------------------------------------------------------------------
    def handle(self, event) -> list[Effect]:
        kind = getattr(event, "kind", None)
        data = getattr(event, "data", None) or {}
        if kind in ("connected", "welcome", "disconnected"):
            return self._connection_event(kind, data)
        job = self._by_id.get(getattr(event, "job_id", None) or "")
        if job is None:
            return []            # not ours, finished, or cancelled in the UI: ignore
        if kind == "accepted":
            if job.phase == JobState.PENDING:
                job.phase, job.message = JobState.QUEUED, "Queued"
        elif kind == "queued":
            pos = data.get("position")
            job.phase = JobState.QUEUED
            job.message = f"Queued (position {pos})" if isinstance(pos, int) else "Queued"
        elif kind == "started":
            job.phase, job.message = JobState.RUNNING, "Running"
        elif kind == "progress":
            job.phase = JobState.RUNNING
            job.stage = str(data.get("stage") or job.stage)
            job.step = _int(data.get("step"), job.step)
            job.steps = _int(data.get("steps"), job.steps or int(job.params.get("steps", 0)))
            frac = data.get("fraction")
            if isinstance(frac, (int, float)) and not isinstance(frac, bool) and \
                    0.0 <= frac <= 1.0:
                job.fraction = max(job.fraction, float(frac))   # monotonic (PROTOCOL.md §5)
        elif kind == "preview":
            images = getattr(event, "images", None) or []
            if images:
                job.preview = images[0]
                job.preview_version += 1
                job.phase = JobState.RUNNING
                if "step" in data:
                    job.step = _int(data.get("step"), job.step)
                return [Effect("preview", job)]
        elif kind == "result":
            images = list(getattr(event, "images", None) or [])
            if not images:
                return [self.fail(job, "internal_error", "the result had no images")]
            job.images = images
            job.stage, job.step = "decode", job.steps
            job.message = "Applying"
            self._by_id.pop(job.job_id, None)   # no more events; the glue completes or fails
            return [Effect("result", job)]
        elif kind == "cancelled":
            self._finish(job, JobState.CANCELLED, "Cancelled by the engine")
            return [Effect("cancelled", job)]
        elif kind == "error":
            return [self.fail(job, code_for_engine_error(data), engine_error_detail(data))]
        return []

    def tick(self) -> list[Effect]:
        """Time-based checks: a job that never reached a running engine fails."""
        out = []
        now = self.clock()
        for job in list(self._by_id.values()):
            if (job.phase == JobState.PENDING and self.connection != "connected"
                    and now - job.started > self.connect_timeout):
                out.append(self.fail(job, "engine_unreachable"))
        return out

    # ---- internals --------------------------------------------------------------------
    def _connection_event(self, kind: str, data: dict) -> list[Effect]:
        if kind == "welcome":
            self.connection = "connected"
            self.welcome = dict(data)
            return []
        if kind == "connected":
            self.connection = "connected"
            return []
        self.connection = "disconnected"
        out = []
        for job in list(self._by_id.values()):
            if job.phase != JobState.PENDING:        # it had reached the engine: lost mid-job
                out.append(self.fail(job, "engine_lost"))
        return out

    def _finish(self, job: Job, phase: JobState, message: str) -> None:
        job.phase, job.message = phase, message
        job.finished = self.clock()
        self._by_id.pop(job.job_id, None)


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
