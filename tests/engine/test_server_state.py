"""EngineState on its own: no sockets, no threads, an injected clock (like the add-on's JobBoard).

Messages go in already validated (protocol.messages.validate_request, as the loop does); what
the engine would send comes out of a recording `_transmit`.
"""

from __future__ import annotations

import json

import pytest

from engine.server.state import EngineState, PeerBusy
from engine.standin import StandInPipeline
from protocol.messages import JobState, Limits, validate_request


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder(EngineState):
    """EngineState whose sends land in a list; `busy` makes every send EAGAIN."""

    def __init__(self, **kw):
        self.sent: list[tuple[bytes, dict]] = []
        self.busy = False
        kw.setdefault("limits", Limits(min_side=64, max_side=512, max_pixels=512 * 512))
        super().__init__(StandInPipeline(), clock=Clock(), **kw)

    def _transmit(self, frames, copy=True):
        if self.busy:
            raise PeerBusy()
        self.sent.append((frames[0], json.loads(frames[2])))

    def msg(self, route: bytes, session: str, header: dict, blobs=()):
        clean = validate_request({"session": session, **header}, list(blobs), self.limits)
        clean["_raw_blobs"] = list(blobs)
        self._handle(route, None, clean)

    def types(self, route: bytes | None = None) -> list[str]:
        return [h["type"] for r, h in self.sent if route is None or r == route]

    def last(self, kind: str) -> dict:
        return [h for _, h in self.sent if h["type"] == kind][-1]


S1, S2 = "a" * 32, "b" * 32
SMALL = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


def hello(st: Recorder, route: bytes, session: str):
    st.msg(route, session, {"type": "hello", "versions": [1]})


def submit(st: Recorder, route: bytes, session: str, jid: str, **kw):
    st.msg(route, session, {"type": "submit", "job_id": jid, "params": SMALL, **kw})


def test_hello_submit_dispatch_finish():
    st = Recorder()
    hello(st, b"r1", S1)
    assert st.last("welcome")["session"] == S1
    submit(st, b"r1", S1, "j1")
    acc = st.last("accepted")
    assert acc["state"] == "queued" and acc["seq"] == 1 and 0 <= acc["seed"] <= 2**63 - 4
    st._dispatch()
    kind, job = st._work.get_nowait()
    assert kind == "job" and job.state is JobState.RUNNING and st.last("started")["seq"] == 2
    st._finish(job, JobState.CANCELLED, at_step=1)
    assert st.last("cancelled") == {**st.last("cancelled"), "job_id": "j1", "seq": 3,
                                    "at_step": 1}
    assert "j1" in st.jobs.finished


def test_round_robin_across_sessions():
    st = Recorder()
    hello(st, b"r1", S1)
    hello(st, b"r2", S2)
    for i in range(3):
        submit(st, b"r1", S1, f"a{i}")
    submit(st, b"r2", S2, "b0")
    order = []
    for _ in range(4):
        st._dispatch()
        job = st._work.get_nowait()[1]
        order.append(job.id)
        st._finish(job, JobState.CANCELLED, at_step=0)
        st._running = None
    assert order == ["a0", "b0", "a1", "a2"]


def test_deadline_of_a_queued_job_follows_the_clock():
    st = Recorder()
    hello(st, b"r1", S1)
    st.msg(b"r1", S1, {"type": "submit", "job_id": "j", "params": SMALL, "deadline_ms": 500})
    st.model_state = "loading"            # nothing runs
    st.clock.t += 0.4
    st._housekeeping(st.clock())
    assert st.jobs["j"].state is JobState.QUEUED
    st.clock.t += 0.2
    st._housekeeping(st.clock())
    assert st.jobs["j"].state is JobState.FAILED
    assert st.last("error")["code"] == "deadline_exceeded"


def test_results_expire_after_ttl_and_by_count():
    st = Recorder(limits=Limits(min_side=64, result_ttl_s=10, max_results=3,
                                max_results_per_session=2))
    hello(st, b"r1", S1)
    hello(st, b"r2", S2)
    for sess, route, ids in ((S1, b"r1", ["a", "b", "c"]), (S2, b"r2", ["d"])):
        for jid in ids:
            submit(st, route, sess, jid)
            st.msg(route, sess, {"type": "cancel", "job_id": jid})
    assert list(st.jobs.finished) == ["b", "c", "d"]        # 2 per session; 3 in total
    st.msg(b"r1", S1, {"type": "fetch", "job_id": "a", "msg_id": "f"})
    assert st.last("error")["code"] == "result_expired"
    st.clock.t += 11
    st._housekeeping(st.clock())
    assert not st.jobs.finished and st.jobs.finished_bytes == 0


def test_sessions_per_peer_are_bounded_and_detached_ones_make_room():
    st = Recorder(max_sessions_per_peer=2)
    for i in range(3):
        hello(st, b"peer", f"{i:032d}")
    assert len(st.sessions) == 2 and st.last("error")["code"] == "queue_full"
    hello(st, b"other", S2)                    # another peer still gets in
    assert S2 in st.sessions
    st.clock.t += st.sessions.timeout_s + 1     # the peer's sessions go quiet: detached
    st._housekeeping(st.clock())
    hello(st, b"peer", "9" * 32)
    assert "9" * 32 in st.sessions


def test_a_slow_peer_keeps_terminal_events_and_learns_what_was_dropped():
    st = Recorder(max_outbox=10)
    hello(st, b"r1", S1)
    submit(st, b"r1", S1, "j1")
    st.busy = True
    for _ in range(30):
        st.msg(b"r1", S1, {"type": "ping"})
    st.msg(b"r1", S1, {"type": "cancel", "job_id": "j1"})
    st.busy = False
    st._flush_outboxes()
    kinds = st.types()
    assert "cancelled" in kinds
    notice = [h for _, h in st.sent if h["type"] == "jobs" and h.get("dropped_events")]
    assert notice and sum(h["dropped_events"] for h in notice) >= 20


