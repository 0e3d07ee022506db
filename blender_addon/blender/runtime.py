"""The one place that holds live state: the engine client, the job board and the local engine
process. Created by registry.register(), dropped by registry.unregister()."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from urllib.parse import urlsplit

import bpy

from ..core import requests as rq
from ..core.engine_process import EXITED, STARTING, EngineProcess
from ..core.errors import UserError
from ..core.jobs import JobBoard, JobState
from . import ADDON_ID

# errors that a working connection fixes: their boxes clear when the engine answers
CONNECTION_CODES = ("engine_unreachable", "engine_not_started", "engine_lost",
                    "engine_unresponsive", "engine_crashed", "unauthorized", "handshake_failed",
                    "shutting_down")
AUTH_CODES = ("unauthorized", "handshake_failed")
PROBE_INTERVAL = 0.3

log = logging.getLogger(__name__)

_RUNTIME: "Runtime | None" = None
ADDON_VERSION = "0.1.0"


def get() -> "Runtime | None":
    return _RUNTIME


def create() -> "Runtime":
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime()
    return _RUNTIME


def destroy() -> None:
    global _RUNTIME
    rt, _RUNTIME = _RUNTIME, None
    if rt is not None:
        rt.shutdown()


def prefs():
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


def port_open(address: str) -> bool | None:
    """True/False for a loopback tcp address (a refused connect is instant); None if unknown."""
    try:
        parts = urlsplit(address)
        if parts.scheme != "tcp" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            return None
        with socket.create_connection((parts.hostname, parts.port), timeout=0.3):
            return True
    except OSError:
        return False
    except ValueError:
        return None


class KeyFileError(RuntimeError):
    """The CurveZMQ key files in the preferences cannot be used."""

    def __init__(self, error: UserError):
        super().__init__(error.text)
        self.error = error


def curve_keys(p) -> dict:
    """EngineClient's CURVE arguments from the preferences' key files ({} when none set)."""
    server = bpy.path.abspath(p.curve_server_key).strip() if p else ""
    client = bpy.path.abspath(p.curve_client_key).strip() if p else ""
    if not server and not client:
        return {}
    hint = ("Set both Server Public Key (the engine's server.key) and Client Secret Key "
            "(NAME.key_secret) in Preferences > Add-ons > Z-Image Studio.")
    if not server or not client:
        raise KeyFileError(UserError("unauthorized", "Only one CurveZMQ key file is set.",
                                     hint))
    try:
        import zmq.auth
        server_public, _ = zmq.auth.load_certificate(server)
        public, secret = zmq.auth.load_certificate(client)
    except Exception as exc:
        raise KeyFileError(UserError("unauthorized", f"A key file could not be read: {exc}.",
                                     hint)) from None
    if secret is None:
        raise KeyFileError(UserError("unauthorized", f"{os.path.basename(client)} holds no "
                                     "secret key (use NAME.key_secret, not NAME.key).", hint))
    return {"curve_server_key": server_public, "curve_client_keys": (public, secret)}


@bpy.app.handlers.persistent
def on_load_pre(*_args) -> None:
    """Another file is opening: this file's jobs end here (nothing lands in the new file)."""
    rt = get()
    if rt is not None:
        rt.drop_jobs("another file was opened")


