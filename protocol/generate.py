"""Blocking convenience for scripts: submit one job and wait for its result."""

from __future__ import annotations

import time
from typing import Any, Callable

from .errors import ProtocolError
from .events import Event


def generate(endpoint: str, params: dict, on_event: Callable[[Event], Any] | None = None,
             timeout: float = 600, *, blobs: dict | None = None, result_format: str = "raw",
             preview_every: int = 0, **client_kwargs) -> Event:
    """Blocking: submit one job and wait. Returns the `result` Event (images, data["seeds"],
    data["timings"]). Raises ProtocolError on error, cancellation or timeout. Ctrl-C (a
    KeyboardInterrupt) cancels the job on the engine before it propagates."""
    client_kwargs.setdefault("client_name", "protocol.generate")
    from .client import EngineClient
    client = EngineClient(endpoint, **client_kwargs).start()
    job_id = None
    try:
        job_id = client.submit(params, blobs, result_format=result_format,
                               preview_every=preview_every,
                               deadline_ms=int(min(timeout, 3600) * 1000))
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                client.cancel(job_id)
                time.sleep(0.1)
                raise ProtocolError("deadline_exceeded", f"no result within {timeout:g}s")
            for ev in client.poll(timeout=min(left, 0.25)):
                if on_event is not None:
                    on_event(ev)
                if ev.job_id != job_id:
                    continue
                if ev.kind == "result":
                    return ev
                if ev.kind == "cancelled":
                    raise ProtocolError("cancelled", f"job cancelled at step "
                                        f"{ev.data.get('at_step')}")
                if ev.kind == "error":
                    raise ProtocolError(ev.data.get("code", "internal_error"),
                                        ev.data.get("message", ""), field=ev.data.get("field"),
                                        retry_after_ms=ev.data.get("retry_after_ms"))
    except KeyboardInterrupt:
        if job_id is not None:
            client.cancel(job_id)
            time.sleep(0.2)   # let the cancel go out before the socket closes
        raise
    finally:
        client.close()
