"""The local connection file: how a loopback engine tells its own user's clients a secret.

Like Jupyter's kernel connection file: `python -m engine serve` on a loopback address writes

    <runtime dir>/engine-<host>-<port>.json   {"endpoint": ..., "token": ..., "pid": ...}

readable by its user only (mode 0600, directory 0700), and refuses every connection whose
`hello` does not carry that token. A client of the same user finds the file from the endpoint
alone (token_for), so the add-on, the CLI and scripts need no extra setting; another local
user, or a program that cannot read the user's files, cannot drive the engine or receive its
sessions' images. The file system is the trust boundary: a program running as the same user
can read the file (as it could read the user's images anyway). Over a network use CURVE.

Runtime dir: $ZIMAGE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/zimage, else
~/.local/share/zimage/runtime (%LOCALAPPDATA%\\zimage\\runtime on Windows). Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys

TOKEN_BYTES = 32
# `engine serve` exits with this code when its model did not load (bad path, missing weights,
# offline without a cache), so a host app that started it can point at its model setting
EXIT_MODEL_FAILED = 4


def runtime_dir() -> str:
    if os.environ.get("ZIMAGE_RUNTIME_DIR"):
        return os.environ["ZIMAGE_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "zimage")
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "zimage", "runtime")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "zimage", "runtime")


def path_for(endpoint: str) -> str:
    """The default connection file of an endpoint, e.g. tcp://127.0.0.1:5555 ->
    <runtime dir>/engine-127.0.0.1-5555.json."""
    rest = endpoint.split("://", 1)[-1].replace("localhost", "127.0.0.1")
    name = re.sub(r"[^A-Za-z0-9.]+", "-", rest).strip("-")[:120] or "engine"
    return os.path.join(runtime_dir(), f"engine-{name}.json")


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def write(path: str, endpoint: str, token: str) -> str:
    """Write the file so that only this user can read it; replaces a stale one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps({"endpoint": endpoint, "token": token,
                                 "pid": os.getpid()}).encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read(path: str) -> dict | None:
    """The file's contents, or None if it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return None
    return data


def token_for(endpoint: str, path: str | None = None) -> str | None:
    """The token of the engine at `endpoint` from its connection file, if this user has one."""
    data = read(path or path_for(endpoint))
    return None if data is None else data["token"]


def remove(path: str, token: str) -> None:
    """Delete the file at shutdown, unless another engine has replaced it since."""
    data = read(path)
    if data is not None and data.get("token") == token:
        try:
            os.remove(path)
        except OSError:
            pass
