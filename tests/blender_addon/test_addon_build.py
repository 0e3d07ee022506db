"""scripts/build_addon.py: the zip's layout, manifest, vendored protocol and wheels."""

from __future__ import annotations

import importlib.util
import re
import tomllib
import zipfile

from blender_harness import ROOT

spec = importlib.util.spec_from_file_location("build_addon", ROOT / "scripts" / "build_addon.py")
build_addon = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_addon)


def test_relativize_rewrites_absolute_imports_and_is_idempotent():
    src = ("from protocol import PROTOCOL_VERSION\n"
           "from protocol.errors import ProtocolError\n"
           "    from protocol import png\n"
           "from .wire import encode\n"
           "import zmq\n")
    out = build_addon.relativize(src)
    assert out == ("from . import PROTOCOL_VERSION\n"
                   "from .errors import ProtocolError\n"
                   "    from . import png\n"
                   "from .wire import encode\n"
                   "import zmq\n")
    assert build_addon.relativize(out) == out


def test_zip_layout_and_manifest(addon_zip):
    with zipfile.ZipFile(addon_zip["path"]) as zf:
        names = set(zf.namelist())
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        vendored = {n: zf.read(n).decode() for n in names
                    if n.startswith("vendor/protocol/") and n.endswith(".py")}
    assert {"__init__.py", "core/jobs.py", "blender/registry.py", "vendor/__init__.py",
            "vendor/protocol/__init__.py", "vendor/protocol/client.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert manifest["id"] == "zimage_studio" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] >= "4.2.0"
    assert set(manifest["permissions"]) == {"network", "files"}
    assert all(len(v) <= 64 and not v.endswith(".") for v in manifest["permissions"].values())
    assert len(manifest["tagline"]) <= 64
    for name, text in vendored.items():
        assert not re.search(r"^\s*(from|import) protocol\b", text, re.M), name
    if addon_zip["wheels"]:
        wheels = manifest["wheels"]
        assert all(w.startswith("./wheels/") and w[2:] in names for w in wheels)
        assert set(manifest["platforms"]) == {"linux-x64", "windows-x64", "windows-arm64",
                                              "macos-x64", "macos-arm64"}
        tags = {w.rsplit("/", 1)[1] for w in wheels}
        for plat in ("manylinux", "win_amd64", "win_arm64", "macosx"):
            assert any("cp311-cp311" in t and plat in t for t in tags), plat
            assert any("cp312-abi3" in t and plat in t for t in tags), plat
    else:
        assert "wheels" not in manifest


# numpy ships with Blender; only pixel-heavy code uses it (texturing: docs/texture-projection.md;
# touch-up)
NUMPY_USERS = {"core/projection.py", "blender/project.py", "blender/project_scene.py",
               "core/touchup.py", "blender/operators.py", "blender/live.py"}


def test_addon_never_touches_sys_path_or_torch():
    for path in (ROOT / "blender_addon").rglob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, path
        assert not re.search(r"^\s*(import|from) (torch|engine)\b", text, re.M), path
        if path.relative_to(ROOT / "blender_addon").as_posix() not in NUMPY_USERS:
            assert not re.search(r"^\s*(import|from) numpy\b", text, re.M), path


def test_core_imports_without_bpy():
    import subprocess
    import sys
    code = ("import sys; sys.modules['bpy'] = None; sys.path.insert(0, %r)\n"
            "import blender_addon, blender_addon.core.jobs, blender_addon.core.requests,"
            " blender_addon.core.history, blender_addon.core.pixels,"
            " blender_addon.core.engine_process, blender_addon.core.errors,"
            " blender_addon.core.projection, blender_addon.core.projection_jobs" % str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True)
