"""The project's host-neutral code, imported from this one place.

In the built plugin these are copies beside this package (scripts/build_krita_plugin.py):
vendor/protocol/ (the client library) and addon_core/ (blender_addon/core's host-neutral
modules: job board, error texts, size limits, history record, engine process), so Krita and
Blender run the same job logic. From the checkout (tests) the originals are used.
"""

from __future__ import annotations

try:
    from ..addon_core import engine_process, errors, history, jobs, requests
    from ..vendor.protocol import errors as protocol_errors, messages as protocol_messages
    BUILT = True
except ImportError:      # running from the checkout
    from blender_addon.core import engine_process, errors, history, jobs, requests
    from protocol import errors as protocol_errors, messages as protocol_messages
    BUILT = False


def protocol_client():
    """protocol.client (needs pyzmq: call deps.ensure_pyzmq() first)."""
    if BUILT:
        from ..vendor.protocol import client
    else:
        from protocol import client
    return client


__all__ = ["engine_process", "errors", "history", "jobs", "requests", "protocol_errors",
           "protocol_messages", "protocol_client", "BUILT"]
