"""Error codes: the one list shared by the engine, the client library and every host app.

Each error on the wire carries one of these codes plus a human sentence (see PROTOCOL.md).
"""

from __future__ import annotations

# code -> retryable
CODES: dict[str, bool] = {
    "bad_request": False,
    "invalid_params": False,
    "unsupported_version": False,
    "too_large": False,
    "unauthorized": False,
    "forbidden": False,
    "session_unknown": True,
    "unknown_job": False,
    "duplicate_job": False,
    "not_finished": True,
    "result_expired": False,
    "queue_full": True,
    "deadline_exceeded": False,
    "model_loading": True,
    "model_unavailable": False,
    "capability_unavailable": False,
    "out_of_memory": True,
    "engine_crashed": True,
    "shutting_down": True,
    "internal_error": False,
    # LoRA files (the engine's --lora / --lora-dir): each names the file and what is wrong
    "lora_corrupt": False,
    "lora_unsupported": False,
    "lora_invalid": False,
    "lora_incompatible": False,
    # client-local only, never sent by the engine
    "engine_unreachable": True,
    "engine_unresponsive": True,
    "cancelled": False,
}


class ProtocolError(Exception):
    """An error with a code from CODES and a sentence a person can act on."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 retry_after_ms: int | None = None):
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_ms = retry_after_ms

    @property
    def retryable(self) -> bool:
        return CODES[self.code]

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.code}{where}: {self.message}"
