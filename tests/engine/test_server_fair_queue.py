"""FairQueue on its own: the lines take turns, `high` goes first within a line, and the
position a client is told is the order in which jobs really leave the queue."""

from __future__ import annotations

from engine.server.fair_queue import FairQueue
from engine.server.jobs import Job
from protocol.messages import JobState


def job(jid: str, session: str, priority: str = "normal", deadline: float = 1e9) -> Job:
    return Job(jid, session, None, {}, {}, [], [], "", 0.0, deadline, priority)


def test_positions_are_the_order_jobs_leave_in():
    q = FairQueue()
    jobs = [job("a0", "A"), job("a1", "A", "high"), job("a2", "A"), job("b0", "B"),
            job("a3", "A", "high"), job("c0", "C")]
    for j in jobs:
        q.push(j)
    told = {j.id: q.position(j) for j in jobs}
    order = []
    while q:
        nxt = q.pop()
        nxt.state = JobState.RUNNING
        order.append(nxt.id)
    # A's high jobs first (in their order), then the lines take turns: A, B, C, A, ...
    assert order == ["a1", "b0", "c0", "a3", "a0", "a2"]
    assert sorted(told, key=told.get) == order and sorted(told.values()) == list(range(6))
    assert len(q) == 0 and q.pop() is None and q.sessions() == []


def test_a_line_that_empties_loses_its_turn_and_the_others_keep_theirs():
    q = FairQueue()
    a0, b0, b1, c0 = job("a0", "A"), job("b0", "B"), job("b1", "B"), job("c0", "C")
    for j in (a0, b0, b1, c0):
        q.push(j)
    q.remove(a0)
    q.remove(a0)                                  # not queued any more: left alone
    assert len(q) == 3 and q.sessions() == ["B", "C"] and q.of("A") == []
    assert q.position(c0) == 1 and q.position(b1) == 2
    a1 = job("a1", "A")
    q.push(a1)                                    # back in: at the end of the turns
    assert [q.pop().id for _ in range(4)] == ["b0", "c0", "a1", "b1"]


def test_expired_lists_queued_jobs_past_their_deadline_in_turn_order():
    q = FairQueue()
    late_b, ok_a, late_a = job("lb", "B", deadline=5), job("oa", "A", deadline=50), \
        job("la", "A", deadline=5)
    for j in (ok_a, late_b, late_a):
        q.push(j)
    assert q.expired(4.0) == []
    assert q.expired(6.0) == [late_a, late_b]     # A's turn comes before B's
    assert len(q) == 3                            # listing removes nothing
