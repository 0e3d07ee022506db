"""Client library for the Z-Image engine (protocol v1). Needs only pyzmq and the stdlib.

Non-blocking core, for GUIs that poll from their main loop (e.g. a Blender timer):

    client = EngineClient("tcp://127.0.0.1:5555", client_name="blender", client_version="0.1")
    client.start()                       # one background I/O thread owns the socket
    job_id = client.submit({"prompt": "a red fox", "width": 1024, "height": 1024})
    ...
    for ev in client.poll():             # never blocks (unless you pass timeout=)
        if ev.kind == "progress": ...    # ev.data: stage, step, steps, fraction
        elif ev.kind == "result": ...    # ev.images: [ImageData], ev.data: seeds, timings
    client.close()

Blocking convenience for scripts:

    result = generate("tcp://127.0.0.1:5555", {"prompt": "a red fox"})   # -> Event("result")

The client reconnects by itself (libzmq reconnect + a new `hello` with the same session), notices
a dead engine (socket monitor, ZMTP heartbeats) and a frozen one (app-level ping watchdog), and
recovers results of jobs that finished while it was disconnected (`hello.resume_jobs` ->
snapshot -> `fetch`). If the engine restarted (new epoch), unfinished jobs end with an `error`
event, code `engine_crashed` (retryable: resubmit).

Events: connected, disconnected, welcome, accepted, queued, started, progress, preview, result,
cancelled, error. Exactly one of result / cancelled / error ends each job.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import PROTOCOL_VERSION, connection
from .errors import CODES, ProtocolError
from .events import (_FORMAT_MIME, EVENT_KINDS, TERMINAL_KINDS, Event,  # noqa: F401
                     ImageData, _sniff_mime)
from .jobs import JobTracking, _Job
from .messages import JobState
from .waker import Waker
from .wire import encode

__all__ = ["EngineClient", "Event", "ImageData", "generate", "EVENT_KINDS"]

class EngineClient(JobTracking):
    """Asynchronous engine client. All public methods are thread-safe and never block
    (except close(), which waits briefly for the I/O thread, and poll(timeout>0))."""

    def __init__(self, endpoint: str, client_name: str = "python", client_version: str = "0",
                 curve_server_key: str | bytes | None = None,
                 curve_client_keys: tuple | None = None, *,
                 session: str | None = None, host_app: str | None = None,
                 host_version: str | None = None,
                 heartbeat_ivl_ms: int = 1000, heartbeat_timeout_ms: int = 3000,
                 heartbeat_ttl_ms: int = 6000, reconnect_ivl_ms: int = 250,
                 reconnect_ivl_max_ms: int = 5000, ping_interval_s: float = 2.0,
                 unresponsive_s: float = 6.0, accept_timeout_s: float = 15.0,
                 stall_timeout_s: float = 60.0, give_up_s: float = 60.0,
                 default_deadline_ms: int = 120_000, max_events: int = 10_000,
                 token: str | None = None, connection_file: str | None = None):
        if not isinstance(endpoint, str) or endpoint.split("://", 1)[0] not in (
                "tcp", "ipc", "inproc") or "://" not in endpoint:
            raise ProtocolError("invalid_params", f"bad engine endpoint {endpoint!r}; expected "
                                "e.g. tcp://127.0.0.1:5555", field="endpoint")
        self.endpoint = endpoint
        # local trust (§8): the engine's token; when not given, read from the engine's
        # connection file at every hello (a restarted engine writes a new one)
        self._token = token
        self._connection_file = connection_file
        self.session = session or uuid.uuid4().hex
        self._client_info = {"name": client_name, "version": client_version}
        if host_app:
            self._client_info["host"] = host_app
        if host_version:
            self._client_info["host_version"] = host_version
        if (curve_server_key is None) != (curve_client_keys is None):
            raise ValueError("CURVE needs both curve_server_key and curve_client_keys")
        self._curve = (curve_server_key, curve_client_keys) if curve_server_key else None
        self._hb = (heartbeat_ivl_ms, heartbeat_timeout_ms, heartbeat_ttl_ms)
        self._reconnect = (reconnect_ivl_ms, reconnect_ivl_max_ms)
        self.ping_interval_s = ping_interval_s
        self.unresponsive_s = unresponsive_s
        self.accept_timeout_s = accept_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.give_up_s = give_up_s
        self.default_deadline_ms = default_deadline_ms

        self.state = "connecting"
        self.welcome: dict | None = None
        self.epoch: str | None = None

        self._events: collections.deque = collections.deque()
        self._max_events = max_events
        self._ev_cond = threading.Condition()
        self._cmds: collections.deque = collections.deque()
        self._waker = Waker()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._jobs: dict[str, _Job] = {}
        self._requests: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._welcomed = False
        self._hello_at = 0.0
        self._last_rx = 0.0
        self._last_ping = 0.0
        self._disconnected_at: float | None = None
        self._auth_failed = False
        self._last_problem: str | None = None

    # ---- public API (any thread) ----------------------------------------------------------

    def start(self) -> "EngineClient":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zie-client", daemon=True)
            self._thread.start()
        return self

    def submit(self, params: dict, blobs: dict | None = None, result_format: str = "raw",
               preview_every: int = 1, preview_max_side: int = 256, *,
               job_id: str | None = None, deadline_ms: int | None = None,
               priority: str = "normal", live: str | None = None) -> str:
        """Queue a job; returns its id at once. Problems the engine finds arrive as an
        `error` event; a params dict that cannot be encoded raises ProtocolError here.

        live: a key (`[A-Za-z0-9_.-]{1,64}`); a later submit of this client with the same key
        supersedes this job (newest frame wins: it ends `cancelled`, reason `superseded`).
        Needs the engine's `live` capability; older engines ignore it."""
        if not isinstance(params, dict):
            raise ProtocolError("invalid_params", "params must be a dict", field="params")
        job_id = job_id or uuid.uuid4().hex
        descs, frames = [], []
        for name, value in (blobs or {}).items():
            if isinstance(value, ImageData):
                if value.format != "raw":
                    data, mime = bytes(value.data), _FORMAT_MIME.get(value.format, "")
                    desc = {"name": name, "mime": mime, "bytes": len(data)}
                else:
                    data = bytes(value.data)
                    desc = {"name": name, "mime": "application/x-raw", "bytes": len(data),
                            "width": value.width, "height": value.height,
                            "channels": value.channels}
            elif isinstance(value, (bytes, bytearray, memoryview)):
                data = bytes(value)
                desc = {"name": name, "mime": _sniff_mime(data), "bytes": len(data)}
            else:
                raise ProtocolError("invalid_params", f"blob {name!r} must be bytes or "
                                    "ImageData", field=f"blobs.{name}")
            descs.append(desc)
            frames.append(data)
        deadline_ms = int(deadline_ms or self.default_deadline_ms)
        header = {"type": "submit", "session": self.session, "job_id": job_id,
                  "deadline_ms": deadline_ms, "params": params, "priority": priority,
                  "want": {"result_format": result_format, "preview_every": preview_every,
                           "preview_max_side": preview_max_side}}
        if descs:
            header["blobs"] = descs
        if live is not None:
            header["live"] = live
        try:
            encode(header)
        except (TypeError, ValueError) as exc:
            raise ProtocolError("invalid_params", f"params cannot be encoded as JSON: {exc}",
                                field="params") from None
        job = _Job(job_id, header, frames, time.monotonic(), deadline_ms / 1000.0)
        self._command(("submit", job))
        return job_id

    def cancel(self, job_id: str) -> None:
        self._command(("cancel", job_id))

    def cancel_all(self) -> None:
        self._command(("cancel_all", None))

    def unload(self) -> None:
        """Ask the engine to free GPU memory (models leave the GPU; the next job brings them
        back). Answered by an "unloaded" event; engines without the "unload" cap answer an error."""
        self._command(("unload", None))

    def fetch(self, job_id: str) -> None:
        """Ask the engine to re-send a finished job's result (normally automatic)."""
        self._command(("fetch", job_id))

    def status(self, job_ids: list | None = None) -> None:
        """Ask for a snapshot; unfinished jobs the engine reports finished produce events."""
        self._command(("status", job_ids))

    def poll(self, timeout: float = 0.0, max_events: int | None = None) -> list[Event]:
        """Drain pending events. Non-blocking by default; timeout>0 waits for the first."""
        with self._ev_cond:
            if not self._events and timeout > 0:
                self._ev_cond.wait(timeout)
            n = len(self._events) if max_events is None else min(max_events, len(self._events))
            return [self._events.popleft() for _ in range(n)]

    def pending_jobs(self) -> list[str]:
        return [j.id for j in list(self._jobs.values()) if not j.terminal]

    def close(self, timeout: float = 2.0) -> None:
        """Say bye, stop the I/O thread, close the socket (linger 0). Safe to call twice."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._waker.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- internals: events ----------------------------------------------------------------

    def _command(self, cmd) -> None:
        self._cmds.append(cmd)
        self._waker.wake()

    # ---- internals: I/O thread ------------------------------------------------------------

    def _make_socket(self):
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)
        if "[" in self.endpoint:   # tcp://[::1]:PORT
            s.setsockopt(zmq.IPV6, 1)
        s.setsockopt(zmq.HEARTBEAT_IVL, self._hb[0])
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, self._hb[1])
        s.setsockopt(zmq.HEARTBEAT_TTL, self._hb[2])
        s.setsockopt(zmq.RECONNECT_IVL, self._reconnect[0])
        s.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect[1])
        s.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        s.setsockopt(zmq.CONNECT_TIMEOUT, 2000)
        s.setsockopt(zmq.MAXMSGSIZE, 512 * 1024 * 1024)
        if self._curve:
            server_key, (public, secret) = self._curve
            enc = (lambda k: k.encode("ascii") if isinstance(k, str) else bytes(k))
            s.curve_serverkey = enc(server_key)
            s.curve_publickey = enc(public)
            s.curve_secretkey = enc(secret)
        mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        s.connect(self.endpoint)
        return s, mon

    def _run(self) -> None:
        self._ctx = zmq.Context()
        try:
            self._sock, self._mon = self._make_socket()
        except zmq.ZMQError as exc:
            msg = f"cannot connect to {self.endpoint}: {exc}"
            self.state = "disconnected"
            self._emit("disconnected", None, {"reason": "bad_endpoint", "message": msg})
            self._ctx.term()
            while not self._closing.is_set():   # fail every job instead of hanging
                while self._cmds:
                    kind, arg = self._cmds.popleft()
                    if kind == "submit":
                        self._jobs[arg.id] = arg
                        self._local_error(arg, "engine_unreachable", msg)
                self._closing.wait(0.05)
            return
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        poller.register(self._waker.r, zmq.POLLIN)
        try:
            while not self._closing.is_set():
                ready = dict(poller.poll(50))
                if self._mon in ready:
                    self._on_monitor()
                if self._sock in ready:
                    for _ in range(200):
                        try:
                            frames = self._sock.recv_multipart(zmq.DONTWAIT, copy=False)
                        except zmq.Again:
                            break
                        self._on_message(frames)
                self._waker.drain()
                while self._cmds:
                    self._on_command(self._cmds.popleft())
                self._timers(time.monotonic())
        except Exception as exc:  # pragma: no cover - report instead of dying silently
            self._emit("error", None, {"code": "internal_error",
                                       "message": f"client I/O thread failed: {exc!r}",
                                       "retryable": False, "local": True})
        finally:
            if self._welcomed:
                self._send({"type": "bye"})
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._mon.close(0)
            self._sock.close(0)
            self._ctx.term()
            self.state = "disconnected"

    def _send(self, header: dict, blobs=(), track_as: tuple | None = None) -> bool:
        header.setdefault("session", self.session)
        mid = uuid.uuid4().hex[:16]
        header["msg_id"] = mid
        header["ts"] = round(time.time(), 3)
        try:
            self._sock.send_multipart(encode(header, blobs), zmq.DONTWAIT,
                                      copy=not any(len(b) > 65536 for b in blobs))
        except zmq.ZMQError:  # EAGAIN: not connected (IMMEDIATE) or engine not reading
            return False
        if track_as is not None:
            self._requests[mid] = track_as
            while len(self._requests) > 2048:
                self._requests.popitem(last=False)
        return True

    def _send_hello(self, now: float) -> None:
        self._hello_at = now
        resume = [j.id for j in self._jobs.values()
                  if not j.terminal and j.state != JobState.PENDING][:256]
        hello = {"type": "hello", "versions": [PROTOCOL_VERSION], "client": self._client_info,
                 "caps": ["result.raw", "result.png", "preview.jpeg"], "resume_jobs": resume}
        token = self._token
        if token is None:
            token = connection.token_for(self.endpoint, self._connection_file)
        if token:
            hello["token"] = token
        self._send(hello)

    def _set_disconnected(self, reason: str, message: str) -> None:
        self._welcomed = False
        if reason != "engine_unreachable" or self._last_problem is None:
            self._last_problem = message   # keep a handshake/auth failure over a plain drop
        if self.state != "disconnected":
            self.state = "disconnected"
            self._disconnected_at = time.monotonic()
            self._emit("disconnected", None, {"reason": reason, "message": message})

    def _on_monitor(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self._mon, zmq.DONTWAIT)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            e = ev["event"]
            if e == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._auth_failed = False
                self._send_hello(time.monotonic())
            elif e == zmq.EVENT_DISCONNECTED:
                self._set_disconnected("engine_unreachable", "lost the connection to the "
                                       "engine; reconnecting")
            elif e == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._auth_failed = True
                self._set_disconnected("unauthorized", "the engine refused this client's key "
                                       "(is its public key in the engine's allow-list?)")
            elif e in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self._set_disconnected("handshake_failed", "handshake with the engine failed "
                                       "(wrong server key, or security settings differ)")

    def _on_command(self, cmd) -> None:
        kind, arg = cmd
        if kind == "submit":
            if arg.id in self._jobs:
                self._emit("error", arg.id, {"code": "duplicate_job", "retryable": False,
                                             "message": "job id already used", "local": True})
                return
            self._jobs[arg.id] = arg
            if self._welcomed:
                self._send_submit(arg, time.monotonic())
        elif kind == "cancel":
            job = self._jobs.get(arg)
            if job is not None and job.terminal:
                return
            if job is not None and job.state == JobState.PENDING and job.sent_at is None:
                self._job_end(job, "cancelled", {"at_step": None, "local": True})
                return
            self._send({"type": "cancel", "job_id": arg}, track_as=("cancel", arg))
        elif kind == "cancel_all":
            for job in list(self._jobs.values()):
                if not job.terminal and job.state == JobState.PENDING and job.sent_at is None:
                    self._job_end(job, "cancelled", {"at_step": None, "local": True})
            self._send({"type": "cancel", "all": True}, track_as=("cancel", None))
        elif kind == "fetch":
            self._send({"type": "fetch", "job_id": arg}, track_as=("fetch", arg))
        elif kind == "unload":
            self._send({"type": "unload"}, track_as=("unload", None))
        elif kind == "status":
            h = {"type": "status"}
            if arg is not None:
                h["job_ids"] = list(arg)
            self._send(h, track_as=("status", None))

    def _send_submit(self, job: _Job, now: float) -> None:
        if self._send(dict(job.header), job.blobs, track_as=("submit", job.id)):
            job.sent_at = now
            job.epoch = self.epoch

    def _timers(self, now: float) -> None:
        if not self._welcomed:
            if now - self._hello_at > (5.0 if self._auth_failed else 0.5):
                self._send_hello(now)
        else:
            if now - self._last_ping > self.ping_interval_s:
                self._last_ping = now
                self._send({"type": "ping"})
            if now - self._last_rx > self.unresponsive_s:
                self._set_disconnected("engine_unresponsive", f"no answer from the engine for "
                                       f"{now - self._last_rx:.1f}s")
        for job in list(self._jobs.values()):
            if job.terminal:
                continue
            if now - job.submitted > job.deadline_s + 5.0:
                self._local_error(job, "deadline_exceeded", "the job did not finish before its "
                                  "deadline")
            elif job.state == JobState.PENDING:
                if self._welcomed and now >= job.retry_at and (
                        job.sent_at is None or now - job.sent_at > 3.0):
                    self._send_submit(job, now)
                if not self._welcomed and now - job.submitted > self.accept_timeout_s:
                    why = f" ({self._last_problem})" if self._last_problem else ""
                    self._local_error(job, "engine_unreachable", f"could not reach the engine "
                                      f"at {self.endpoint} within {self.accept_timeout_s:g}s"
                                      f"{why}")
            elif not self._welcomed:
                if (self._disconnected_at is not None
                        and now - self._disconnected_at > self.give_up_s):
                    why = f" ({self._last_problem})" if self._last_problem else ""
                    self._local_error(job, "engine_unreachable", f"the engine went away and "
                                      f"did not come back within {self.give_up_s:g}s{why}; "
                                      "job lost")
            elif job.state == JobState.RUNNING and now - job.last_event > self.stall_timeout_s:
                self._local_error(job, "engine_unresponsive", f"no progress for "
                                  f"{self.stall_timeout_s:g}s")
                self._send({"type": "cancel", "job_id": job.id})


from .generate import generate  # noqa: E402 (the blocking helper, re-exported)