def user_dir() -> str:
    """Writable folder for the engine log and preview files."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="", create=True)
    except Exception:       # not installed as an extension (e.g. a legacy add-on path)
        path = os.path.join(tempfile.gettempdir(), "zimage_studio")
        os.makedirs(path, exist_ok=True)
        return path


def _stop_live(why: str) -> None:
    from . import live
    live.stop(why)


def _stop_projection(why: str) -> None:
    from . import project
    project.stop(why)


class Runtime:
    def __init__(self):
        self.board = JobBoard(connect_timeout=10.0)
        self.client = None
        self.address: str | None = None
        self.engine: EngineProcess | None = None
        self.last_snapshot = None
        self.loras_synced = None        # the welcome whose LoRA list the scenes show
        self.notice = ""            # last informational line shown in the panel
        self.last_capture: bytes | None = None   # PNG last sent as context (for tests, UI)
        self._encoder = None        # one worker thread: result PNGs off the main thread
        self._encoding: list = []   # (result effect, future) not handed to the glue yet
        self.auth_problem: str | None = None   # unauthorized / handshake_failed, until welcome
        self._probed_at = 0.0
        self.live = None            # core.live.LiveController while Live is on (blender.live)

    # ---- connection ---------------------------------------------------------------------
    def connect(self, address: str | None = None):
        """Create the client (its I/O thread connects in the background; never blocks)."""
        p = prefs()
        address = (address or (p.address if p else "") or "tcp://127.0.0.1:5555").strip()
        if self.client is not None and self.address == address:
            return self.client
        self.disconnect()
        keys = curve_keys(p)
        from ..vendor.protocol.client import EngineClient
        self.client = EngineClient(address, client_name="blender", client_version=ADDON_VERSION,
                                   host_app="blender", host_version=bpy.app.version_string,
                                   accept_timeout_s=10.0, **keys)
        self.auth_problem = None
        self.client.start()
        self.address = address
        self.board.connection = "connecting"
        self.board.welcome = None
        return self.client

    def disconnect(self) -> None:
        _stop_live("disconnected")
        client, self.client = self.client, None
        for slot in list(self.board.jobs):
            job = self.board.active(slot)
            if job is not None:
                self.board.fail(job, "engine_lost")
        if client is not None:
            try:
                client.close(timeout=1.0)
            except Exception:
                log.exception("closing the engine client")
        self.board.connection = "disconnected"
        self.board.welcome = None

    @property
    def connection(self) -> str:
        if self.client is None:
            return "disconnected"
        if self.board.welcome and self.client.state == "connected":
            return "connected"
        return "connecting" if self.client.state != "disconnected" else "disconnected"

    # ---- local engine -------------------------------------------------------------------
    def start_engine(self) -> EngineProcess:
        p = prefs()
        if p is None:
            raise RuntimeError("add-on preferences are not available")
        if self.engine is not None and self.engine.alive:
            return self.engine
        extra = p.extra_args.split() if p.extra_args.strip() else []
        self.engine = EngineProcess(bpy.path.abspath(p.engine_python), p.address,
                                    p.model.strip(), cwd=bpy.path.abspath(p.engine_dir) or None,
                                    standin=p.standin, extra=extra,
                                    log_path=os.path.join(user_dir(), "engine.log"))
        self.engine.start()
        # a fresh client, so the engine's first welcome is seen
        self.disconnect()
        self.connect(p.address)
        return self.engine

    def stop_engine(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            self._cancel_all_quietly()
            self.disconnect()
            engine.stop()

    @property
    def engine_state(self) -> str:
        if self.engine is None:
            return "none"
        return self.engine.poll()

    # ---- pump step ----------------------------------------------------------------------
    def step(self) -> list:
        """Drain client events into the board; returns the effects for the glue."""
        effects = []
        if self.client is not None:
            for ev in self.client.poll():
                try:
                    if self.live is not None and self.live.handle(ev):
                        continue            # a live frame: blender.live draws it
                    effects.extend(self.board.handle(ev))
                except Exception:
                    log.exception("handling %r", ev)
                if ev.kind == "welcome":
                    self._connected()
                elif ev.kind == "disconnected":
                    reason = (ev.data or {}).get("reason")
                    if reason in AUTH_CODES:
                        self.auth_problem = reason
                elif ev.kind == "unloaded":
                    self.notice = rq.unloaded_notice(ev.data.get("freed_bytes"))
        effects.extend(self.board.tick())
        effects.extend(self._fail_unreachable())
        effects = self._encode_results(effects)
        if self.engine is not None and self.engine.poll() == EXITED:
            self.notice = self.engine.exit_message
        for eff in effects:
            if eff.kind == "failed" and self.client is not None:
                try:
                    self.client.cancel(eff.job.job_id)   # stop tracking; no late result
                except Exception:
                    pass
        return effects

    def _connected(self) -> None:
        """A welcome: the engine runs; notices and errors about the connection are stale."""
        if self.engine is not None:
            self.engine.mark_running()
        self.auth_problem = None
        if self.notice in ("Engine starting...", "Engine stopped"):
            self.notice = ""
        err = self.board.last_error
        if err is not None and err.code in CONNECTION_CODES:
            self.board.last_error = None
        for job in self.board.jobs.values():
            if job.error is not None and job.error.code in CONNECTION_CODES:
                job.error = None

    def _fail_unreachable(self) -> list:
        """Jobs waiting for a connection fail at once when the engine refused our key, or
        when nothing listens on a loopback address (a refused connect is instant), instead
        of after the connect timeout."""
        waiting = [j for j in self.board.jobs.values() if j.phase == JobState.PENDING]
        if not waiting or self.connection == "connected":
            return []
        code = self.auth_problem
        if code is None:
            now = time.monotonic()
            starting = self.engine is not None and self.engine.poll() == STARTING
            if starting or now - self._probed_at < PROBE_INTERVAL or not self.address:
                return []
            self._probed_at = now
            if port_open(self.address) is not False:
                return []
            code = "engine_unreachable"
        return [self.board.fail(job, code) for job in waiting]

    def drop_jobs(self, why: str) -> None:
        """Cancel every job in flight (nothing of theirs is applied)."""
        _stop_live(why)
        _stop_projection(why)
        for slot in list(self.board.jobs):
            job_id = self.board.cancel(slot)
            if job_id and self.client is not None:
                try:
                    self.client.cancel(job_id)
                except Exception:
                    pass
            job = self.board.jobs.get(slot)
            if job_id and job is not None:
                job.message = f"Cancelled: {why}"
            if job is not None:         # its image names mean nothing in the next file
                for key in ("original", "mask", "encoded", "result_images"):
                    job.context.pop(key, None)
        self._encoding.clear()

    def _encode_results(self, effects: list) -> list:
        """Result effects wait here while a worker thread encodes their PNGs (zlib on a
        1024² image would stall Blender for ~100 ms); they reach the glue, which only packs
        the bytes, on a later tick. A job cancelled meanwhile is dropped."""
        out = []
        for eff in effects:
            if eff.kind != "result":
                out.append(eff)
                continue
            from . import apply
            if self._encoder is None:
                from concurrent.futures import ThreadPoolExecutor
                self._encoder = ThreadPoolExecutor(1, thread_name_prefix="zimage-png")
            model = str(((self.board.welcome or {}).get("engine") or {}).get("model") or "") \
                or eff.job.context.get("model", "")
            try:
                future = self._encoder.submit(apply.encode_results, eff.job, model)
            except RuntimeError:        # shutting down: encode on apply instead
                out.append(eff)
                continue
            self._encoding.append((eff, future))
        for item in list(self._encoding):
            eff, future = item
            if not future.done():
                continue
            self._encoding.remove(item)
            if not eff.job.active:          # cancelled while encoding: apply nothing
                continue
            try:
                eff.job.context["encoded"] = future.result()
            except Exception:               # the apply encodes again and reports the error
                log.exception("encoding the result")
            out.append(eff)
        return out

    @property
    def busy(self) -> bool:
        return (self.board.busy or bool(self._encoding)
                or (self.engine is not None and self.engine.state == STARTING))

    def _cancel_all_quietly(self) -> None:
        """Best effort on the way out: the engine may already be gone."""
        if self.client is not None:
            try:
                self.client.cancel_all()
            except Exception:
                pass

    def shutdown(self) -> None:
        self._cancel_all_quietly()
        self.disconnect()
        self._encoding.clear()
        if self._encoder is not None:
            self._encoder.shutdown(wait=False, cancel_futures=True)
            self._encoder = None
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
