#!/usr/bin/env python3
"""Build the installable Krita plugin zip of krita_plugin/ (Tools > Scripts > Import Python
Plugin from File...).

    python scripts/build_krita_plugin.py                  # all platforms -> dist/zimage_krita-<v>.zip
    python scripts/build_krita_plugin.py --platforms linux-x64 --out /tmp/k.zip
    python scripts/build_krita_plugin.py --no-wheels      # for a Krita whose Python has pyzmq

The zip holds, at its root, what Krita's pykrita folder wants:
* zimage_krita.desktop and the zimage_krita/ package (no __pycache__);
* zimage_krita/vendor/protocol/: protocol/*.py (+ PROTOCOL.md), imports made package-relative
  (the same rewrite as scripts/build_addon.py, reused from it);
* zimage_krita/addon_core/: the host-neutral modules of blender_addon/core (job board, error
  texts, size limits, history record, engine process), copied unchanged: both hosts run the
  same logic;
* zimage_krita/wheels/: pyzmq wheels for the Pythons Krita 5 runs on: cp310, cp311 (Debian
  12's krita) and cp312-abi3 (3.12 and later), per platform. The plugin unpacks the one that
  fits on first use (core/deps.py).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "krita_plugin"
PACKAGE = "zimage_krita"
SHARED_CORE = ROOT / "blender_addon" / "core"
# blender_addon/core modules that know nothing about Blender (pixels.py is Blender's float
# buffers, not needed here)
SHARED_MODULES = ("__init__.py", "engine_process.py", "errors.py", "history.py", "jobs.py",
                  "requests.py")
PYTHON_TAGS = ("310", "311", "312")   # 3.12 -> the abi3 wheel, also loaded by 3.13+
SKIP_DIRS = {"__pycache__", ".pytest_cache", "wheels", "vendor", "addon_core", ".deps"}

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_addon  # noqa: E402  (one copy of the protocol rewrite and the platform tags)


def version() -> str:
    text = (PLUGIN / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^VERSION = "([^"]+)"', text, re.MULTILINE)
    if not m:
        raise SystemExit(f"no VERSION in {PACKAGE}/__init__.py")
    return m.group(1)


def _wheel_matches(name: str, py: str, platform: str) -> bool:
    parts = name[:-4].split("-")
    if len(parts) < 5 or parts[0] != "pyzmq" or parts[1] != build_addon.PYZMQ_VERSION:
        return False
    python_tag, abi, plat = parts[-3:]
    if not build_addon._plat_ok(platform, plat):
        return False
    return abi == "abi3" if py == "312" else python_tag == f"cp{py}"


def fetch_wheels(platforms: list[str], cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    found: set[Path] = set()
    for plat in platforms:
        for py in PYTHON_TAGS:
            def have():
                return [p for p in sorted(cache.glob("pyzmq-*.whl"))
                        if _wheel_matches(p.name, py, plat)]
            if not have():
                cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                       "--no-deps", "--python-version", py, "--implementation", "cp", "-q",
                       "-d", str(cache), f"pyzmq=={build_addon.PYZMQ_VERSION}"]
                for t in build_addon.PLATFORMS[plat]:
                    cmd += ["--platform", t]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(f"pip download failed for {plat} / Python {py}:\n"
                                     f"{res.stderr[-2000:]}")
            if not have():
                raise SystemExit(f"no pyzmq wheel for {plat} / Python {py}")
            found.add(have()[0])
    return sorted(found, key=lambda p: p.name)


def plugin_files() -> list[Path]:
    files = []
    for p in sorted(PLUGIN.rglob("*")):
        rel = p.relative_to(PLUGIN)
        if p.is_dir() or any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if p.suffix in (".pyc", ".pyo"):
            continue
        files.append(p)
    return files


def build(out: Path, platforms: list[str] | None, cache: Path) -> Path:
    wheels = fetch_wheels(platforms, cache) if platforms else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    entries: list[tuple[str, object]] = [(p.relative_to(PLUGIN).as_posix(), p)
                                         for p in plugin_files()]
    entries.append((f"{PACKAGE}/vendor/__init__.py",
                    '"""Vendored copies of the project\'s protocol (see build_krita_plugin.py)."""\n'))
    entries += [(f"{PACKAGE}/vendor/protocol/{name}", text)
                for name, text in build_addon.protocol_files().items()]
    entries += [(f"{PACKAGE}/addon_core/{name}", SHARED_CORE / name) for name in SHARED_MODULES]
    entries += [(f"{PACKAGE}/wheels/{w.name}", w) for w in wheels]
    # Krita's importer finds the package by its directory entry ("zimage_krita/"), so every
    # folder gets one
    folders = sorted({"/".join(name.split("/")[:i]) + "/" for name, _ in entries
                      for i in range(1, name.count("/") + 1)})
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder, b"")
        for name, src in entries:
            if isinstance(src, Path):
                zf.write(src, name)
            else:
                zf.writestr(name, src)
    tmp.replace(out)
    print(f"built {out} ({PACKAGE} {version()}, {len(wheels)} wheels, "
          f"platforms: {', '.join(platforms or []) or 'none (pyzmq must be there)'})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="zip to write (default dist/zimage_krita-<version>.zip)")
    ap.add_argument("--platforms", default="all",
                    help="comma list of " + ", ".join(build_addon.PLATFORMS) + " or 'all'")
    ap.add_argument("--no-wheels", action="store_true", help="bundle no pyzmq wheels")
    ap.add_argument("--wheel-cache", type=Path, default=ROOT / ".whl")
    args = ap.parse_args(argv)
    out = args.out or ROOT / "dist" / f"{PACKAGE}-{version()}.zip"
    if args.no_wheels:
        platforms = None
    elif args.platforms == "all":
        platforms = list(build_addon.PLATFORMS)
    else:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = set(platforms) - set(build_addon.PLATFORMS)
        if unknown:
            ap.error(f"unknown platforms: {', '.join(sorted(unknown))}")
    build(out, platforms, args.wheel_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
