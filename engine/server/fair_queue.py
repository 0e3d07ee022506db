"""The fair queue: each session's queued jobs wait in its own line, and the lines take turns
(round robin), so one client's 50 jobs do not hold back another client's one.

Within a line, `high` priority jobs go before `normal` ones, each kind first in first out.
The bounds (jobs per session and in total) are checked by the caller before `push`. No
sockets, no clock: `expired` takes the time.
"""

from __future__ import annotations

import collections

from protocol.messages import JobState

from .jobs import Job


class FairQueue:
    def __init__(self):
        self._lines: dict[str, collections.deque[Job]] = {}
        self._turns: collections.deque[str] = collections.deque()  # session ids, next first
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def of(self, session_id: str) -> list[Job]:
        """The session's queued jobs, next first."""
        return list(self._lines.get(session_id, ()))

    def sessions(self) -> list[str]:
        """Sessions with queued jobs, in turn order."""
        return list(self._turns)

    def push(self, job: Job) -> None:
        line = self._lines.get(job.session_id)
        if line is None:
            line = self._lines[job.session_id] = collections.deque()
            self._turns.append(job.session_id)
        if job.priority == "high":
            line.insert(sum(1 for j in line if j.priority == "high"), job)
        else:
            line.append(job)
        self._count += 1

    def pop(self) -> Job | None:
        """The next job: the first of the line whose turn it is; that line goes last."""
        if not self._turns:
            return None
        sid = self._turns.popleft()
        line = self._lines[sid]
        job = line.popleft()
        self._count -= 1
        if line:
            self._turns.append(sid)
        else:
            del self._lines[sid]
        return job

    def remove(self, job: Job) -> None:
        """Take a job out of its line (cancelled, superseded, past its deadline); a job not
        queued is left alone."""
        line = self._lines.get(job.session_id)
        if line is None or job not in line:
            return
        line.remove(job)
        self._count -= 1
        if not line:
            del self._lines[job.session_id]
            self._turns.remove(job.session_id)

    def expired(self, now: float) -> list[Job]:
        """Queued jobs past their deadline, in turn order."""
        return [j for sid in self._turns for j in self._lines[sid] if now > j.deadline]

    def position(self, job: Job) -> int:
        """Jobs that will run before this one (0 = next, or not queued)."""
        if job.state != JobState.QUEUED:
            return 0
        lines = [list(self._lines[sid]) for sid in self._turns]
        pos = 0
        for depth in range(max((len(q) for q in lines), default=0)):
            for q in lines:
                if depth < len(q):
                    if q[depth] is job:
                        return pos
                    pos += 1
        return pos
