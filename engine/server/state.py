"""The engine's state machine, without sockets: it answers each parsed message, picks the
next job (fair-queue order, one at a time), ends jobs and turns the worker's events into
messages. Socket-free and clock-injected, so it is unit-tested directly
(tests/engine/test_server_state.py); `loop.EngineServer` feeds it parsed messages and gives
it `_transmit` (one non-blocking send).

The bookkeeping lives in parts it holds, each with its own unit tests:
    sessions     Sessions (sessions.py): who is connected, per-peer limits, detach and grace
    queue        FairQueue (fair_queue.py): per-session lines, served round robin
    jobs         JobStore (jobs.py): every job by id; finished ones bounded, evicted ids kept
    gate         TokenGate (trust.py): the local token
    s.outbox     Outbox (outbox.py): one session's events held for a slow peer

Bounds (protocol/PROTOCOL.md §5, §7): sessions in total and per peer, queued jobs per session
and in total, input bytes, finished jobs by TTL, count (total and per session) and bytes
(results + params), undelivered events per session (terminal ones are kept), waiting unloads.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable

import engine
from protocol import PROTOCOL_VERSION
from protocol.errors import CODES
from protocol.messages import (DEFAULT_LIMITS, SUPERSEDED, JobState, Limits,
                               required_capabilities)
from protocol.request import GenerateRequest
from protocol.wire import SIGNATURE, encode_header

from .fair_queue import FairQueue
from .jobs import Job, JobStore
from .outbox import Outbox, result_ready
from .sessions import Session, Sessions
from .trust import TokenGate

log = logging.getLogger("engine.server")


class PeerBusy(Exception):
    """The peer's queue is full (EAGAIN): hold state events, drop droppable ones."""


class PeerGone(Exception):
    """The peer is not connected any more (EHOSTUNREACH)."""


