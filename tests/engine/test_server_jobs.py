"""JobStore on its own: finished jobs bounded by bytes (results + params), a fetched result
kept longest, evicted ids remembered (bounded) so they answer result_expired."""

from __future__ import annotations

from engine.server import jobs as jobs_mod
from engine.server.jobs import Job, JobStore
from protocol.messages import JobState, Limits


def finished(store: JobStore, jid: str, session: str = "S", *, result_bytes: int = 0,
             prompt: str = "x", at: float = 0.0) -> Job:
    job = Job(jid, session, None, {"prompt": prompt}, {}, [], [], "", at, at + 60)
    store.add(job)
    job.state, job.finished, job.result_bytes = JobState.SUCCEEDED, at, result_bytes
    store.keep(job, at)
    return job


def test_the_byte_budget_counts_results_and_params_and_evicts_the_oldest():
    store = JobStore(Limits(result_budget_bytes=10_000))
    a = finished(store, "a", result_bytes=3000)
    finished(store, "b", prompt="p" * 4000)                 # params count too
    assert store.finished_bytes == a.kept_bytes + store["b"].kept_bytes <= 10_000
    assert store["b"].kept_bytes > 4000
    finished(store, "c", result_bytes=3000)
    assert list(store.finished) == ["b", "c"] and "a" not in store
    assert store.evicted("a") and not store.evicted("b") and not store.evicted("zz")
    assert store.finished_bytes == store["b"].kept_bytes + store["c"].kept_bytes
    assert store.ids_of("S") and sorted(store.ids_of("S")) == ["b", "c"]


def test_a_fetched_result_is_evicted_last():
    store = JobStore(Limits(max_results=2))
    finished(store, "a")
    finished(store, "b")
    store.touch("a")
    finished(store, "c")
    assert list(store.finished) == ["a", "c"] and store.evicted("b")


def test_a_running_job_is_never_evicted_and_the_last_session_id_is_forgotten():
    store = JobStore(Limits(max_results=1))
    running = Job("r", "S", None, {}, {}, [], [], "", 0.0, 60.0)
    store.add(running)
    finished(store, "a", session="T")
    finished(store, "b", session="T")
    assert "r" in store and list(store.finished) == ["b"]
    assert store.ids_of("T") == ["b"] and store.ids_of("S") == ["r"]
    store.evict_old(now=1e6)                                 # past the TTL
    assert store.ids_of("T") == [] and "r" in store


def test_remembered_evictions_are_bounded(monkeypatch):
    monkeypatch.setattr(jobs_mod, "MAX_TOMBSTONES", 5)
    store = JobStore(Limits(max_results=1))
    for i in range(8):
        finished(store, f"j{i}")
    # j0..j6 were evicted; only the last 5 of them are remembered
    assert [store.evicted(f"j{i}") for i in range(8)] == [False, False] + [True] * 5 + [False]
