"""The ZeroMQ engine: one I/O thread that owns the ROUTER socket and never runs model code, and
one worker thread that runs one job at a time. See protocol/PROTOCOL.md for the wire format.

    server = EngineServer(pipeline, bind="tcp://127.0.0.1:5555")
    server.start()          # binds, starts both threads, returns at once
    ...
    server.stop()

Threads and data:
- I/O thread: sessions, the fair queue (round-robin across sessions), the result store (TTL +
  byte budget), every socket send. Answers hello/ping/status/cancel/fetch in milliseconds.
- worker thread: pipeline.generate(), previews (pipeline.preview + a tiny JPEG), raw result
  bytes. It talks to the I/O thread only through a queue.Queue plus a socketpair "waker".
- a 2-thread pool encodes PNG results so the worker can start the next job at once.
"""


from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from protocol import PROTOCOL_VERSION
from protocol.errors import CODES, ProtocolError
from protocol.messages import Limits, validate_request
from protocol.waker import Waker
from protocol.wire import SIGNATURE, split_frames

from .state import EngineState, PeerBusy, PeerGone
from .worker import Worker

log = logging.getLogger("engine.server")


class InsecureBindError(ValueError):
    """Refused to bind a non-loopback address without CURVE keys."""


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for tcp://127.x.y.z / [::1] / localhost, ipc:// and inproc://."""
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, DNS names: treat as public



