"""Engine errors carry a protocol error code, so the CLI and the server report them the same way."""

from __future__ import annotations

from protocol.errors import ProtocolError


class EngineError(ProtocolError):
    """A failure the user can act on: bad input, missing or corrupt weights, out of memory."""


class Cancelled(Exception):
    """Raised inside generate() when the caller's should_cancel() turned true; carries the step."""

    def __init__(self, step: int | None):
        super().__init__(f"cancelled at step {step}")
        self.step = step
