"""Error codes -> a sentence a person understands plus what to do about it.

Codes are the protocol's (protocol/errors.py) plus a few add-on-local ones:
`engine_lost` (the connection dropped while a job ran), `engine_not_started`
(no engine and none configured to start), `unsupported_size` (caught before sending).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserError:
    code: str
    message: str     # what happened
    hint: str        # what to do

    @property
    def text(self) -> str:
        return f"{self.message} {self.hint}".strip()


_HINTS: dict[str, tuple[str, str]] = {
    "engine_unreachable": (
        "The image engine is not running.",
        "Start it in Preferences > Add-ons > Z-Image (Start Local Engine) or check the address."),
    "engine_not_started": (
        "The image engine is not running.",
        "Set the engine's Python in the add-on preferences and press Start Local Engine."),
    "engine_unresponsive": (
        "The image engine stopped answering.",
        "Nothing was applied. Restart the engine and generate again."),
    "engine_lost": (
        "The connection to the image engine was lost during the job.",
        "Nothing was applied. Restart the engine and generate again."),
    "engine_crashed": (
        "The image engine crashed during the job.",
        "Nothing was applied. Restart the engine and generate again."),
    "out_of_memory": (
        "The GPU ran out of memory.",
        "Try a smaller size or fewer images, or press Free VRAM."),
    "unsupported_size": (
        "This image size is not supported.",
        "Pick a preset, or use a multiple of 16 within the engine's limits."),
    "too_large": (
        "The request is too large for the engine.",
        "Use a smaller size or fewer images."),
    "invalid_params": (
        "The engine refused a setting.",
        "Check the size, steps and number of images."),
    "capability_unavailable": (
        "The running engine cannot do this.",
        "Use plain generation, or run an engine whose model supports it."),
    "model_loading": (
        "The engine is still loading its model.",
        "Try again in a moment."),
    "model_unavailable": (
        "The engine could not load its model.",
        "Check the model setting in the add-on preferences and the engine's log."),
    "queue_full": (
        "The engine's queue is full.",
        "Wait for running jobs to finish, then try again."),
    "deadline_exceeded": (
        "The job took too long and was stopped.",
        "Try fewer steps or a smaller size."),
    "shutting_down": (
        "The engine is shutting down.",
        "Start it again, then generate."),
    "unsupported_version": (
        "The engine speaks another protocol version.",
        "Update the add-on or the engine so that both match."),
    "unauthorized": (
        "The engine refused this client's keys.",
        "Check the CURVE keys in the add-on preferences."),
    "internal_error": (
        "The engine hit an internal error.",
        "Try again; if it repeats, check the engine's log."),
    "apply_failed": (
        "The result could not be applied to the scene.",
        "Nothing was changed. Check the active object and try again."),
    "capture_failed": (
        "The viewport could not be captured.",
        "Add a camera or open a 3D viewport, then try again."),
}


def explain(code: str | None, detail: str | None = None, **fmt) -> UserError:
    """A UserError for a code; `detail` (the engine's own sentence) is kept when it adds
    information, e.g. which field was wrong."""
    code = code or "internal_error"
    message, hint = _HINTS.get(code, ("The engine reported an error.",
                                      "Try again; if it repeats, check the engine's log."))
    if code in ("invalid_params", "too_large", "capability_unavailable",
                "model_unavailable", "internal_error") and detail:
        message = f"{message[:-1]}: {detail.rstrip('.')}."
    if code == "unsupported_size" and detail:
        message = f"Unsupported size {detail}."
    if fmt:
        message = message.format(**fmt)
        hint = hint.format(**fmt)
    return UserError(code, message, hint)


def code_for_engine_error(data: dict) -> str:
    """Turn an engine `error` payload into the code the UI explains.

    A size refused by the engine (invalid_params/too_large on params.width/height) becomes
    `unsupported_size`, so the user reads about sizes rather than 'a setting'."""
    code = str(data.get("code") or "internal_error")
    field = str(data.get("field") or "")
    if code in ("invalid_params", "too_large") and field.split(".")[-1] in ("width", "height"):
        return "unsupported_size"
    return code
