"""The farm gateway: the same EngineServer (loop, state machine, validation, limits, error
codes, CURVE, token), with the local worker thread's job runner replaced by a dispatcher to
a Ray Serve deployment of pipeline replicas (one per GPU). Ray is the optional extra
`.[cluster]`; nothing here is imported by `engine serve`.

    server = ClusterServer(PipelineFactory("standin"), bind=..., min_replicas=1,
                           max_replicas=2).start()

How the pieces talk (docs/architecture.md, "A farm of GPUs"):
- submit -> the gateway's fair queue (fair_queue.py, unchanged) -> up to `max_inflight` jobs
  are handed to the deployment at once (`started` = handed to the farm); Serve's router picks a
  replica (max_ongoing_requests=1: one job per GPU) and queues the rest, which is also the
  queue length its autoscaler reads.
- progress/previews/result stream back as a Serve streaming response
  (`handle.options(stream=True)`): one call per job, no replica addressing, and a replica that
  dies breaks the stream at once (the gateway sees it as an exception). The replica runs the
  very same Worker._run_job as `engine serve`, so fractions, previews and result bytes match.
- cancel: a tiny Ray actor (the cancel board) holds the cancelled job ids; the replica's
  should_cancel() reads it (at most every 50 ms), so the job stops at its next step. Serve's
  own request cancellation does not interrupt a synchronous pipeline call.
- a replica dying mid-job: the job runs once more from the start on another replica (same
  params, same seed -> same image); if that one fails too, the job fails with
  `engine_crashed` (retryable). The gateway posts one terminal event per job, so nothing is
  delivered twice and nothing is lost.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import JobState, Limits

from .jobs import Job
from .loop import EngineServer
from .state import EngineState
from .worker import Worker

log = logging.getLogger("engine.cluster")

END_GRACE_S = 10.0   # how long a cancelled or overdue job may take to stop on the farm

# A job waiting in Serve's router for a busy replica retries with exponential backoff (up to
# 0.5 s by default): with jobs of seconds that idles a replica for ~0.1-0.5 s a job. Cap it
# at 50 ms (read when ray.serve is first imported: import this module before ray.serve).
os.environ.setdefault("RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S", "0.05")

CANCEL_POLL_S = 0.05


# ---- what a replica loads -----------------------------------------------------------------

@dataclass
class PipelineFactory:
    """What each replica loads, picklable: kind "standin" (kwargs of StandInPipeline),
    "model" (load_pipeline(model, **kwargs)) or "object" (a copy of `obj`, a picklable
    pipeline: tests run their own stand-ins on the farm)."""
    kind: str
    model: str | None = None
    kwargs: dict = field(default_factory=dict)
    obj: Any = None

    def __call__(self):
        if self.kind == "object":
            return self.obj
        if self.kind == "standin":
            from engine.standin import StandInPipeline
            return StandInPipeline(**self.kwargs)
        from engine.loading import load_pipeline
        from engine.lora import LoraLibrary
        kwargs = dict(self.kwargs)
        lora_dir = kwargs.pop("lora_dir", None)   # a folder every replica's node can read
        return load_pipeline(self.model, loras=LoraLibrary(lora_dir), **kwargs)


# ---- the replica side ---------------------------------------------------------------------

class _BoardFlag:
    """A replica job's cancel flag: set when the gateway's cancel board lists the job. Polls
    the board at most every 50 ms without blocking the step (the answer is read at a later
    step); `check_now` blocks, for the check before a job starts."""

    def __init__(self, board, job_id: str):
        self.board, self.job_id = board, job_id
        self._set, self._next, self._ref = False, 0.0, None

    def check_now(self) -> bool:
        import ray
        try:
            self._set = self._set or bool(ray.get(self.board.is_cancelled.remote(self.job_id),
                                                  timeout=10))
        except Exception:   # the board is gone with its gateway: stop
            self._set = True
        self._next = time.monotonic() + CANCEL_POLL_S
        return self._set

    def is_set(self) -> bool:
        if self._set:
            return True
        import ray
        if self._ref is not None:
            ready, _ = ray.wait([self._ref], timeout=0)
            if ready:
                try:
                    self._set = bool(ray.get(self._ref))
                except Exception:   # the board is gone with its gateway: stop
                    self._set = True
                self._ref = None
        now = time.monotonic()
        if self._ref is None and not self._set and now >= self._next:
            self._next = now + CANCEL_POLL_S
            self._ref = self.board.is_cancelled.remote(self.job_id)
        return self._set

    def set(self) -> None:
        self._set = True


class _ReplicaRun(Worker):
    """One job on a replica: Worker._run_job with _post feeding the response stream."""

    _err = staticmethod(EngineState._err)

    def __init__(self, pipeline, limits: Limits, encoder, events: queue.Queue):
        self.pipeline, self.limits, self._encoder = pipeline, limits, encoder
        self.clock = time.monotonic
        self._q = events

    def _post(self, *event) -> None:
        self._q.put(event)


class PipelineReplica:
    """The Serve deployment's class: loads the pipeline once (Serve routes to a replica only
    after this returns) and keeps it warm."""

    def __init__(self, factory: PipelineFactory, limits: dict):
        self.pipeline = factory()
        self.limits = Limits(**limits)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-encode")

    def info(self) -> dict:
        import os
        return {**dict(getattr(self.pipeline, "info", {})), "replica_pid": os.getpid()}

    def pid(self) -> int:
        import os
        return os.getpid()

    def run(self, spec: dict):
        """Stream ("progress", header, blobs, pid)... then ("done", outcome)."""
        import os
        pid = os.getpid()
        now = time.monotonic()
        job = Job(spec["id"], "", None, spec["params"], spec["want"], spec["blob_descs"],
                  spec["blobs"], "", now - spec["queue_s"], now + spec["remaining_s"])
        job.started, job.steps = now, spec["params"]["steps"]
        job.cancel_event = _BoardFlag(spec["board"], job.id)
        if job.cancel_event.check_now():     # cancelled while it waited in Serve's queue
            yield ("done", (JobState.CANCELLED, None))
            return
        events: queue.Queue = queue.Queue()
        run = _ReplicaRun(self.pipeline, self.limits, self._encoder, events)
        t = threading.Thread(target=self._guarded, args=(run, job, events), daemon=True)
        t.start()
        while True:
            ev = events.get()
            if ev[0] == "progress":
                yield ("progress", ev[2], ev[3], pid)
            elif ev[0] == "done":
                yield ("done", ev[2])
                return

    @staticmethod
    def _guarded(run: _ReplicaRun, job: Job, events: queue.Queue) -> None:
        try:
            run._run_job(job)
        except BaseException:  # noqa: BLE001 - the stream must end with an outcome
            log.exception("replica job %s failed", job.id)
            events.put(("done", job, (JobState.FAILED, EngineState._err(
                "internal_error", "engine error on a replica (see its log)"))))


class CancelBoard:
    """Job ids the gateway cancelled (a Ray actor; bounded)."""

    def __init__(self):
        self.ids: dict[str, None] = {}

    def cancel(self, job_id: str) -> None:
        self.ids[job_id] = None
        while len(self.ids) > 10000:
            self.ids.pop(next(iter(self.ids)))

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.ids


class _FarmPipeline:
    """What the gateway's state machine sees as its pipeline: the replicas' info (caps,
    model). No `unload`: a farm keeps its replicas warm (PROTOCOL.md)."""

    def __init__(self, info: dict):
        info = dict(info)
        info.pop("replica_pid", None)
        self.info = {**info, "cluster": True}


# ---- the gateway --------------------------------------------------------------------------

class ClusterServer(EngineServer):
    """EngineServer whose jobs run on a Ray Serve deployment (see module docstring)."""

    def __init__(self, factory: PipelineFactory, *, ray_address: str | None = None,
                 min_replicas: int = 1, max_replicas: int = 1, replica_gpus: float = 0.0,
                 replica_cpus: float = 1.0, max_inflight: int | None = None,
                 autoscaling: dict | None = None, app_name: str | None = None,
                 end_grace_s: float = END_GRACE_S, **kw):
        kw.setdefault("name", "zimage-cluster")
        super().__init__(None, loader=self._deploy, **kw)
        self.factory = factory
        self.ray_address = ray_address
        self.min_replicas, self.max_replicas = min_replicas, max(min_replicas, max_replicas)
        self.replica_gpus, self.replica_cpus = replica_gpus, replica_cpus
        # jobs handed to Serve at once: one per replica at full scale, plus a few waiting
        # in Serve's queue so the autoscaler sees the load
        self.max_inflight = max_inflight or 2 * self.max_replicas
        self.autoscaling = autoscaling or {}
        self.app_name = app_name or f"zimage-{self.epoch}"
        self._inflight: dict[str, Job] = {}
        self._told_board: dict[str, float] = {}      # job id -> when the board was told
        self.end_grace_s = end_grace_s
        self._pool = ThreadPoolExecutor(max_workers=self.max_inflight,
                                        thread_name_prefix="engine-farm")
        self._deployment = None
        self._board = None
        self._ray_started = False
        self.replica_pids: dict[str, list] = {}   # job id -> pids of the replicas that ran it
        self._pids_lock = threading.Lock()

    # -- deployment (runs on the worker thread, as the model load does for `serve`) --

    def _deploy(self) -> _FarmPipeline:
        import ray
        from ray import serve
        if not ray.is_initialized():
            if self.ray_address:
                ray.init(address=self.ray_address, ignore_reinit_error=True)
            else:
                ray.init(include_dashboard=False, ignore_reinit_error=True)
                self._ray_started = True
        serve.start(proxy_location="Disabled")
        self._board = ray.remote(num_cpus=0)(CancelBoard).remote()
        opts: dict[str, Any] = {"num_cpus": self.replica_cpus}
        if self.replica_gpus:
            opts["num_gpus"] = self.replica_gpus
        auto = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": 1, **self.autoscaling}
        dep = serve.deployment(PipelineReplica, name="pipeline", ray_actor_options=opts,
                               max_ongoing_requests=1, autoscaling_config=auto,
                               health_check_period_s=2, health_check_timeout_s=30)
        app = dep.bind(self.factory, self.limits.to_dict())
        self._deployment = serve.run(app, name=self.app_name, route_prefix=None, blocking=False)
        info = self._deployment.info.remote().result(timeout_s=600)
        log.info("farm %s ready: %s", self.app_name, info)
        return _FarmPipeline(info)

    def replicas(self) -> dict:
        """Replica counts by state, from Serve (for tests and `status` logs)."""
        from ray import serve
        app = serve.status().applications.get(self.app_name)
        if app is None:
            return {}
        dep = app.deployments.get("pipeline")
        return {str(k.value if hasattr(k, "value") else k): v
                for k, v in (dep.replica_states if dep else {}).items()}

    # -- scheduling: several jobs at once, the fair queue's order kept --

    def _dispatch(self) -> None:
        for jid in [j for j, job in self._inflight.items() if job.state != JobState.RUNNING]:
            del self._inflight[jid]
            self._told_board.pop(jid, None)
        while len(self._inflight) < self.max_inflight:
            self._running = None      # the base picks the next job when nothing "runs"
            EngineServer._dispatch(self)
            job = self._running
            if job is None:
                break
            self._inflight[job.id] = job
        self._running = next(iter(self._inflight.values()), None)
        if self._board is not None:
            for job in self._inflight.values():
                if job.cancel_event.is_set() and job.id not in self._told_board:
                    self._told_board[job.id] = self.clock()
                    self._board.cancel.remote(job.id)

    def _housekeeping(self, now: float) -> None:
        # cancel every running job of a client gone (the base sees one `_running`)
        for s in list(self.sessions.values()):
            if not s.attached and now - s.detached_at > self.sessions.grace_s:
                for job in self._inflight.values():
                    if job.session_id == s.id and not job.cancel_event.is_set():
                        job.cancel_reason = "client gone"
                        job.cancel_event.set()
        self._end_overdue(now)
        super()._housekeeping(now)

    def _end_overdue(self, now: float) -> None:
        """A job always ends, even when its replica or the Ray call carrying it hangs: one
        cancelled (or past its deadline) that the farm has not ended `end_grace_s` later
        ends here. The replica's late outcome is then ignored (a job ends once)."""
        for job in list(self._inflight.values()):
            if job.state != JobState.RUNNING:
                continue
            told = self._told_board.get(job.id)
            if told is not None and now - told > self.end_grace_s:
                log.warning("job %s: the farm did not stop it %.1fs after its cancel; "
                            "ending it here", job.id, now - told)
                self._finish(job, JobState.CANCELLED, at_step=job.step or None,
                             reason=None if job.cancel_reason == "client"
                             else job.cancel_reason)
            elif now > job.deadline + self.end_grace_s:
                log.warning("job %s: the farm did not end it by its deadline; failing it "
                            "here", job.id)
                job.cancel_reason = "deadline"
                job.cancel_event.set()
                if self._board is not None:  # tell the replica to stop, if it ever listens
                    self._board.cancel.remote(job.id)
                self._finish(job, JobState.FAILED, error=self._err(
                    "deadline_exceeded", f"deadline passed at step {job.step}; the farm "
                    "did not stop the job, the gateway ended it"))

    # -- the job runner: Worker._worker_main calls this for each job --

    def _run_job(self, job: Job) -> None:
        self._pool.submit(self._run_remote, job)

    def _run_remote(self, job: Job) -> None:
        try:
            self._run_on_farm(job)
        except BaseException:  # noqa: BLE001 - a job must always end
            log.exception("dispatching job %s failed", job.id)
            self._post("done", job, (JobState.FAILED, self._err(
                "internal_error", "the gateway could not hand this job to the farm (see "
                "its log)")))

    def _run_on_farm(self, job: Job) -> None:
        now = self.clock()
        spec = {"id": job.id, "params": job.params, "want": job.want,
                "blob_descs": job.blob_descs, "blobs": job.blobs,
                "queue_s": job.started - job.submitted, "board": self._board}
        with self._pids_lock:                         # pool threads share it
            pids = self.replica_pids.setdefault(job.id, [])
            while len(self.replica_pids) > 4096:      # bounded: the oldest jobs go first
                self.replica_pids.pop(next(iter(self.replica_pids)))
        last = None
        for attempt in (1, 2):
            spec["remaining_s"] = job.deadline - self.clock()
            try:
                stream = self._deployment.options(stream=True).run.remote(spec)
                seen_pid = False
                for ev in stream:
                    if ev[0] == "progress":
                        if not seen_pid:      # which replica runs it (tests, logs)
                            seen_pid = True
                            pids.append(ev[3])
                        self._post("progress", job, ev[1], ev[2])
                    elif ev[0] == "done":
                        self._post("done", job, ev[1])
                        return
                last = "the replica's stream ended without an outcome"
            except Exception as exc:  # noqa: BLE001 - a replica or its stream died
                last = f"{type(exc).__name__}"
                log.warning("job %s: replica lost on attempt %d (%s: %s)", job.id, attempt,
                            type(exc).__name__, str(exc)[:300])
            if job.cancel_event.is_set():
                self._post("done", job, (JobState.CANCELLED, job.step or None))
                return
            if attempt == 1:
                time.sleep(0.5)   # let Serve's router drop the dead replica before the rerun
        log.error("job %s failed twice on the farm (%s), after %.1fs", job.id, last,
                  self.clock() - now)
        self._post("done", job, (JobState.FAILED, self._err(
            "engine_crashed", "the replica running this job died twice; submit it again")))

    def _shutdown(self) -> None:
        for job in self._inflight.values():
            job.cancel_reason = "shutdown"
            job.cancel_event.set()
            if self._board is not None:
                self._board.cancel.remote(job.id)
        super()._shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            from ray import serve
            if self._deployment is not None:
                serve.delete(self.app_name, _blocking=False)
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown
            log.warning("could not delete the Serve app %s: %s", self.app_name, exc)
        if self._ray_started:
            import ray
            ray.shutdown()
