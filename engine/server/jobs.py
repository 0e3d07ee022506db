"""Every job the engine knows, and the store that bounds the finished ones.

A job lives in the store from its submit until it is evicted: finished jobs are kept for
`result_ttl_s`, at most `max_results` in total and `max_results_per_session` per session, and
within `result_budget_bytes` (results + params); the oldest go first. An evicted id is
remembered (a tombstone, the last 10,000) so that it answers `result_expired`, not
`unknown_job`, and cannot be submitted again. No sockets, no clock of its own: `evict_old`
takes the time.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from protocol.messages import JobState, Limits

MAX_TOMBSTONES = 10000


@dataclass(eq=False)
class Job:
    id: str
    session_id: str
    user_id: str | None
    params: dict
    want: dict
    blob_descs: list
    blobs: list
    fingerprint: str
    submitted: float
    deadline: float
    priority: str = "normal"
    state: JobState = JobState.QUEUED
    seq: int = 0
    step: int = 0
    steps: int = 0
    at_step: int | None = None
    error: dict | None = None
    result_header: dict | None = None
    result_blobs: list = field(default_factory=list)
    result_bytes: int = 0
    kept_bytes: int = 0
    started: float = 0.0
    finished: float = 0.0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "client"
    live: str | None = None         # the submit's live key: a newer one supersedes this job


class JobStore(Mapping):
    """Job id -> Job for every job not yet evicted (queued, running and finished)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._jobs: dict[str, Job] = {}
        self._by_session: dict[str, set] = collections.defaultdict(set)
        self.finished: collections.OrderedDict[str, Job] = collections.OrderedDict()  # oldest first
        self.finished_bytes = 0
        self._finished_per_session: collections.Counter = collections.Counter()
        self._tombstones: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __getitem__(self, jid: str) -> Job:
        return self._jobs[jid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._by_session[job.session_id].add(job.id)

    def ids_of(self, session_id: str) -> list[str]:
        return list(self._by_session.get(session_id, ()))

    def evicted(self, jid: str) -> bool:
        """The job existed and was evicted (its result expired)."""
        return jid in self._tombstones

    def keep(self, job: Job, now: float) -> None:
        """Store a job that just finished; evict what no longer fits."""
        # what a kept job costs: its result, its params (prompts up to 4,000 chars) and the rest
        job.kept_bytes = job.result_bytes + len(json.dumps(job.params)) + 1024
        self.finished[job.id] = job
        self.finished_bytes += job.kept_bytes
        self._finished_per_session[job.session_id] += 1
        if self._finished_per_session[job.session_id] > self.limits.max_results_per_session:
            oldest = next(j for j in self.finished.values() if j.session_id == job.session_id)
            self._evict(oldest)
        self.evict_old(now)

    def touch(self, jid: str) -> None:
        """A result was fetched again: it goes last in line for eviction."""
        if jid in self.finished:
            self.finished.move_to_end(jid)

    def evict_old(self, now: float) -> None:
        """Evict the oldest finished jobs past the TTL, the count or the byte budget."""
        lim = self.limits
        while self.finished:
            job = next(iter(self.finished.values()))
            if (now - job.finished > lim.result_ttl_s or len(self.finished) > lim.max_results
                    or self.finished_bytes > lim.result_budget_bytes):
                self._evict(job)
            else:
                break

    def _evict(self, job: Job) -> None:
        jid = job.id
        del self.finished[jid]
        self.finished_bytes -= job.kept_bytes
        self._finished_per_session[job.session_id] -= 1
        if self._finished_per_session[job.session_id] <= 0:
            del self._finished_per_session[job.session_id]
        self._jobs.pop(jid, None)
        ids = self._by_session.get(job.session_id)
        if ids is not None:
            ids.discard(jid)
            if not ids:
                del self._by_session[job.session_id]
        self._tombstones[jid] = job.session_id
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
