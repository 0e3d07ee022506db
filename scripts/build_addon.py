#!/usr/bin/env python3
"""Build the installable Blender extension zip of blender_addon/.

    python scripts/build_addon.py                    # all platforms -> dist/zimage_studio-<v>.zip
    python scripts/build_addon.py --platforms linux-x64 --out /tmp/z.zip
    python scripts/build_addon.py --no-wheels        # no pyzmq wheels (only for hosts that
                                                     # already have pyzmq, e.g. test venvs)

What goes into the zip:
* blender_addon/** (no __pycache__);
* protocol/*.py (+ PROTOCOL.md) copied to <addon>/vendor/protocol/, with absolute
  `protocol` imports rewritten to package-relative ones (a no-op once protocol/ uses
  relative imports itself); the add-on never touches sys.path;
* pyzmq wheels, downloaded once with `pip download --only-binary=:all: --no-deps` into a cache
  (.whl/, not committed): cp311 (Blender 4.2-5.0) and the cp312-abi3 wheel that Blender 5.1+
  (Python 3.13) loads, for linux-x64, windows-x64, windows-arm64 and macOS (universal2 covers
  x64 and arm64); listed in the zip's manifest `wheels`, with `platforms`;
* the engine itself as a wheel (engine/ + protocol/, the metadata from pyproject.toml) in
  engine_dist/, for the preferences' "Install Engine" (core/installer.py). Not in the
  manifest's `wheels`: it goes into the engine's own environment, never into Blender.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"
PROTOCOL = ROOT / "protocol"
PYZMQ_VERSION = "27.3.0"
PYTHON_TAGS = ("311", "313")   # 3.11 -> cp311 wheel; 3.13 -> cp312-abi3 wheel
# Blender platform -> pip --platform tags (first match wins on PyPI's side)
PLATFORMS: dict[str, list[str]] = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "windows-arm64": ["win_arm64"],
    "macos-x64": ["macosx_10_15_x86_64"],
    "macos-arm64": ["macosx_11_0_arm64"],
}
SKIP_DIRS = {"__pycache__", ".pytest_cache", "wheels", "vendor", "engine_dist"}

_IMPORT_RE = re.compile(r"^(?P<indent>[ \t]*)from protocol(?P<sub>(?:\.\w+)*) import ",
                        re.MULTILINE)
_BARE_IMPORT_RE = re.compile(r"^[ \t]*import protocol\b", re.MULTILINE)


def relativize(source: str) -> str:
    """`from protocol.x import y` -> `from .x import y`; `from protocol import y` ->
    `from . import y`. Relative imports are left alone, so this is a no-op on a protocol/
    that already uses them. A bare `import protocol...` cannot be rewritten: error."""
    if _BARE_IMPORT_RE.search(source):
        raise SystemExit("protocol/ uses `import protocol...`; use `from . import ...` so it "
                         "can be vendored")

    def sub(m: re.Match) -> str:
        return f"{m['indent']}from .{m['sub'][1:]} import "
    return _IMPORT_RE.sub(sub, source)


def _plat_ok(blender_platform: str, plat: str) -> bool:
    if blender_platform == "linux-x64":
        return plat.startswith("manylinux") and plat.endswith("x86_64")
    if blender_platform == "windows-x64":
        return plat == "win_amd64"
    if blender_platform == "windows-arm64":
        return plat == "win_arm64"
    arch = "x86_64" if blender_platform == "macos-x64" else "arm64"
    return plat.startswith("macosx") and (plat.endswith(arch) or plat.endswith("universal2"))


def _wheel_matches(name: str, py: str, blender_platform: str) -> bool:
    parts = name[:-4].split("-")
    if len(parts) < 5 or parts[0] != "pyzmq" or parts[1] != PYZMQ_VERSION:
        return False
    python_tag, abi, plat = parts[-3:]
    if not _plat_ok(blender_platform, plat):
        return False
    return python_tag == "cp311" if py == "311" else abi == "abi3"


def fetch_wheels(platforms: list[str], cache: Path, quiet: bool = True) -> dict[str, list[Path]]:
    """Blender platform -> wheel files (downloaded into cache if missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for plat in platforms:
        tags = PLATFORMS[plat]
        found: list[Path] = []
        for py in PYTHON_TAGS:
            have = [p for p in sorted(cache.glob("pyzmq-*.whl"))
                    if _wheel_matches(p.name, py, plat)]
            if not have:
                cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
                       "--no-deps", "--python-version", py, "--implementation", "cp",
                       "-d", str(cache), f"pyzmq=={PYZMQ_VERSION}"]
                for t in tags:
                    cmd += ["--platform", t]
                if quiet:
                    cmd.append("-q")
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(f"pip download failed for {plat} / Python {py}:\n"
                                     f"{res.stderr[-2000:]}")
                have = [p for p in sorted(cache.glob("pyzmq-*.whl"))
                        if _wheel_matches(p.name, py, plat)]
            if not have:
                raise SystemExit(f"no pyzmq {PYZMQ_VERSION} wheel for {plat} / Python {py}")
            found.append(have[0])
        out[plat] = found
    return out


