"""Outbox on its own: a backlog past its limit keeps every terminal event and reports the
dropped ones with snapshots; too many terminal events travel as `jobs` snapshots."""

from __future__ import annotations

from engine.server.outbox import Outbox, is_terminal, result_ready


def snap(jid: str) -> dict:
    return {"job_id": jid, "state": "snapshot"}


def test_terminal_events_are_told_apart():
    assert is_terminal({"type": "cancelled", "job_id": "j"})
    assert is_terminal(result_ready({"type": "result", "job_id": "j", "seq": 4, "blobs": []}))
    assert is_terminal({"type": "error", "job_id": "j", "seq": 2})
    assert not is_terminal({"type": "error", "job_id": "j", "re": "m"})   # a reply, no seq
    assert not is_terminal({"type": "progress", "job_id": "j", "seq": 2})
    assert result_ready({"type": "result", "job_id": "j", "seq": 4, "epoch": "e",
                         "blobs": [1]}) == {"type": "result_ready", "job_id": "j", "seq": 4,
                                            "epoch": "e"}


def test_past_the_limit_the_rest_is_dropped_and_reported_once_per_compaction():
    box = Outbox(limit=10)
    compacted = []
    for i in range(8):
        compacted.append(box.hold({"type": "progress", "job_id": "run", "step": i}, snap))
    compacted.append(box.hold({"type": "cancelled", "job_id": "done", "seq": 3}, snap))
    compacted.append(box.hold({"type": "progress", "job_id": "done", "step": 9}, snap))
    compacted.append(box.hold({"type": "pong", "re": "p"}, snap))
    assert compacted == [False] * 10 + [True]
    held = list(box)
    assert [h["type"] for h in held] == ["cancelled", "jobs"]
    # 10 dropped; a snapshot of the job still going, none of the one that ended
    assert held[1]["dropped_events"] == 10 and held[1]["jobs"] == [snap("run")]
    for i in range(10):                                    # the next compaction adds up
        box.hold({"type": "pong", "re": f"p{i}"}, snap)
    assert [h.get("dropped_events") for h in box if h["type"] == "jobs"] == [19]
    box.keep_terminal()                                    # the peer went away
    assert [h["type"] for h in box] == ["cancelled"]
    assert box.first()["job_id"] == "done"
    box.pop_first()
    assert len(box) == 0


def test_too_many_terminal_events_travel_as_snapshots():
    box = Outbox(limit=600)
    for i in range(601):
        box.hold({"type": "cancelled", "job_id": f"j{i}", "seq": 2}, snap)
    held = list(box)
    assert [len(h["jobs"]) for h in held] == [256, 256, 89, 0]
    assert [j["job_id"] for h in held[:3] for j in h["jobs"]] == [f"j{i}" for i in range(601)]
    assert held[3]["dropped_events"] == 0
    box.keep_terminal()                                    # the snapshots count as terminal
    assert len(box) == 3