class EngineState:
    """All state of one engine; every method runs on the I/O thread."""

    def __init__(self, pipeline=None, *, limits: Limits | None = None,
                 session_timeout_s: float = 15.0, detach_grace_s: float = 30.0,
                 ping_interval_ms: int = 2000, max_sessions: int = 1024,
                 max_sessions_per_peer: int = 16, max_outbox: int = 1000,
                 token: str | None = None, curve: bool = False, name: str = "zimage-engine",
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.pipeline = pipeline
        self.limits = limits or Limits(**DEFAULT_LIMITS.to_dict())
        self.curve = curve            # sessions and jobs are bound to the CURVE key
        self.ping_interval_ms = ping_interval_ms
        self.max_outbox = max_outbox
        self._unload_waiters: list[tuple[str, Any]] | None = None   # one unload at a time
        self.name = name
        self.epoch = uuid.uuid4().hex[:16]
        self.model_state = "ready" if pipeline is not None else "loading"
        self.model_error: str | None = None
        self.download: dict | None = None   # the model download while loading (engine.download)
        self._lora_check_at = 0.0
        self._loras_listed: list | None = None   # what the last welcomes listed

        self.sessions = Sessions(max_total=max_sessions, max_per_peer=max_sessions_per_peer,
                                 timeout_s=session_timeout_s, grace_s=detach_grace_s,
                                 clock=clock)
        self.gate = TokenGate(token, max_routes=4 * max_sessions)
        self.jobs = JobStore(self.limits)
        self.queue = FairQueue()
        self._input_bytes = 0
        self._running: Job | None = None
        self._avg_job_s = 1.0
        self._last_queued_note = 0.0
        self.counters = collections.Counter()
        self._events: queue.Queue = queue.Queue()   # worker/encoder -> I/O thread
        self._work: queue.Queue = queue.Queue()     # I/O thread -> worker
        self._stop = threading.Event()

    def _transmit(self, frames: list, copy: bool = True) -> None:
        """Send one message without blocking; raise PeerBusy or PeerGone. The loop's job."""
        raise NotImplementedError

    def _frames(self, route: bytes, header: dict, blobs=()) -> list:
        header.setdefault("epoch", self.epoch)
        header["ts"] = round(time.time(), 3)
        return [route, SIGNATURE, encode_header(header), *blobs]

    def _send_route(self, route: bytes, header: dict) -> None:
        """Reply to a peer that has no (valid) session: best effort."""
        try:
            self._transmit(self._frames(route, header))
        except (PeerBusy, PeerGone):
            pass

    def _send(self, session: Session | None, header: dict, blobs=(), kind: str = "state"
              ) -> bool:
        """kind: state (must arrive: queued in the session outbox on EAGAIN), droppable
        (queued/progress/preview: dropped when the peer is slow), result (large: on EAGAIN a
        small result_ready goes to the outbox instead)."""
        if session is None or not session.attached:
            return False
        if session.outbox:
            if kind == "state":
                self._hold(session, header)
            elif kind == "result":
                self._hold(session, result_ready(header))
            return False
        frames = self._frames(session.route, header, blobs)
        try:
            self._transmit(frames, copy=bool(not blobs))
            self.counters["sent_" + header["type"]] += 1
            return True
        except PeerBusy:
            if kind == "state":
                self._hold(session, header)
            elif kind == "result":
                self._hold(session, result_ready(header))
            else:
                self.counters["dropped_" + header["type"]] += 1
        except PeerGone:
            self.sessions.detach(session, "peer unreachable")
        return False

    def _hold(self, s: Session, header: dict) -> None:
        """Hold a state event for a slow peer (see outbox.py)."""
        if s.outbox.hold(header, lambda jid: self._snapshot(jid, s.id)):
            self.counters["outbox_compactions"] += 1

    def _flush_outboxes(self) -> None:
        for s in list(self.sessions.values()):
            while s.outbox and s.attached:
                try:
                    self._transmit(self._frames(s.route, dict(s.outbox.first())))
                    s.outbox.pop_first()
                except PeerBusy:
                    break
                except PeerGone:
                    self.sessions.detach(s, "peer unreachable")

    def _error(self, session: Session | None, route: bytes, code: str, message: str, *,
               job_id=None, re=None, field=None, retry_after_ms=None, seq=None) -> None:
        h = {"type": "error", "job_id": job_id, "code": code, "message": message,
             "retryable": CODES.get(code, False), "field": field,
             "retry_after_ms": retry_after_ms}
        if re is not None:
            h["re"] = re
        if seq is not None:
            h["seq"] = seq
        if session is not None and session.attached and session.route == route:
            self._send(session, h, kind="state")
        else:
            self._send_route(route, h)


    def _handle(self, route: bytes, user_id: str | None, msg: dict) -> None:
        kind, sid, mid = msg["type"], msg["session"], msg["msg_id"]
        now = self.clock()
        if kind == "hello":
            self._on_hello(route, user_id, msg, now)
            return
        if not self.gate.lets_in(route):
            if kind != "bye":
                self._error(None, route, "unauthorized", "this connection has not presented "
                            "the engine's token: send hello with `token` first", re=mid,
                            job_id=msg.get("job_id"))
            return
        s = self.sessions.get(sid)
        if s is None:
            if kind != "bye":
                self._error(None, route, "session_unknown", "send hello first (the engine does "
                            "not know this session; it may have restarted)", re=mid,
                            job_id=msg.get("job_id"))
            return
        if self.curve and s.user_id != user_id:
            self._error(None, route, "unauthorized", "session belongs to another key", re=mid)
            return
        self.sessions.attach(s, route, now)
        if kind == "ping":
            self._send(s, {"type": "pong", "re": mid, "queue_len": len(self.queue),
                           "running": self._running.id if self._running and
                           self._running.session_id == sid else None,
                           "busy": self._running is not None, "model_state": self.model_state},
                       kind="state")
        elif kind == "submit":
            self._on_submit(s, msg, now)
        elif kind == "cancel":
            self._on_cancel(s, msg)
        elif kind == "status":
            ids = msg["job_ids"]
            if ids is None:
                ids = sorted(self.jobs.ids_of(sid))
            self._send(s, {"type": "jobs", "re": mid,
                           "jobs": [self._snapshot(j, sid) for j in ids[:256]]})
        elif kind == "fetch":
            self._on_fetch(s, msg)
        elif kind == "unload":
            if self.pipeline is None or not hasattr(self.pipeline, "unload"):
                self._error(s, route, "capability_unavailable", "this engine cannot unload "
                            "its models (no 'unload' capability)", re=mid)
            elif self._unload_waiters is not None:   # one is pending: answer this one too
                if len(self._unload_waiters) < 64 and (s.id, mid) not in self._unload_waiters:
                    self._unload_waiters.append((s.id, mid))
                self.counters["unload_coalesced"] += 1
            else:  # the worker does it between jobs, so a running job is never disturbed
                self._unload_waiters = [(s.id, mid)]
                self._work.put(("unload", None))
        elif kind == "bye":
            self._drop_queued(s, "client said bye")
            self.sessions.detach(s, "bye")

    def _on_hello(self, route: bytes, user_id, msg: dict, now: float) -> None:
        mid = msg["msg_id"]
        if not self.gate.check(route, msg.get("token")):
            self.counters["refused_token"] += 1
            self._error(None, route, "unauthorized", "wrong or missing token: this engine "
                        "only serves clients that read its connection file", re=mid,
                        field="token")
            return
        if PROTOCOL_VERSION not in msg["versions"]:
            self._send_route(route, {"type": "error", "job_id": None, "re": mid,
                                     "code": "unsupported_version", "retryable": False,
                                     "message": f"engine speaks protocol {PROTOCOL_VERSION}, "
                                     f"client offers {msg['versions']}",
                                     "versions": [PROTOCOL_VERSION]})
            return
        s = self.sessions.get(msg["session"])
        if s is not None:
            if self.curve and s.user_id != user_id:
                self._error(None, route, "unauthorized", "session belongs to another key",
                            re=mid)
                return
            self.sessions.attach(s, route, now)
            s.client, s.caps = msg["client"], msg["caps"]
        else:
            mine = self.sessions.of_peer(route, user_id)
            if len(mine) >= self.sessions.max_per_peer and not self._evict_session(mine):
                self._error(None, route, "queue_full", f"this connection already has "
                            f"{len(mine)} sessions with queued jobs (limit "
                            f"{self.sessions.max_per_peer})", re=mid, retry_after_ms=5000)
                return
            if len(self.sessions) >= self.sessions.max_total and not self._evict_session():
                self._error(None, route, "queue_full", "too many client sessions",
                            re=mid, retry_after_ms=5000)
                return
            s = Session(msg["session"], route, user_id, msg["client"], msg["caps"], now,
                        outbox=Outbox(self.max_outbox))
            self.sessions.add(s)
            log.info("session %s hello from %s", s.id[:8], msg["client"].get("name", "?"))
        self._send(s, self._welcome(s, mid, msg["resume_jobs"]))

    def _welcome(self, s: Session, mid, resume_jobs: list) -> dict:
        info = self._pipe_info()
        caps = list(info.get("capabilities", [])) + ["result.raw", "result.png", "preview.jpeg",
                                                     "live"]
        if self.pipeline is not None and hasattr(self.pipeline, "unload"):
            caps.append("unload")
        h = {"type": "welcome", "version": PROTOCOL_VERSION, "session": s.id,
             "engine": {"name": self.name, "version": engine.__version__,
                        "model": info.get("model"), "device": info.get("device"),
                        "dtype": info.get("dtype"), "state": self.model_state,
                        "error": self.model_error,
                        **({"download": self.download}
                           if self.download and self.model_state == "loading" else {})},
             "caps": caps, "limits": self.limits.to_dict(),
             "loras": info.get("loras", []),
             "heartbeat_ms": self.ping_interval_ms,
             "jobs": [self._snapshot(j, s.id) for j in resume_jobs]}
        if mid is not None:
            h["re"] = mid
        return h

    def _welcome_all(self) -> None:
        """An unsolicited welcome to every attached client: the model, its state or the
        LoRA list changed."""
        for s in list(self.sessions.values()):
            if s.attached:
                self._send(s, self._welcome(s, None, []))

    def _idle(self, s: Session) -> bool:
        """No queued and no running job: the session may be forgotten."""
        r = self._running
        return not self.queue.of(s.id) and not (r and r.session_id == s.id)

    def _evict_session(self, among: list | None = None) -> bool:
        if not self.sessions.evict_idle(self._idle, among):
            return False
        self.counters["sessions_evicted"] += 1
        return True

    def _pipe_info(self) -> dict:
        if self.pipeline is None:
            return {"capabilities": []}
        try:
            return dict(self.pipeline.info)
        except Exception:
            return {"capabilities": []}

    # ---- jobs -----------------------------------------------------------------------------

    def _on_submit(self, s: Session, msg: dict, now: float) -> None:
        mid, jid = msg["msg_id"], msg["job_id"]
        fp = hashlib.sha256(json.dumps([msg["params"], msg["want"], msg["blobs"]],
                                       sort_keys=True).encode("utf-8")).hexdigest()
        old = self.jobs.get(jid)
        if old is not None:
            if old.session_id != s.id or old.fingerprint != fp:
                self._error(s, s.route, "duplicate_job", "this job id was already used with "
                            "other parameters or by another session", job_id=jid, re=mid,
                            field="job_id")
            elif old.state in (JobState.QUEUED, JobState.RUNNING):
                self._send(s, {"type": "accepted", "job_id": jid, "re": mid, "seq": old.seq,
                               "position": self.queue.position(old), "state": old.state,
                               "duplicate": True})
            else:
                self._resend_terminal(s, old, mid)
            return
        if self.jobs.evicted(jid):
            self._error(s, s.route, "duplicate_job", "this job id was already used",
                        job_id=jid, re=mid, field="job_id")
            return
        if self._stop.is_set():
            self._error(s, s.route, "shutting_down", "engine is shutting down", job_id=jid,
                        re=mid, retry_after_ms=5000)
            return
        if self.model_state == "loading":
            self._error(s, s.route, "model_loading", "the model is still loading", job_id=jid,
                        re=mid, retry_after_ms=1000)
            return
        if self.model_state == "failed":
            self._error(s, s.route, "model_unavailable", self.model_error or "model failed "
                        "to load", job_id=jid, re=mid)
            return
        have = set(self._pipe_info().get("capabilities", []))
        for key, caps in required_capabilities(msg["params"]):
            if not have.intersection(caps):
                self._error(s, s.route, "capability_unavailable",
                            f"this engine cannot do {caps[0]} (it offers "
                            f"{', '.join(sorted(have))})", job_id=jid, re=mid,
                            field=f"params.{key}")
                return
        if msg.get("live") is not None:
            self._supersede(s, msg["live"])
        retry = max(200, int(self._avg_job_s * 1000))
        queued = len(self.queue.of(s.id))
        if queued >= self.limits.max_queue_per_session:
            self._error(s, s.route, "queue_full", f"this session already has {queued} "
                        "queued jobs", job_id=jid, re=mid, retry_after_ms=retry)
            return
        in_bytes = sum(len(b) for b in msg["_raw_blobs"])
        if in_bytes and self._input_bytes + in_bytes > self.limits.max_input_bytes:
            self._error(s, s.route, "queue_full", "too many input images are waiting",
                        job_id=jid, re=mid, retry_after_ms=retry)
            return
        if len(self.queue) >= self.limits.max_queue:
            self._error(s, s.route, "queue_full", f"the engine queue is full ({len(self.queue)} "
                        "jobs)", job_id=jid, re=mid, retry_after_ms=retry)
            return
        req = GenerateRequest.from_clean(msg["params"]).with_seed()
        params = req.to_params()
        job = Job(jid, s.id, s.user_id, params, msg["want"], msg["blobs"], msg["_raw_blobs"],
                  fp, now, now + msg["deadline_ms"] / 1000.0, msg["priority"],
                  live=msg.get("live"))
        job.steps = params["steps"]
        self.jobs.add(job)
        self._input_bytes += in_bytes
        self.queue.push(job)
        job.seq = 1
        self._send(s, {"type": "accepted", "job_id": jid, "re": mid, "seq": job.seq,
                       "position": self.queue.position(job), "state": JobState.QUEUED,
                       "seed": params["seed"]})

    def _snapshot(self, jid: str, sid: str) -> dict:
        job = self.jobs.get(jid)
        if job is None:
            state = "expired" if self.jobs.evicted(jid) else "unknown"
            return {"job_id": jid, "state": state}
        if job.session_id != sid:
            return {"job_id": jid, "state": "forbidden"}
        snap = {"job_id": jid, "state": job.state, "seq": job.seq, "step": job.step,
                "steps": job.steps}
        if job.state == JobState.QUEUED:
            snap["position"] = self.queue.position(job)
        if job.state == JobState.CANCELLED:
            snap["at_step"] = job.at_step
        if job.error:
            snap["error"] = job.error
        if job.state == JobState.SUCCEEDED:
            snap["has_result"] = job.result_header is not None
        return snap

    def _owned(self, s: Session, jid: str, mid) -> Job | None:
        job = self.jobs.get(jid)
        if job is None:
            if self.jobs.evicted(jid):
                self._error(s, s.route, "result_expired", "the result of this job was "
                            "evicted", job_id=jid, re=mid)
            else:
                self._error(s, s.route, "unknown_job", "no such job on this engine (it may "
                            "have restarted)", job_id=jid, re=mid)
            return None
        if job.session_id != s.id or (self.curve and job.user_id != s.user_id):
            self._error(s, s.route, "forbidden", "this job belongs to another session",
                        job_id=jid, re=mid)
            return None
        return job

    def _on_cancel(self, s: Session, msg: dict) -> None:
        mid = msg["msg_id"]
        if msg["all"]:
            targets = [self.jobs[j] for j in self.jobs.ids_of(s.id)
                       if self.jobs[j].state in (JobState.QUEUED, JobState.RUNNING)]
        else:
            job = self._owned(s, msg["job_id"], mid)
            if job is None:
                return
            targets = [job]
        for job in targets:
            if job.state == JobState.QUEUED:
                self._cancel_queued(job, None)
            elif job.state == JobState.RUNNING:
                job.cancel_reason = "client"
                job.cancel_event.set()
            elif not msg["all"]:
                self._send(s, {"type": "jobs", "re": mid, "jobs": [self._snapshot(job.id,
                                                                                   s.id)]})

    def _supersede(self, s: Session, live: str) -> None:
        """Newest frame wins: this session's queued jobs with the same live key are dropped
        at once, its running one stops at the next step boundary (`cancelled`, reason
        `superseded`). Only the submitting session's own jobs are looked at."""
        for job in [j for j in self.queue.of(s.id) if j.live == live]:
            self._cancel_queued(job, SUPERSEDED)
            self.counters["superseded"] += 1
        r = self._running
        if (r is not None and r.session_id == s.id and r.live == live
                and r.state == JobState.RUNNING and not r.cancel_event.is_set()):
            r.cancel_reason = SUPERSEDED
            r.cancel_event.set()
            self.counters["superseded"] += 1

    def _cancel_queued(self, job: Job, reason: str | None) -> None:
        self.queue.remove(job)
        self._finish(job, JobState.CANCELLED, at_step=None, reason=reason)

    def _drop_queued(self, s: Session, reason: str) -> None:
        for job in self.queue.of(s.id):
            self._cancel_queued(job, reason)

    def _on_fetch(self, s: Session, msg: dict) -> None:
        job = self._owned(s, msg["job_id"], msg["msg_id"])
        if job is None:
            return
        if job.state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            self._error(s, s.route, "not_finished", f"job is {job.state}", job_id=job.id,
                        re=msg["msg_id"], retry_after_ms=500)
            return
        self._resend_terminal(s, job, msg["msg_id"])

    def _resend_terminal(self, s: Session, job: Job, mid) -> None:
        if job.state == JobState.SUCCEEDED:
            if job.result_header is None:
                self._error(s, s.route, "result_expired", "the result of this job was evicted",
                            job_id=job.id, re=mid)
                return
            self.jobs.touch(job.id)
            h = dict(job.result_header, re=mid, seq=job.seq)
            self._send(s, h, job.result_blobs, kind="result")
        elif job.state == JobState.CANCELLED:
            self._send(s, {"type": "cancelled", "job_id": job.id, "re": mid, "seq": job.seq,
                           "at_step": job.at_step})
        else:
            self._send(s, {"type": "error", "job_id": job.id, "re": mid, "seq": job.seq,
                           **job.error})

    def _finish(self, job: Job, state: str, *, at_step=None, error: dict | None = None,
                result=None, reason: str | None = None) -> None:
        """Move a job to a terminal state, store it, notify its session (once)."""
        if job.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            return
        job.state = state
        job.finished = self.clock()
        job.seq += 1
        # Release the input images before telling anyone: the budget is free once the job ends.
        self._input_bytes -= sum(len(b) for b in job.blobs)
        job.blobs = []
        s = self.sessions.get(job.session_id)
        if state == JobState.CANCELLED:
            job.at_step = at_step
            h = {"type": "cancelled", "job_id": job.id, "seq": job.seq, "at_step": at_step}
            if reason:
                h["reason"] = reason
            self._send(s, h)
        elif state == JobState.FAILED:
            job.error = error
            self._send(s, {"type": "error", "job_id": job.id, "seq": job.seq, **error})
        else:
            header, blobs = result
            header["seq"] = job.seq
            job.result_header, job.result_blobs = header, blobs
            job.result_bytes = sum(len(b) for b in blobs)
            self._send(s, dict(header), blobs, kind="result")
        self.jobs.keep(job, self.clock())

    # ---- scheduler ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._running is not None or not self.queue or self.model_state != "ready":
            return
        now = self.clock()
        while self.queue:
            job = self.queue.pop()
            if now > job.deadline:
                self._finish(job, JobState.FAILED, error=self._err(
                    "deadline_exceeded", "the job waited past its deadline and was not run"))
                continue
            job.state = JobState.RUNNING
            job.started = now
            job.seq += 1
            self._running = job
            self._send(self.sessions.get(job.session_id), {
                "type": "started", "job_id": job.id, "seq": job.seq, "steps": job.steps,
                "worker": 0, "queue_ms": round((now - job.submitted) * 1000, 1)})
            self._work.put(("job", job))
            break
        if now - self._last_queued_note > 0.5 and self.queue:
            self._last_queued_note = now
            for sid in self.queue.sessions():
                s = self.sessions.get(sid)
                for j in self.queue.of(sid)[:8]:
                    self._send(s, {"type": "queued", "job_id": j.id, "seq": j.seq,
                                   "position": self.queue.position(j)}, kind="droppable")

    @staticmethod
    def _err(code: str, message: str, **extra) -> dict:
        return {"code": code, "message": message, "retryable": CODES.get(code, False),
                **extra}

    def _housekeeping(self, now: float) -> None:
        for s in self.sessions.reap(now):      # gone: end its jobs, forget it once idle
            if self.queue.of(s.id):
                self._drop_queued(s, "client gone")
            r = self._running
            if r is not None and r.session_id == s.id and not r.cancel_event.is_set():
                r.cancel_reason = "client gone"
                r.cancel_event.set()
            if not self.queue.of(s.id) and not (r is not None and r.session_id == s.id):
                self.sessions.forget(s)
        for job in self.queue.expired(now):
            self.queue.remove(job)
            self._finish(job, JobState.FAILED, error=self._err(
                "deadline_exceeded", "the job waited past its deadline and was not run"))
        self.jobs.evict_old(now)
        self._check_loras(now)

    LORA_RESCAN_S = 2.0  # how often the LoRA folder is looked at (a stat; new files: a header)

    def _check_loras(self, now: float) -> None:
        """New or removed LoRA files: every attached client gets a fresh welcome listing them."""
        if now < self._lora_check_at or self.pipeline is None:
            return
        self._lora_check_at = now + self.LORA_RESCAN_S
        listed = self._pipe_info().get("loras", [])
        if listed == self._loras_listed:
            return
        first = self._loras_listed is None
        self._loras_listed = listed
        if not first:
            self._welcome_all()


    # ---- events from the worker -----------------------------------------------------------

    def _drain_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            kind = ev[0]
            if kind == "loaded":
                self.pipeline = ev[1]
                self.model_state = "ready"
                log.info("model ready: %s", self._pipe_info())
                self._welcome_all()         # tell clients: caps, model, device
            elif kind == "download":      # while loading: unsolicited welcomes carry it
                self.download = ev[1]
                self._welcome_all()
            elif kind == "load_failed":
                self.model_state = "failed"
                self.model_error = ev[1]
                self._welcome_all()
            elif kind == "progress":
                _, job, h, blobs = ev
                if job.state != JobState.RUNNING:
                    continue
                job.step = h.get("step", job.step)
                h["seq"] = job.seq
                self._send(self.sessions.get(job.session_id), h, blobs, kind="droppable")
            elif kind == "done":
                _, job, outcome = ev
                if self._running is job:
                    self._running = None
                    dur = self.clock() - job.started
                    self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * dur
                state, payload = outcome
                if state == JobState.SUCCEEDED:
                    self._finish(job, JobState.SUCCEEDED, result=payload)
                elif state == JobState.CANCELLED:
                    self._finish(job, JobState.CANCELLED, at_step=payload,
                                 reason=None if job.cancel_reason == "client"
                                 else job.cancel_reason)
                else:
                    self._finish(job, JobState.FAILED, error=payload)
            elif kind == "unloaded":
                waiters, self._unload_waiters = self._unload_waiters or [], None
                for sid, mid in waiters:
                    h = dict(ev[1])
                    if mid is not None:
                        h["re"] = mid
                    self._send(self.sessions.get(sid), h, kind="state")
            elif kind == "worker_free":
                _, job = ev
                if self._running is job:
                    self._running = None
                    dur = self.clock() - job.started
                    self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * dur

