"""The one place that holds live state: the engine client, the job board and the local engine
process. Created by registry.register(), dropped by registry.unregister()."""

from __future__ import annotations

import logging
import os
import tempfile

import bpy

from ..core import requests as rq
from ..core.engine_process import EXITED, STARTING, EngineProcess
from ..core.jobs import JobBoard
from . import ADDON_ID

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


def user_dir() -> str:
    """Writable folder for the engine log and preview files."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="", create=True)
    except Exception:       # not installed as an extension (e.g. a legacy add-on path)
        path = os.path.join(tempfile.gettempdir(), "zimage_studio")
        os.makedirs(path, exist_ok=True)
        return path


class Runtime:
    def __init__(self):
        self.board = JobBoard(connect_timeout=10.0)
        self.client = None
        self.address: str | None = None
        self.engine: EngineProcess | None = None
        self.last_snapshot = None
        self.notice = ""            # last informational line shown in the panel
        self.last_capture: bytes | None = None   # PNG last sent as context (for tests, UI)
        self._encoder = None        # one worker thread: result PNGs off the main thread
        self._encoding: list = []   # (result effect, future) not handed to the glue yet

    # ---- connection ---------------------------------------------------------------------
    def connect(self, address: str | None = None):
        """Create the client (its I/O thread connects in the background; never blocks)."""
        p = prefs()
        address = (address or (p.address if p else "") or "tcp://127.0.0.1:5555").strip()
        if self.client is not None and self.address == address:
            return self.client
        self.disconnect()
        from ..vendor.protocol.client import EngineClient
        self.client = EngineClient(address, client_name="blender", client_version=ADDON_VERSION,
                                   host_app="blender", host_version=bpy.app.version_string,
                                   accept_timeout_s=10.0)
        self.client.start()
        self.address = address
        self.board.connection = "connecting"
        self.board.welcome = None
        return self.client

    def disconnect(self) -> None:
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
                    effects.extend(self.board.handle(ev))
                except Exception:
                    log.exception("handling %r", ev)
                if ev.kind == "welcome" and self.engine is not None:
                    self.engine.mark_running()
                elif ev.kind == "unloaded":
                    self.notice = rq.unloaded_notice(ev.data.get("freed_bytes"))
        effects.extend(self.board.tick())
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
