"""The plugin's only door to the engine: protocol/client.py's EngineClient, wrapped.

Every use of the protocol package sits in this module, so a change of the client API
touches one file. Nothing here blocks: EngineClient owns the socket on its own I/O thread,
and poll() only drains its event queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import deps, shared


@dataclass(frozen=True)
class Raw:
    """8-bit pixels, rows top-down, no padding (channels 1 = grey, 3 = RGB)."""
    width: int
    height: int
    channels: int
    data: bytes


class LinkError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _load_curve(server_key_file: str, client_key_file: str) -> dict:
    """CURVE key files as `python -m engine keys` writes them (server.key, NAME.key_secret)."""
    if not server_key_file and not client_key_file:
        return {}
    if not (server_key_file and client_key_file):
        raise LinkError("key_files", "a studio engine needs both key files")
    import zmq.auth
    try:
        server_public, _ = zmq.auth.load_certificate(server_key_file)
        public, secret = zmq.auth.load_certificate(client_key_file)
    except (OSError, ValueError) as exc:
        raise LinkError("key_files", f"cannot read them: {exc}") from None
    if not secret:
        raise LinkError("key_files", f"{client_key_file} holds no secret key")
    return {"curve_server_key": server_public, "curve_client_keys": (public, secret)}


class EngineLink:
    def __init__(self, address: str, *, server_key_file: str = "", client_key_file: str = "",
                 host_version: str = ""):
        problem = deps.ensure_pyzmq()
        if problem:
            raise LinkError("engine_not_started", problem)
        from .. import VERSION
        client = shared.protocol_client()
        try:
            self._client = client.EngineClient(
                address, client_name="krita", client_version=VERSION, host_app="krita",
                host_version=host_version or None, **_load_curve(server_key_file,
                                                                  client_key_file))
        except shared.protocol_errors.ProtocolError as exc:
            raise LinkError("invalid_params", str(exc)) from None
        self._ImageData = client.ImageData
        self.address = address
        self._client.start()

    @property
    def welcome(self) -> dict | None:
        return self._client.welcome

    @property
    def state(self) -> str:
        return self._client.state

    def submit(self, params: dict, blobs: dict[str, Raw]) -> str:
        images = {name: self._ImageData(r.width, r.height, r.channels, "raw", r.data)
                  for name, r in blobs.items()}
        return self._client.submit(params, images, result_format="raw", preview_every=1,
                                   preview_max_side=256)

    def cancel(self, job_id: str) -> None:
        self._client.cancel(job_id)

    def poll(self) -> list:
        return self._client.poll()

    def pending(self) -> list[str]:
        return self._client.pending_jobs()

    def close(self) -> None:
        self._client.close(timeout=1.0)


def rgb_of(image) -> tuple[int, int, bytes]:
    """A result/preview image of the client -> (width, height, RGB8 bytes)."""
    return image.width, image.height, image.to_rgb_bytes()
