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
        "Start it in Preferences > Add-ons > Z-Image Studio (Start Local Engine) or check the "
        "address."),
    "engine_not_started": (
        "The image engine is not running.",
        "Set the engine's Python in Preferences > Add-ons > Z-Image Studio and press Start "
        "Local Engine."),
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
        "The engine refused this client's key.",
        "Check Client Secret Key in Preferences > Add-ons > Z-Image Studio, and that its "
        "public key is in the engine's authorized_clients folder."),
    "handshake_failed": (
        "The secure handshake with the engine failed.",
        "Check Server Public Key in Preferences > Add-ons > Z-Image Studio (the engine's "
        "server.key), or clear both key files for an engine without keys."),
    "prompt_too_long": (
        "The prompt is too long.",
        "Shorten it; the engine's limit is in its welcome (usually 4,000 characters)."),
    "cannot_hold_material": (
        "The active object cannot hold a material.",
        "Select a mesh object (or an Image Texture node) and generate again."),
    "no_camera": (
        "The scene has no camera.",
        "Add a camera (Add > Camera), or place the image somewhere else."),
    "nothing_to_touch_up": (
        "There is nothing to touch up.",
        "Open a texture in the Image Editor and paint a mask over the part to repaint."),
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


FIELD_HINTS = {
    "prompt": "Shorten the prompt.",
    "negative_prompt": "Shorten the negative prompt.",
    "steps": "Use fewer steps.",
    "num_images": "Ask for fewer images.",
    "seed": "Use a smaller seed.",
}


def explain(code: str | None, detail: str | None = None, **fmt) -> UserError:
    """A UserError for a code; `detail` (the engine's own sentence) is kept when it adds
    information, e.g. which field was wrong."""
    code = code or "internal_error"
    message, hint = _HINTS.get(code, ("The engine reported an error.",
                                      "Try again; if it repeats, check the engine's log."))
    if code in ("invalid_params", "too_large", "capability_unavailable",
                "model_unavailable", "internal_error", "prompt_too_long",
                "cannot_hold_material", "nothing_to_touch_up") and detail:
        message = f"{message[:-1]}: {detail.rstrip('.')}."
    if code == "unsupported_size" and detail:
        message = f"Unsupported size {detail}."
    if code in ("invalid_params", "too_large") and detail:
        field = detail.split(":", 1)[0]
        hint = FIELD_HINTS.get(field, hint)
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




def engine_error_detail(data: dict) -> str | None:
    """The engine's sentence with the field it names ('prompt: must be at most 4000
    characters'), so the panel says which setting was refused."""
    message = str(data.get("message") or "").strip() or None
    field = str(data.get("field") or "").split(".")[-1]
    if field and message and not message.startswith(field):
        return f"{field}: {message}"
    return message
