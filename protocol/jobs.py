"""Job tracking for EngineClient: what each engine event means for a job the client
submitted (state, seq, terminal once), snapshots after a reconnect, local errors. The I/O
loop (client.py) feeds it; it sends only through `_send` / `_send_hello`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import CODES, ProtocolError
from .events import Event, _image_from
from .messages import JobState, validate_event
from .wire import split_frames


@dataclass(eq=False)
class _Job:
    id: str
    header: dict
    blobs: list
    submitted: float
    deadline_s: float
    state: JobState = JobState.PENDING   # pending -> queued -> running -> terminal
    sent_at: float | None = None
    retry_at: float = 0.0
    epoch: str | None = None
    last_seq: int = 0
    last_event: float = 0.0
    terminal: bool = False



class JobTracking:
    """Mixed into EngineClient: the job-state side (runs on the client's I/O thread, except
    _emit, which also serves poll() under the condition lock)."""

    def _emit(self, kind: str, job_id=None, data=None, images=None) -> None:
        ev = Event(kind, job_id, data or {}, images or [])
        with self._ev_cond:
            if len(self._events) >= self._max_events:
                # drop the oldest droppable event; keep state events
                for i, old in enumerate(self._events):
                    if old.kind in ("progress", "preview", "queued"):
                        del self._events[i]
                        break
                else:
                    self._events.popleft()
            self._events.append(ev)
            self._ev_cond.notify_all()

    def _job_end(self, job: _Job, kind: str, data: dict, images=None) -> None:
        if job.terminal:
            return
        job.terminal = True
        job.state = {"result": "succeeded", "cancelled": "cancelled"}.get(kind, "failed")
        self._emit(kind, job.id, data, images)
        # keep a bounded memory of finished jobs (for de-duplication)
        if len(self._jobs) > 4096:
            for jid in [j for j, v in self._jobs.items() if v.terminal][:1024]:
                del self._jobs[jid]

    def _local_error(self, job: _Job, code: str, message: str, **extra) -> None:
        self._job_end(job, "error", {"code": code, "message": message,
                                     "retryable": CODES[code], "local": True, **extra})

    def _on_message(self, frames) -> None:
        try:
            header, blobs = split_frames([f.bytes for f in frames], max_header_bytes=1 << 20,
                                         max_depth=16)
            validate_event(header, blobs)
        except ProtocolError:
            return  # not from a v1 engine; ignore
        now = time.monotonic()
        self._last_rx = now
        kind = header["type"]
        if kind == "welcome":
            self._on_welcome(header, now)
            return
        if not self._welcomed:
            # traffic from an engine we have not (re)greeted: e.g. it resumed after a freeze
            if now - self._hello_at > 0.2:
                self._send_hello(now)
            if kind not in ("result", "cancelled", "error", "progress", "preview", "started",
                            "accepted", "queued", "result_ready", "jobs"):
                return
        epoch = header.get("epoch")
        if self.epoch is not None and epoch is not None and epoch != self.epoch:
            self._welcomed = False
            self._send_hello(now)
            return
        jid = header.get("job_id")
        job = self._jobs.get(jid) if jid else None
        if job is not None:
            job.last_event = now
        if kind == "pong":
            return
        if kind == "unloaded":
            self._emit("unloaded", None, {k: header.get(k) for k in ("freed_bytes", "note")})
            return
        if kind == "jobs":
            self._on_snapshots(header.get("jobs") or [])
            return
        if kind == "shutting_down":
            self._set_disconnected("shutting_down", "the engine is shutting down")
            return
        if kind == "error":
            self._on_error(header, job)
            return
        if job is None or job.terminal:
            return
        seq = header.get("seq") if isinstance(header.get("seq"), int) else 0
        if kind in ("accepted", "started"):
            if seq and seq <= job.last_seq:
                return
            job.last_seq = max(job.last_seq, seq)
            if kind == "accepted":
                job.state = (JobState.RUNNING if header.get("state") == JobState.RUNNING
                             else JobState.QUEUED)
                self._emit("accepted", jid, {k: header.get(k) for k in
                                             ("position", "seed", "duplicate") if k in header})
            else:
                job.state = JobState.RUNNING
                self._emit("started", jid, {"steps": header.get("steps"),
                                            "queue_ms": header.get("queue_ms")})
        elif kind == "queued":
            self._emit("queued", jid, {"position": header.get("position")})
        elif kind == "progress":
            if job.state == JobState.QUEUED:
                job.state = JobState.RUNNING
            self._emit("progress", jid, {k: header.get(k) for k in
                                         ("stage", "step", "steps", "fraction", "eta_ms")})
        elif kind == "preview":
            d = (header.get("blobs") or [{}])[0]
            images = [_image_from(d, blobs[0])] if blobs else []
            self._emit("preview", jid, {"step": header.get("step"), "steps": header.get("steps")},
                       images)
        elif kind == "result":
            descs = header.get("blobs") or []
            seeds = header.get("seeds") or []
            images = [_image_from(d, b, seeds[i] if i < len(seeds) else None)
                      for i, (d, b) in enumerate(zip(descs, blobs))]
            job.last_seq = max(job.last_seq, seq)
            self._job_end(job, "result", {"seeds": seeds, "timings": header.get("timings", {}),
                                          "params": header.get("params", {}), "seq": seq},
                          images)
        elif kind == "result_ready":
            self._send({"type": "fetch", "job_id": jid}, track_as=("fetch", jid))
        elif kind == "cancelled":
            self._job_end(job, "cancelled", {"at_step": header.get("at_step"),
                                             "reason": header.get("reason")})

    def _on_error(self, header: dict, job: _Job | None) -> None:
        code = header.get("code") if header.get("code") in CODES else "internal_error"
        data = {"code": code, "message": str(header.get("message", ""))[:500],
                "retryable": CODES[code], "field": header.get("field"),
                "retry_after_ms": header.get("retry_after_ms")}
        req_type, _ = self._requests.pop(header.get("re"), (None, None))
        jid = header.get("job_id")
        if code == "session_unknown":
            self._welcomed = False
            self._send_hello(time.monotonic())
            if job is not None and job.state == JobState.PENDING:
                job.sent_at = None
            return
        if jid is None and code in ("unsupported_version", "unauthorized"):
            # the engine refuses this client: say so once, retry hello only slowly
            self._auth_failed = True
            self._set_disconnected(code, data["message"])
            return
        if job is None or job.terminal:
            self._emit("error", jid, data)   # e.g. forbidden cancel of another session's job
            return
        if code == "model_loading" and req_type == "submit":
            job.sent_at = None
            job.retry_at = time.monotonic() + max(0.1, (header.get("retry_after_ms") or 1000)
                                                  / 1000)
            self._emit("queued", jid, {"position": None, "waiting": "model_loading"})
            return
        terminal = ("seq" in header or req_type == "submit"
                    or (req_type in ("fetch", "cancel")
                        and code in ("unknown_job", "result_expired")))
        if terminal:
            self._job_end(job, "error", data)
        elif code != "not_finished":
            self._emit("error", jid, data)

    WELCOME_KEYS = ("version", "engine", "caps", "limits", "epoch", "heartbeat_ms", "session",
                    "loras")

    @classmethod
    def _welcome_event(cls, header: dict) -> dict:
        """What a `welcome` event carries to the host app (loras only when the engine lists
        them, so hosts can tell an engine without LoRAs from one with none)."""
        return {k: header.get(k) for k in cls.WELCOME_KEYS if k != "loras" or k in header}

    def _on_welcome(self, header: dict, now: float) -> None:
        if self._welcomed and header.get("epoch") == self.epoch and "re" not in header:
            # unsolicited update (e.g. the model finished loading): new caps/state only
            self.welcome = header
            self._emit("welcome", None, self._welcome_event(header))
            return
        old_epoch = self.epoch
        self.epoch = header.get("epoch")
        self.welcome = header
        self._welcomed = True
        self._last_ping = now
        reconnected = self._disconnected_at is not None or old_epoch is not None
        self.state = "connected"
        self._disconnected_at = None
        self._emit("connected", None, {"endpoint": self.endpoint, "epoch": self.epoch,
                                       "reconnected": reconnected,
                                       "engine_restarted": bool(old_epoch and
                                                                old_epoch != self.epoch)})
        self._emit("welcome", None, self._welcome_event(header))
        if old_epoch is not None and old_epoch != self.epoch:
            for job in list(self._jobs.values()):
                if not job.terminal and job.state != JobState.PENDING:
                    self._local_error(job, "engine_crashed", "the engine restarted and lost "
                                      "this job; submit it again")
        else:
            self._on_snapshots(header.get("jobs") or [])
        self._last_problem = None
        for job in list(self._jobs.values()):
            if not job.terminal and job.state == JobState.PENDING:
                self._send_submit(job, now)

    def _on_snapshots(self, snaps: list) -> None:
        for snap in snaps:
            if not isinstance(snap, dict):
                continue
            job = self._jobs.get(snap.get("job_id"))
            if job is None or job.terminal:
                continue
            state = snap.get("state")
            job.last_event = time.monotonic()
            if state == "succeeded":
                self._send({"type": "fetch", "job_id": job.id}, track_as=("fetch", job.id))
            elif state == "cancelled":
                self._job_end(job, "cancelled", {"at_step": snap.get("at_step")})
            elif state == "failed":
                err = snap.get("error") or {}
                code = err.get("code") if err.get("code") in CODES else "internal_error"
                self._job_end(job, "error", {"code": code, "message": err.get("message", ""),
                                             "retryable": CODES[code]})
            elif state == JobState.RUNNING:
                job.state = JobState.RUNNING
            elif state in ("unknown", "expired", "forbidden") and job.state != JobState.PENDING:
                code = {"unknown": "unknown_job", "expired": "result_expired",
                        "forbidden": "forbidden"}[state]
                self._local_error(job, code, f"the engine reports this job as {state}")

