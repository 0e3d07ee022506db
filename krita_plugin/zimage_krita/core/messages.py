"""Error codes -> sentences for the docker. The texts are the Blender add-on's
(addon_core/errors.py) except where they point at Blender's UI, plus Krita's own codes."""

from __future__ import annotations

from . import shared

UserError = shared.errors.UserError

_KRITA: dict[str, tuple[str | None, str]] = {     # code -> (message or None = shared, hint)
    "engine_unreachable": (None, "Press Start Local Engine in the Z-Image docker's Engine "
                                 "section, or check the engine address."),
    "engine_not_started": (None, "Set the engine's Python, folder and model in the docker's "
                                 "Engine section, then press Start Local Engine."),
    "model_unavailable": (None, "Check the model in the docker's Engine section and the "
                                "engine's log."),
    "unauthorized": (None, "Check the CURVE key files in the docker's Engine section."),
    "out_of_memory": (None, "Try a smaller size or fewer images."),
    "apply_failed": ("The result could not be added as a layer.",
                     "Nothing was changed. Keep the document open and try again."),
    "capture_failed": ("The canvas could not be read.",
                       "Open a document and pick a layer, then try again."),
    "no_document": ("There is no open document.", "Create or open one, then generate."),
    "no_selection": ("Inpainting repaints the selection, and nothing is selected.",
                     "Select the area to repaint, then generate again."),
    "key_files": ("The CURVE key files cannot be used.",
                  "Pick the engine's server.key and this client's NAME.key_secret."),
    "unsupported_color": ("This document is not 8-bit RGBA.",
                          "Convert it (Image > Convert Image Color Space: RGB/Alpha, 8-bit "
                          "integer), then generate again."),
}


def explain(code: str | None, detail: str | None = None) -> UserError:
    base = shared.errors.explain(code, detail)
    message, hint = _KRITA.get(base.code, (None, base.hint))
    if message is not None and base.code in ("unsupported_color", "capture_failed",
                                             "apply_failed", "key_files") and detail:
        message = f"{message[:-1]} ({detail})."
    return UserError(base.code, message or base.message, hint)


def localize(error: UserError | None) -> UserError | None:
    """A UserError made by the shared job board -> the same code in Krita's words."""
    if error is None or error.code not in _KRITA:
        return error
    message, hint = _KRITA[error.code]
    return UserError(error.code, message or error.message, hint)
