"""Sessions on its own, with an injected clock: silent sessions are detached (keeping only
terminal events), detached ones are gone after the grace, and when the table is full the
idle session of the peer holding the most makes room."""

from __future__ import annotations

from engine.server.sessions import Session, Sessions


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def table(**kw) -> Sessions:
    return Sessions(**{"max_total": 8, "max_per_peer": 4, "timeout_s": 10.0, "grace_s": 30.0,
                       "clock": Clock(), **kw})


def session(sid: str, route: bytes, seen: float, user: str | None = None) -> Session:
    return Session(sid, route, user, {}, [], seen)


def test_silent_sessions_are_detached_then_gone_after_the_grace():
    t = table()
    quiet, chatty = session("q", b"r1", 100.0), session("c", b"r2", 100.0)
    t.add(quiet)
    t.add(chatty)
    quiet.outbox.hold({"type": "progress", "job_id": "j"}, snapshot=None)
    quiet.outbox.hold({"type": "cancelled", "job_id": "j", "seq": 3}, snapshot=None)
    t.clock.t = 111.0
    t.attach(chatty, b"r2", 111.0)
    assert t.reap(111.0) == []
    assert not quiet.attached and quiet.detached_at == 111.0 and chatty.attached
    assert [h["type"] for h in quiet.outbox] == ["cancelled"]   # only what it cannot miss
    t.clock.t = 141.0
    t.attach(chatty, b"r2", 141.0)
    assert t.reap(141.0) == []                                  # within the grace
    t.clock.t = 141.5
    assert t.reap(141.5) == [quiet] and "q" in t                # the caller forgets it
    t.attach(quiet, b"r9", 141.5)                               # a reconnect in time
    assert quiet.attached and quiet.route == b"r9" and t.reap(141.5) == []


def test_a_full_table_evicts_a_detached_idle_session_first():
    t = table()
    busy_gone, idle_gone = session("b", b"r1", 1.0), session("i", b"r2", 2.0)
    for s in (busy_gone, idle_gone):
        t.add(s)
        t.detach(s, "test")
    assert t.evict_idle(idle=lambda s: s is not busy_gone)
    assert list(t) == ["b"]
    assert not t.evict_idle(idle=lambda s: s is not busy_gone)


def test_without_detached_ones_the_peer_holding_the_most_gives_up_its_oldest_idle():
    t = table()
    for s in (session("a1", b"A", 5.0), session("a2", b"A", 1.0), session("a3", b"A", 3.0),
              session("k1", b"K", 0.0, user="key"), session("k2", b"K2", 0.5, user="key"),
              session("solo", b"S", 0.0)):
        t.add(s)
    assert t.evict_idle(idle=lambda s: s.id != "a2")      # a2 is older but busy
    assert sorted(t) == ["a1", "a2", "k1", "k2", "solo"]
    assert [s.id for s in t.of_peer(b"K2", "key")] == ["k1", "k2"]   # CURVE: peer = key
    t2 = table()
    t2.add(session("x", b"X", 0.0))
    t2.add(session("y", b"Y", 0.0))
    assert not t2.evict_idle(idle=lambda s: True)          # one session each: nobody goes


def test_among_a_peers_sessions_only_a_detached_idle_one_goes():
    t = table()
    mine = [session(f"m{i}", b"P", float(i)) for i in range(3)]
    for s in mine:
        t.add(s)
    assert not t.evict_idle(idle=lambda s: True, among=mine)     # all attached
    t.detach(mine[2], "test")
    t.detach(mine[1], "test")
    assert t.evict_idle(idle=lambda s: True, among=mine)
    assert sorted(t) == ["m0", "m2"]                             # the least recently seen