class EngineServer(EngineState, Worker):
    """EngineState (socket-free) + Worker (the GPU thread) + this: the ROUTER socket, CURVE,
    the I/O loop and message parsing."""

    def __init__(self, pipeline=None, *, bind: str = "tcp://127.0.0.1:5555",
                 loader: Callable[[], Any] | None = None, limits: Limits | None = None,
                 curve_secret_file: str | None = None, curve_authorized_dir: str | None = None,
                 heartbeat_ivl_ms: int = 2000, heartbeat_timeout_ms: int = 6000,
                 session_timeout_s: float = 15.0, detach_grace_s: float = 30.0,
                 ping_interval_ms: int = 2000, sndhwm: int = 16, linger_ms: int = 1000,
                 max_sessions: int = 1024, max_sessions_per_peer: int = 16,
                 max_outbox: int = 1000, token: str | None = None,
                 name: str = "zimage-engine"):
        if pipeline is None and loader is None:
            raise ValueError("give a pipeline or a loader")
        curve = curve_secret_file is not None
        if curve and not curve_authorized_dir:
            raise ValueError("CURVE needs an authorized-clients directory")
        if not is_loopback_endpoint(bind) and not curve:
            raise InsecureBindError(
                f"refusing to bind {bind} without CURVE keys: non-loopback addresses need "
                "--curve-dir (create keys with `python -m engine keys --dir DIR`)")
        super().__init__(pipeline, limits=limits, session_timeout_s=session_timeout_s,
                         detach_grace_s=detach_grace_s, ping_interval_ms=ping_interval_ms,
                         max_sessions=max_sessions, max_sessions_per_peer=max_sessions_per_peer,
                         max_outbox=max_outbox, token=token, curve=curve, name=name)
        self.bind = bind
        self._loader = loader
        self.curve_secret_file = curve_secret_file
        self.curve_authorized_dir = curve_authorized_dir
        self.hb = (heartbeat_ivl_ms, heartbeat_timeout_ms)
        self.sndhwm = sndhwm
        self.linger_ms = linger_ms
        self.failed = False           # the I/O loop died of a bug: `serve` exits non-zero
        self._max_message_bytes = (self.limits.max_msg_bytes + self.limits.max_header_bytes
                                   + len(SIGNATURE))
        self.endpoint: str | None = None
        self._waker = Waker()
        self._encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="engine-encode")
        self._stopped = threading.Event()
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._auth = None
        self._auth_mtime = None
        self._io_thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> "EngineServer":
        ctx = self._ctx = zmq.Context()
        sock = self._sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        if "[" in self.bind:           # tcp://[::1]:PORT (libzmq keeps IPv6 off by default)
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.hb[0])
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.hb[1])
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_msg_bytes + self.limits.max_header_bytes
                        + 4096)
        if self.curve_secret_file:
            public, secret = zmq.auth.load_certificate(self.curve_secret_file)
            if not secret:
                raise ValueError(f"{self.curve_secret_file} holds no secret key")
            self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("engine.auth"))
            self._auth.start()
            self._reload_authorized(force=True)
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True   # no zap_domain: pyzmq falls back to domain "*"
        try:
            sock.bind(self.bind)
        except zmq.ZMQError:
            self._close_sockets(0)
            raise
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._worker_thread = threading.Thread(target=self._worker_main, name="engine-worker",
                                               daemon=True)
        self._io_thread = threading.Thread(target=self._io_main, name="engine-io", daemon=True)
        self._worker_thread.start()
        self._io_thread.start()
        log.info("engine %s listening on %s (epoch %s)", self.name, self.endpoint, self.epoch)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        if self._io_thread is None or self._stopped.is_set():
            return
        self._stop.set()
        self._waker.wake()
        self._io_thread.join(grace_s + 5.0)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until the model is loaded (or failed); returns model_state."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.model_state == "loading" and not self._stopped.is_set():
            if end is not None and time.monotonic() > end:
                break
            time.sleep(0.02)
        return self.model_state

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _close_sockets(self, linger_ms: int) -> None:
        if self._sock is not None:
            self._sock.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:
            self._ctx.term()

    def _reload_authorized(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.curve_authorized_dir).st_mtime_ns
        except OSError:
            mtime = None
        if force or mtime != self._auth_mtime:
            self._auth_mtime = mtime
            self._auth.configure_curve(domain="*", location=self.curve_authorized_dir)

    # ---- I/O thread -----------------------------------------------------------------------

    def _io_main(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._waker.r, zmq.POLLIN)
        if self._loader is not None:
            self._work.put(("load", None))
        last_house = 0.0
        try:
            while not self._stop.is_set():
                busy = any(s.outbox and s.attached for s in self.sessions.values())
                ready = dict(poller.poll(20 if busy else 100))
                if self._sock in ready:
                    for _ in range(256):
                        try:
                            frames = self._sock.recv_multipart(zmq.DONTWAIT, copy=False)
                        except zmq.Again:
                            break
                        self._on_frames_safely(frames)
                        # else this name keeps the last message (up to 64 MiB, or a refused
                        # 600 MB one) alive until the next message arrives
                        del frames
                if self._waker.r.fileno() in ready or self._waker.r in ready:
                    self._waker.drain()
                self._drain_events()
                now = self.clock()
                if busy:
                    self._flush_outboxes()
                if now - last_house > 0.1:
                    last_house = now
                    self._housekeeping(now)
                    if self._auth is not None:
                        self._reload_authorized()
                self._dispatch()
        except BaseException:  # a bug in the I/O loop: log, shut down, exit non-zero (serve)
            self.failed = True
            log.exception("engine I/O loop failed")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for s in self.sessions.values():
            self._send(s, {"type": "shutting_down", "grace_ms": 1000}, kind="state")
        if self._running is not None:
            self._running.cancel_reason = "shutdown"
            self._running.cancel_event.set()
        self._work.put(("stop", None))
        if self._worker_thread is not None:
            self._worker_thread.join(2.0)
        self._encoder.shutdown(wait=False, cancel_futures=True)
        self._close_sockets(self.linger_ms)
        self._waker.close()
        self._stopped.set()
        log.info("engine stopped")


    def _transmit(self, frames: list, copy: bool = True) -> None:
        try:
            self._sock.send_multipart(frames, zmq.DONTWAIT, copy=copy)
        except zmq.Again:
            raise PeerBusy() from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerGone() from None
            log.warning("send failed: %s", exc)
            raise PeerGone() from None

    # ---- receiving ------------------------------------------------------------------------

    def _on_frames_safely(self, frames) -> None:
        """One message, whatever it holds, never stops the I/O loop."""
        try:
            self._on_frames(frames)
        except Exception:
            err_id = uuid.uuid4().hex[:8]
            self.counters["internal_errors"] += 1
            log.exception("error %s while handling a message", err_id)
            try:
                self._send_route(frames[0].bytes, {
                    "type": "error", "job_id": None, "code": "internal_error",
                    "message": f"engine error {err_id} (see engine log)", "retryable": False})
            except Exception:
                pass

    def _on_frames(self, frames) -> None:
        self.counters["received"] += 1
        route = frames[0].bytes
        total = sum(len(f) for f in frames[1:])
        if total > self._max_message_bytes:
            # Whole-message bound (MAXMSGSIZE only bounds each frame): refuse, then let go of
            # the frames and hand the heap back to the OS.
            self.counters["rejected_too_large"] += 1
            n = len(frames)
            frames.clear()
            _trim_heap()
            self._send_route(route, {"type": "error", "job_id": None, "code": "too_large",
                                     "message": f"message of {n - 1} frames and {total} bytes, "
                                     f"limit {self._max_message_bytes}", "retryable": False,
                                     "field": "message"})
            return
        if len(frames) < 3:
            self.counters["dropped_malformed"] += 1
            if len(frames) == 2 and frames[1].bytes[:3] == b"ZIE":
                self._error(None, route, "bad_request", "expected at least 2 frames after "
                            "the routing id", field="frames")
            return
        user_id = None
        if self._auth is not None:
            try:
                user_id = frames[1].get("User-Id")
            except (zmq.ZMQError, AttributeError):
                user_id = None
        raw = [f.bytes for f in frames[1:]]
        header = None
        try:
            header, blobs = split_frames(raw, max_header_bytes=self.limits.max_header_bytes,
                                         max_depth=self.limits.max_depth)
            msg = validate_request(header, blobs, self.limits)
        except ProtocolError as exc:
            if exc.field == "signature" and exc.code == "bad_request":
                self.counters["dropped_foreign"] += 1   # not our protocol: no answer
                return
            self.counters["rejected_" + exc.code] += 1
            hdr = header if isinstance(header, dict) else {}
            jid, mid, sid = hdr.get("job_id"), hdr.get("msg_id"), hdr.get("session")
            jid = jid if isinstance(jid, str) and 0 < len(jid) <= 64 else None
            mid = mid if isinstance(mid, str) and 0 < len(mid) <= 64 else None
            sess = self.sessions.get(sid) if isinstance(sid, str) else None
            reply = {"type": "error", "job_id": jid, "code": exc.code, "message": exc.message,
                     "retryable": CODES[exc.code], "field": exc.field}
            if mid is not None:
                reply["re"] = mid
            if exc.code == "unsupported_version":
                reply["versions"] = [PROTOCOL_VERSION]
            if sess is not None and sess.route == route and sess.attached:
                self._send(sess, reply)
            else:
                self._send_route(route, reply)
            return
        msg["_raw_blobs"] = blobs
        try:
            self._handle(route, user_id, msg)
        except Exception:
            err_id = uuid.uuid4().hex[:8]
            log.exception("error %s while handling %s", err_id, msg.get("type"))
            self._error(None, route, "internal_error", f"engine error {err_id} (see engine log)",
                        job_id=msg.get("job_id"), re=msg.get("msg_id"))



def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise, so a refused huge
    message would leave RSS high for good)."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