def _toml_list(values: list[str]) -> str:
    if not values:
        return "[]"
    return "[\n" + "".join(f'  "{v}",\n' for v in values) + "]"


def render_manifest(template: str, platforms: list[str] | None, wheels: list[str]) -> str:
    text = template.replace("#@platforms", f"platforms = {_toml_list(platforms)}"
                            if platforms else "")
    text = text.replace("#@wheels", f"wheels = {_toml_list(wheels)}" if wheels else "")
    tomllib.loads(text)      # must still parse
    return text


def addon_files() -> list[Path]:
    files = []
    for p in sorted(ADDON.rglob("*")):
        rel = p.relative_to(ADDON)
        if p.is_dir() or any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if p.suffix in (".pyc", ".pyo") or p.name == "blender_manifest.toml":
            continue
        files.append(p)
    return files


def protocol_files() -> dict[str, str]:
    out = {}
    for p in sorted(PROTOCOL.glob("*.py")):
        if p.name == "__main__.py":
            continue
        out[p.name] = relativize(p.read_text(encoding="utf-8"))
    doc = PROTOCOL / "PROTOCOL.md"
    if doc.is_file():
        out["PROTOCOL.md"] = doc.read_text(encoding="utf-8")
    return out


WHEEL_DATE = (2020, 1, 1, 0, 0, 0)   # fixed: the same sources give the same wheel


def _dist_info(project: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}", f"Summary: {project.get('description', '')}",
             f"Requires-Python: {project.get('requires-python', '>=3.11')}"]
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {d}; extra == "{extra}"' for d in deps]
    return "\n".join(lines) + "\n"


def engine_wheel_files() -> dict[str, bytes]:
    """The packages pyproject.toml installs (engine*, protocol*) with their data files."""
    files = {}
    for pkg in ("engine", "protocol"):
        for p in sorted((ROOT / pkg).rglob("*")):
            rel = p.relative_to(ROOT)
            if p.is_dir() or any(part == "__pycache__" or part.startswith(".")
                                 for part in rel.parts):
                continue
            if p.suffix == ".py" or p.name == "PROTOCOL.md" or (
                    p.suffix == ".json" and "configs" in rel.parts):
                files[rel.as_posix()] = p.read_bytes()
    return files


def build_engine_wheel(out_dir: Path) -> Path:
    """A py3-none-any wheel of the engine, written directly (no build backend needed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dist = project["name"].replace("-", "_")
    info = f"{dist}-{project['version']}.dist-info"
    files = engine_wheel_files()
    files[f"{info}/METADATA"] = _dist_info(project).encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: build_addon.py\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dist}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, WHEEL_DATE), data, zipfile.ZIP_DEFLATED)
    return path


def build(out: Path, platforms: list[str] | None, cache: Path) -> Path:
    template = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8")
    manifest = tomllib.loads(template)
    wheels: dict[str, list[Path]] = fetch_wheels(platforms, cache) if platforms else {}
    wheel_files = sorted({w for ws in wheels.values() for w in ws}, key=lambda p: p.name)
    manifest_text = render_manifest(template, platforms,
                                    [f"./wheels/{w.name}" for w in wheel_files])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_text)
        for p in addon_files():
            zf.write(p, p.relative_to(ADDON).as_posix())
        zf.writestr("vendor/__init__.py",
                    '"""Vendored copies of the project\'s own packages (see build_addon.py)."""\n')
        for name, text in protocol_files().items():
            zf.writestr(f"vendor/protocol/{name}", text)
        for w in wheel_files:
            zf.write(w, f"wheels/{w.name}")
        import tempfile
        with tempfile.TemporaryDirectory() as tmpdir:
            engine_whl = build_engine_wheel(Path(tmpdir))
            zf.write(engine_whl, f"engine_dist/{engine_whl.name}")
    tmp.replace(out)
    print(f"built {out} ({manifest['id']} {manifest['version']}, "
          f"{len(wheel_files)} wheels, platforms: {', '.join(platforms or []) or 'any'})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="zip to write (default dist/<id>-<version>.zip)")
    ap.add_argument("--platforms", default="all",
                    help="comma list of " + ", ".join(PLATFORMS) + " or 'all'")
    ap.add_argument("--no-wheels", action="store_true",
                    help="bundle no wheels and declare no platforms")
    ap.add_argument("--wheel-cache", type=Path, default=ROOT / ".whl")
    args = ap.parse_args(argv)
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text(encoding="utf-8"))
    out = args.out or ROOT / "dist" / f"{manifest['id']}-{manifest['version']}.zip"
    if args.no_wheels:
        platforms = None
    elif args.platforms == "all":
        platforms = list(PLATFORMS)
    else:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = set(platforms) - set(PLATFORMS)
        if unknown:
            ap.error(f"unknown platforms: {', '.join(sorted(unknown))}")
    build(out, platforms, args.wheel_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
