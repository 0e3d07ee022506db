"""One docker's state, without Krita: the engine link, an optional local engine process,
the shared job board and the history. The glue calls these from Qt's main thread; pump() is
driven by a QTimer and never waits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from . import messages, shared
from .link import EngineLink, LinkError
from .requests import KritaSettings

SLOT = "layer"                # the docker runs one job at a time
Effect = shared.jobs.Effect
Record = shared.history.Record


@dataclass
class Entry:
    """A history row: the shared record (prompt, seed, steps, size, model, layer name) plus
    what only Krita has."""
    record: Record
    mode: str = "generate"
    strength: float = 0.6
    seamless: bool = False

    @property
    def label(self) -> str:
        return self.record.image_name

    def to_dict(self) -> dict:
        return {"record": self.record.to_dict(), "mode": self.mode,
                "strength": self.strength, "seamless": self.seamless}

    @classmethod
    def from_dict(cls, data) -> "Entry | None":
        """None for anything that is not a well-formed entry (the store is user-editable)."""
        try:
            r = data["record"]
            rec = Record(prompt=str(r["prompt"])[:4000], seed=int(r["seed"]),
                         steps=int(r["steps"]), width=int(r["width"]),
                         height=int(r["height"]), model=str(r.get("model", ""))[:500],
                         image_name=str(r.get("image_name", ""))[:200], kind="layer",
                         created=float(r.get("created", 0.0)))
            return cls(rec, mode=str(data.get("mode", "generate")),
                       strength=float(data.get("strength", 0.6)),
                       seamless=bool(data.get("seamless", False)))
        except (KeyError, TypeError, ValueError):
            return None

    def recall(self) -> dict:
        """Settings that give the same result again (fixed seed)."""
        out = shared.history.recall_settings(self.record)
        out.update(mode=self.mode, strength=self.strength, seamless=self.seamless)
        return out


class Session:
    def __init__(self, clock=time.monotonic, connect_timeout: float = 8.0):
        self.board = shared.jobs.JobBoard(clock, connect_timeout)
        self.link: EngineLink | None = None
        self.process = None                   # addon_core EngineProcess when we started one
        self.history: list[Entry] = []
        self.notice = ""                      # the status line when no job speaks

    # ---- engine ---------------------------------------------------------------------------
    def connect(self, address: str, server_key_file: str = "", client_key_file: str = "",
                host_version: str = "") -> bool:
        """(Re)connect; False with a notice when the address or keys are unusable."""
        self.disconnect()
        try:
            self.link = EngineLink(address, server_key_file=server_key_file,
                                   client_key_file=client_key_file, host_version=host_version)
        except LinkError as exc:
            self.notice = messages.explain(exc.code, exc.detail).text
            return False
        self.board.connection = "connecting"
        self.notice = f"Connecting to {address}"
        return True

    def disconnect(self) -> None:
        for jid in [j.job_id for j in self.board.jobs.values() if j.active]:
            self.board.cancel(SLOT)
            if self.link is not None:
                self.link.cancel(jid)
        if self.link is not None:
            self.link.close()
            self.link = None
        self.board.connection = "disconnected"
        self.board.welcome = None

    def start_local(self, python: str, folder: str, model: str, address: str,
                    log_path: str | None = None) -> bool:
        """Start `python -m engine serve` (it dies with Krita) and connect to it."""
        self.stop_local()
        proc = shared.engine_process.EngineProcess(python, address, model, cwd=folder or None,
                                                   log_path=log_path)
        try:
            proc.start()
        except (OSError, ValueError) as exc:
            self.notice = messages.explain("engine_not_started").message + f" ({exc})"
            return False
        self.process = proc
        ok = self.connect(address)
        if ok:
            self.notice = "Starting the local engine (loading the model)"
        return ok

    def stop_local(self) -> None:
        if self.process is not None:
            self.disconnect()
            self.process.stop(timeout=3.0)
            self.process = None

    @property
    def connected(self) -> bool:
        return self.board.connection == "connected" and self.board.welcome is not None

    def engine_line(self) -> str:
        w = self.board.welcome or {}
        eng = w.get("engine") or {}
        if self.connected:
            state = eng.get("state") or "ready"
            if state == "loading":
                return "Engine: loading the model"
            where = f"{eng.get('model') or '?'} on {eng.get('device') or '?'}"
            return f"Engine: {where}" + ("" if state == "ready" else f" ({state})")
        if self.process is not None and self.process.state == "exited":
            return self.process.exit_message
        if self.link is None:
            return "Engine: not connected"
        return f"Engine: connecting to {self.link.address}"

    def limits(self):
        return shared.requests.EngineLimits.from_welcome(self.board.welcome)

    def caps(self) -> set[str] | None:
        return shared.requests.capabilities(self.board.welcome) if self.connected else None

    # ---- jobs -----------------------------------------------------------------------------
    @property
    def job(self):
        return self.board.jobs.get(SLOT)

    @property
    def busy(self) -> bool:
        return self.board.active(SLOT) is not None

    def submit(self, request, context: dict):
        """Send a built request; the job (or None with a notice)."""
        if self.link is None:
            self.notice = messages.explain("engine_unreachable").text
            return None
        if self.busy:
            self.notice = "A job is running; cancel it or wait."
            return None
        job_id = self.link.submit(request.params, request.blobs)
        self.notice = ""
        return self.board.submit(SLOT, job_id, request.params, context)

    def cancel(self) -> bool:
        """Cancel now: nothing of this job is applied, whatever the engine still sends."""
        job_id = self.board.cancel(SLOT)
        if job_id and self.link is not None:
            self.link.cancel(job_id)
        return job_id is not None

    def fail(self, job, code: str, detail: str | None = None) -> Effect:
        effect = self.board.fail(job, code, detail)
        job.error = messages.localize(job.error)
        self.board.last_error = job.error
        return effect

    def complete(self, job, entries: list[Entry]) -> None:
        self.board.complete(job)
        self.history[:0] = entries
        del self.history[shared.history.MAX_ENTRIES:]

    def pump(self) -> list[Effect]:
        """Drain the link's events (never blocks) and run the time-based checks."""
        effects: list[Effect] = []
        if self.link is not None:
            for event in self.link.poll():
                effects += self.board.handle(event)
                if event.kind == "welcome" and self.process is not None:
                    self.process.mark_running()
                elif event.kind == "disconnected" and event.data.get("reason") in (
                        "unauthorized", "unsupported_version", "bad_endpoint"):
                    code = event.data["reason"]
                    self.notice = messages.explain(
                        "invalid_params" if code == "bad_endpoint" else code,
                        event.data.get("message")).text
        for effect in self.board.tick():       # never reached the engine: drop it there too
            if self.link is not None:
                self.link.cancel(effect.job.job_id)
            effects.append(effect)
        if self.process is not None and self.process.poll() == "exited":
            job = self.board.active(SLOT)
            if job is not None:
                effects.append(self.board.fail(job, "engine_lost"))
        for e in effects:
            if e.kind == "failed":
                e.job.error = messages.localize(e.job.error)
                self.board.last_error = e.job.error
        return effects

    def view_key(self) -> tuple:
        """Changes whenever something the docker shows changes."""
        return (self.board.snapshot(), self.notice, self.engine_line(), len(self.history))

    def status_text(self) -> str:
        job = self.job
        if job is not None and job.active:
            return job.status_text()
        if self.notice:
            return self.notice
        if job is not None:
            return job.error.text if job.error is not None else job.message
        return ""

    def record(self, job, settings: KritaSettings, seed: int, layer_name: str) -> Entry:
        p = job.params
        model = ((self.board.welcome or {}).get("engine") or {}).get("model") or ""
        rec = Record(prompt=p["prompt"], seed=int(seed), steps=int(p["steps"]),
                     width=int(p["width"]), height=int(p["height"]), model=str(model),
                     image_name=layer_name, kind="layer")
        return Entry(rec, mode=settings.mode, strength=settings.strength,
                     seamless=settings.seamless)

    def history_json(self) -> str:
        return json.dumps([e.to_dict() for e in self.history], ensure_ascii=False)

    def load_history(self, text: str) -> None:
        try:
            rows = json.loads(text) if text else []
        except ValueError:
            rows = []
        entries = [Entry.from_dict(r) for r in rows if isinstance(r, dict)] \
            if isinstance(rows, list) else []
        self.history = [e for e in entries if e is not None][:shared.history.MAX_ENTRIES]

    def entry_for_layer(self, name: str) -> Entry | None:
        return next((e for e in self.history if e.label == name), None)

    def close(self) -> None:
        self.disconnect()
        if self.process is not None:
            self.process.stop(timeout=3.0)
            self.process = None
