"""The engine's model download for the panel (no bpy): the protocol's bounded parse and its
one line (protocol/download.py), as a fraction and a text for a progress bar."""

from __future__ import annotations

try:        # the built add-on carries protocol/ as vendor/protocol/
    from ..vendor.protocol import download as _download
except ImportError:     # running from the checkout (tests)
    from protocol import download as _download


def download_report(engine_info: dict | None) -> dict | None:
    """welcome["engine"] -> {"fraction", "text"} while the engine downloads, else None."""
    d = _download.parse(engine_info)
    if d is None:
        return None
    return {"fraction": _download.fraction(d), "text": _download.describe(d)[:200]}
