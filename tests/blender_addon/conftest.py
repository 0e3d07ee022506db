"""Fixtures for the add-on tests (helpers live in blender_harness.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))   # blender_harness, for tests

from blender_harness import ROOT  # noqa: E402


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> dict:
    """The installable zip, built once per session (all platforms' wheels when PyPI or the
    wheel cache has them; otherwise without wheels, which the venv's pyzmq stands in for)."""
    out = tmp_path_factory.mktemp("dist") / "zimage_studio.zip"
    cmd = [sys.executable, str(ROOT / "scripts" / "build_addon.py"), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wheels = True
    if res.returncode:
        res = subprocess.run(cmd + ["--no-wheels"], capture_output=True, text=True,
                             timeout=120)
        wheels = False
    assert res.returncode == 0, res.stderr
    return {"path": out, "wheels": wheels, "log": res.stdout + res.stderr}


