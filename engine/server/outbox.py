"""A session's backlog: the events held while its peer is slow (EAGAIN) or away.

Only headers are held; frames are built when an event is sent, for the session's route of that
time, so the backlog survives a reconnect. A result is held as a small `result_ready` (the
client fetches the bytes). Past `limit` events the backlog is compacted: every terminal event
stays, the rest are dropped and replaced by one `jobs` message that says how many were dropped
and gives a snapshot of the jobs they were about (PROTOCOL.md §5). No sockets, no clock.
"""

from __future__ import annotations

import collections
from typing import Callable

SNAPSHOTS_PER_MESSAGE = 256


def result_ready(header: dict) -> dict:
    """What a held result becomes: its id and seq, not its bytes."""
    return {"type": "result_ready", "job_id": header["job_id"], "seq": header.get("seq"),
            "epoch": header.get("epoch")}


def is_terminal(header: dict) -> bool:
    kind = header.get("type")
    return kind in ("result", "result_ready", "cancelled") or (
        kind == "error" and header.get("job_id") is not None and "seq" in header)


class Outbox:
    def __init__(self, limit: int = 1000):
        self.limit = limit
        self._held: collections.deque[tuple[bool, dict]] = collections.deque()  # (terminal, h)

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self):
        return (h for _, h in self._held)

    def hold(self, header: dict, snapshot: Callable[[str], dict]) -> bool:
        """Hold one event; True if that compacted the backlog. `snapshot(job_id)` is the
        job's state as `status` would report it."""
        self._held.append((is_terminal(header), header))
        if len(self._held) <= self.limit:
            return False
        self._compact(snapshot)
        return True

    def first(self) -> dict:
        return self._held[0][1]

    def pop_first(self) -> None:
        self._held.popleft()

    def keep_terminal(self) -> None:
        """The peer went away: only what it cannot learn otherwise waits for a re-attach."""
        self._held = collections.deque(e for e in self._held if e[0])

    def _compact(self, snapshot: Callable[[str], dict]) -> None:
        """Keep every terminal event (at most one per job), drop the rest, and say so with
        a `jobs` snapshot of the jobs whose events were dropped."""
        kept, dropped, touched = collections.deque(), 0, []
        for terminal, h in self._held:
            if terminal:
                kept.append((terminal, h))
            elif h.get("type") == "jobs" and h.get("dropped_events"):
                dropped += h["dropped_events"]
            else:
                dropped += 1
                jid = h.get("job_id")
                if isinstance(jid, str) and jid not in touched:
                    touched.append(jid)
        done = {h.get("job_id") for _, h in kept}
        live = [j for j in touched if j not in done][:SNAPSHOTS_PER_MESSAGE]
        if len(kept) > self.limit // 2:
            # Still too many: carry the terminal states as `jobs` snapshots (256 a message;
            # cancelled/failed/succeeded with has_result, from which the client fetches).
            ids = [h["job_id"] for _, h in kept if h.get("job_id")]
            kept = collections.deque(e for e in kept if not e[1].get("job_id"))
            n = SNAPSHOTS_PER_MESSAGE
            kept.extend((True, {"type": "jobs", "jobs": [snapshot(j) for j in ids[i:i + n]]})
                        for i in range(0, len(ids), n))
        kept.append((False, {"type": "jobs", "dropped_events": dropped,
                             "jobs": [snapshot(j) for j in live]}))
        self._held = kept
