"""pyzmq for Krita's Python: Krita ships none, so the plugin brings wheels (wheels/) and
unpacks the one matching the running interpreter on first use."""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _platform_ok(plat: str) -> bool:
    here = sysconfig.get_platform()            # linux-x86_64, win-amd64, macosx-11.0-arm64
    if here.startswith("linux"):
        return plat.startswith("manylinux") and plat.endswith(here.split("-", 1)[1])
    if here == "win-amd64":
        return plat == "win_amd64"
    if here == "win-arm64":
        return plat == "win_arm64"
    if here.startswith("macosx"):
        return plat.startswith("macosx") and (plat.endswith(here.rsplit("-", 1)[1])
                                              or plat.endswith("universal2"))
    return False


def wheel_fits(name: str, version: tuple = sys.version_info[:2]) -> bool:
    parts = name[:-4].split("-")
    if len(parts) < 5:
        return False
    py, abi, plat = parts[-3:]
    if not _platform_ok(plat):
        return False
    if abi == "abi3":
        return version >= (int(py[2]), int(py[3:]))
    return py == f"cp{version[0]}{version[1]}"


def pick_wheel(wheels_dir: Path = PACKAGE_DIR / "wheels") -> Path | None:
    """The exact-version wheel first, then abi3."""
    names = sorted(p for p in wheels_dir.glob("pyzmq-*.whl") if wheel_fits(p.name))
    names.sort(key=lambda p: "abi3" in p.name)
    return names[0] if names else None


def _target(wheel: Path) -> Path:
    """Unpack beside the plugin; a read-only install folder falls back to the temp dir."""
    for base in (PACKAGE_DIR / ".deps", Path(tempfile.gettempdir()) / "zimage_krita_deps"):
        try:
            base.mkdir(parents=True, exist_ok=True)
            if os.access(base, os.W_OK):
                return base / wheel.name[:-4]
        except OSError:
            continue
    raise OSError("no writable folder to unpack pyzmq into")


def ensure_pyzmq() -> str | None:
    """Make `import zmq` work. Returns None, or a sentence saying why it cannot."""
    try:
        importlib.import_module("zmq")
        return None
    except ImportError:
        pass
    wheel = pick_wheel()
    if wheel is None:
        return (f"This plugin has no pyzmq for Python {sys.version_info[0]}."
                f"{sys.version_info[1]} on {sysconfig.get_platform()}; rebuild it with "
                "scripts/build_krita_plugin.py for this platform.")
    try:
        target = _target(wheel)
        if not (target / ".complete").exists():
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(target)
            (target / ".complete").write_text("ok")
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
        importlib.import_module("zmq")
    except Exception as exc:      # a broken wheel or folder: say so in the docker
        return f"Could not load pyzmq from {wheel.name}: {exc}"
    return None
