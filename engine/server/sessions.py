"""Client sessions: bounded in total and per peer, detached when silent, gone after a grace.

A session is one client across reconnects (the `session` id of its hello). It is attached
while its connection speaks. Silent for `timeout_s`, it is detached: only its terminal events
are held for a re-attach. Detached for `grace_s`, it is gone: the engine ends its jobs and
forgets it once idle (EngineState._housekeeping). A peer is a connection (routing id), or
with CURVE a client key; it may hold `max_per_peer` sessions, the engine `max_total`.
No sockets; the clock is injected.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .outbox import Outbox

log = logging.getLogger("engine.server")


@dataclass(eq=False)
class Session:
    id: str
    route: bytes
    user_id: str | None
    client: dict
    caps: list
    last_seen: float
    attached: bool = True
    detached_at: float = 0.0
    outbox: Outbox = field(default_factory=Outbox)   # events held while the peer is slow


class Sessions(Mapping):
    """Session id -> Session, with the rules for who gets in and who is forgotten."""

    def __init__(self, *, max_total: int, max_per_peer: int, timeout_s: float, grace_s: float,
                 clock: Callable[[], float]):
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.clock = clock
        self._by_id: dict[str, Session] = {}

    def __getitem__(self, sid: str) -> Session:
        return self._by_id[sid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, s: Session) -> None:
        self._by_id[s.id] = s

    def forget(self, s: Session) -> None:
        del self._by_id[s.id]

    def of_peer(self, route: bytes, user_id: str | None) -> list[Session]:
        return [s for s in self._by_id.values()
                if s.route == route or (user_id is not None and s.user_id == user_id)]

    def attach(self, s: Session, route: bytes, now: float) -> None:
        s.route = route   # held events (outbox) go to the new route
        s.last_seen = now
        if not s.attached:
            s.attached = True
            log.info("session %s re-attached", s.id[:8])

    def detach(self, s: Session, why: str) -> None:
        if s.attached:
            log.info("session %s detached (%s)", s.id[:8], why)
            s.attached = False
            s.detached_at = self.clock()
            s.outbox.keep_terminal()

    def reap(self, now: float) -> list[Session]:
        """Detach the sessions silent for `timeout_s`; return those detached for longer than
        `grace_s` (gone: the caller ends their jobs and forgets the idle ones)."""
        gone = []
        for s in list(self._by_id.values()):
            if s.attached and now - s.last_seen > self.timeout_s:
                self.detach(s, f"silent for {now - s.last_seen:.1f}s")
            if not s.attached and now - s.detached_at > self.grace_s:
                gone.append(s)
        return gone

    def evict_idle(self, idle: Callable[[Session], bool], among: list | None = None) -> bool:
        """Forget one idle session (no queued or running job): among the given peer's, a
        detached one; over all, a detached one, else the least recently seen of the peer
        holding the most sessions. False if none may go."""
        if among is not None:
            pool = sorted((s for s in among if not s.attached and idle(s)),
                          key=lambda s: s.last_seen)
        else:
            pool = [s for s in self._by_id.values() if not s.attached and idle(s)]
            if not pool:
                per = collections.Counter(s.user_id or s.route for s in self._by_id.values())
                if per:
                    top, n = per.most_common(1)[0]
                    if n > 1:
                        pool = sorted((s for s in self._by_id.values()
                                       if (s.user_id or s.route) == top and idle(s)),
                                      key=lambda s: s.last_seen)
        if not pool:
            return False
        self.forget(pool[0])
        return True
