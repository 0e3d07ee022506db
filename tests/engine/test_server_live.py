"""Live keys over real loopback sockets: newest frame wins, within one session only."""

from __future__ import annotations

import time

from engine.standin import StandInPipeline
from tests.engine.test_server import collect, connect, serve, small, terminal


def ends(client, ids, timeout=10.0) -> dict:
    out = {}
    collect(client, lambda e: terminal(e.job_id)(e) and not out.update({e.job_id: e})
            and set(ids) <= set(out), timeout)
    return out


def test_supersede_queued_and_running_and_other_clients_untouched():
    step = 0.05
    with serve(StandInPipeline(step)) as srv, connect(srv.endpoint) as c, \
            connect(srv.endpoint) as other:
        assert "live" in collect(c, lambda e: e.kind == "welcome")[-1].data["caps"]
        f1 = c.submit(small(steps=40), preview_every=0, live="cam")
        collect(c, lambda e: e.job_id == f1 and e.kind == "progress" and e.data["step"] >= 2)
        theirs = other.submit(small(steps=3), preview_every=0, live="cam")
        f2 = c.submit(small(steps=40), preview_every=0, live="cam")   # f1 running: stops
        t0 = time.monotonic()
        f3 = c.submit(small(steps=2), preview_every=0, live="cam")    # f2 queued: dropped
        got = ends(c, [f1, f2, f3])
        assert got[f1].kind == "cancelled" and got[f1].data["reason"] == "superseded"
        assert 2 <= got[f1].data["at_step"] < 40
        assert got[f2].kind == "cancelled" and got[f2].data["at_step"] is None
        assert got[f2].data["reason"] == "superseded"
        assert got[f3].kind == "result"
        assert time.monotonic() - t0 < 3.0      # no 40-step job ran to its end
        # the other client's job with the same key ran, in its fair turn
        assert ends(other, [theirs])[theirs].kind == "result"
        assert srv.counters["superseded"] == 2


def test_another_sessions_live_key_has_no_effect_on_yours():
    with serve(StandInPipeline(0.03)) as srv, connect(srv.endpoint) as mine, \
            connect(srv.endpoint) as thief:
        a = mine.submit(small(steps=10), preview_every=0, live="cam")
        b = mine.submit(small(steps=2), preview_every=0, live="other")
        collect(mine, lambda e: e.job_id == a and e.kind == "started")
        collect(thief, lambda e: e.kind == "welcome")
        t = [thief.submit(small(steps=1), preview_every=0, live=k) for k in ("cam", "other")]
        got = ends(mine, [a, b])
        assert got[a].kind == "result" and got[b].kind == "result"
        assert all(e.kind == "result" for e in ends(thief, t).values())
        assert srv.counters["superseded"] == 0


def test_a_bad_live_key_is_refused_with_its_field():
    with serve() as srv, connect(srv.endpoint) as c:
        jid = c.submit(small(), live="no spaces allowed")
        ev = collect(c, terminal(jid))[-1]
        assert ev.kind == "error" and ev.data["code"] == "invalid_params"   # like deadline_ms
        assert ev.data["field"] == "live"