def test_unload_is_coalesced():
    st = Recorder()
    st.pipeline.unload = lambda: 5
    hello(st, b"r1", S1)
    for i in range(5):
        st.msg(b"r1", S1, {"type": "unload", "msg_id": f"u{i}"})
    assert st._work.qsize() == 1
    st._events.put(("unloaded", {"type": "unloaded", "freed_bytes": 5}))
    st._drain_events()
    assert sorted(h["re"] for _, h in st.sent if h["type"] == "unloaded") == \
        [f"u{i}" for i in range(5)]


@pytest.mark.parametrize("token,ok", [("t0k", True), ("nope", False), (None, False)])
def test_token_is_checked_at_hello_and_binds_the_connection(token, ok):
    st = Recorder(token="t0k")
    hdr = {"type": "hello", "versions": [1]}
    if token is not None:
        hdr["token"] = token
    st.msg(b"r1", S1, hdr)
    assert st.types()[-1] == ("welcome" if ok else "error")
    st.msg(b"r2", S1, {"type": "status"})      # another connection, same session id
    assert st.last("error")["code"] == "unauthorized"


# ---- live: newest frame wins ----------------------------------------------------------------

def test_live_supersedes_the_queued_job_of_the_same_key_at_once():
    st = Recorder()
    hello(st, b"r1", S1)
    assert "live" in st.last("welcome")["caps"]
    # no _dispatch: both stay queued
    submit(st, b"r1", S1, "f1", live="cam")
    submit(st, b"r1", S1, "other")       # no key: never superseded
    submit(st, b"r1", S1, "f2", live="cam")
    assert st.jobs["f1"].state is JobState.CANCELLED
    assert st.last("cancelled") == {**st.last("cancelled"), "job_id": "f1", "at_step": None,
                                    "reason": "superseded"}
    assert [j.id for j in st.queue.of(S1)] == ["other", "f2"] and len(st.queue) == 2
    submit(st, b"r1", S1, "g1", live="other-key")   # another key: untouched
    assert st.jobs["f2"].state is JobState.QUEUED


def test_live_stops_the_running_job_of_the_same_key_at_its_next_step():
    st = Recorder()
    hello(st, b"r1", S1)
    submit(st, b"r1", S1, "f1", live="cam")
    st._dispatch()
    _, running = st._work.get_nowait()
    submit(st, b"r1", S1, "f2", live="cam")
    assert running.cancel_event.is_set() and running.cancel_reason == "superseded"
    assert st.jobs["f2"].state is JobState.QUEUED
    # the worker reports the stop at its step boundary; the state says why
    st._events.put(("done", running, (JobState.CANCELLED, 3)))
    st._drain_events()
    assert st.last("cancelled") == {**st.last("cancelled"), "job_id": "f1", "at_step": 3,
                                    "reason": "superseded"}
    st._dispatch()
    assert st._work.get_nowait()[1].id == "f2"


def test_live_never_reaches_another_sessions_jobs():
    st = Recorder()
    hello(st, b"r1", S1)
    hello(st, b"r2", S2)
    submit(st, b"r2", S2, "theirs-run", live="cam")
    st._dispatch()
    _, running = st._work.get_nowait()
    submit(st, b"r2", S2, "theirs-q", live="cam")
    running.cancel_event.clear()          # only S2's own second frame asked it to stop
    running.cancel_reason = "client"
    submit(st, b"r1", S1, "mine", live="cam")
    assert not running.cancel_event.is_set()
    assert st.jobs["theirs-q"].state is JobState.QUEUED
    assert st.jobs["mine"].state is JobState.QUEUED


@pytest.mark.parametrize("live", ["", "x" * 65, "a b", 5, ["k"]])
def test_live_key_is_bounded(live):
    st = Recorder()
    hello(st, b"r1", S1)
    with pytest.raises(Exception) as info:
        submit(st, b"r1", S1, "j", live=live)
    assert getattr(info.value, "field", None) == "live"


def test_twenty_live_frames_keep_at_most_one_running_and_one_queued():
    st = Recorder()
    hello(st, b"r1", S1)
    hello(st, b"r2", S2)
    submit(st, b"r2", S2, "other")            # another client's job keeps its turn
    for i in range(20):
        submit(st, b"r1", S1, f"f{i}", live="cam")
        st._dispatch()
        if i == 0:
            assert st._running.id == "other"     # it was first: its turn is kept
        if i == 3:                               # it finishes; live frames run from now on
            other = st._running
            st._events.put(("done", other, (JobState.SUCCEEDED,
                                             ({"type": "result", "job_id": "other"}, []))))
            st._drain_events()
            st._dispatch()
        mine = [j for j in st.jobs.values() if j.session_id == S1]
        running = [j for j in mine if j.state is JobState.RUNNING
                   and not j.cancel_event.is_set()]
        queued = [j for j in mine if j.state is JobState.QUEUED]
        assert len(running) <= 1 and len(queued) <= 1, (i, running, queued)
        r = st._running
        if r is not None and r.cancel_event.is_set():      # the worker stops at its step
            st._events.put(("done", r, (JobState.CANCELLED, 1)))
            st._drain_events()
    st._dispatch()
    states = [st.jobs[f"f{i}"].state for i in range(20)]
    assert states.count(JobState.CANCELLED) == 19 and st.counters["superseded"] == 19
    assert st.jobs["other"].state is JobState.SUCCEEDED
    assert st.jobs["f19"].state is JobState.RUNNING      # the newest frame runs
