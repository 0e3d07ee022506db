"""Fixtures for the Krita plugin tests: the built zip, installed the way Krita's "Import
Python Plugin from File" does (unpacked into a pykrita folder), and Krita itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def krita_missing() -> str | None:
    """Why headless Krita cannot run here, or None."""
    for tool, pkg in (("kritarunner", "krita"), ("Xvfb", "xvfb")):
        if shutil.which(tool) is None:
            return (f"{tool} not found (apt-get install {pkg}; scripts/setup.sh test does it "
                    "where apt is usable)")
    if not any(Path(p).is_dir() for p in ("/usr/lib/python3/dist-packages/PyQt5",)):
        return "PyQt5 for Krita's Python is missing (apt-get install python3-pyqt5)"
    return None


@pytest.fixture(scope="session")
def krita_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("krita-dist") / "zimage_krita.zip"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_krita_plugin.py"),
                          "--platforms", "linux-x64", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode:
        pytest.skip(f"cannot build the plugin with pyzmq wheels (PyPI or .whl/ cache "
                    f"needed): {res.stderr.strip()[-300:]}")
    return out


KRITA_IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")


@pytest.fixture(scope="session")
def pykrita_dir(krita_zip, tmp_path_factory) -> Path:
    """The zip installed by Krita's own importer (Tools > Scripts > Import Python Plugin from
    File runs the same code) into a fresh resources folder; its pykrita/ folder."""
    resources = tmp_path_factory.mktemp("krita-resources")
    if KRITA_IMPORTER.is_file():
        res = subprocess.run([sys.executable, str(KRITA_IMPORTER), str(krita_zip),
                              str(resources)], capture_output=True, text=True, timeout=60)
        assert "Imported plugin: Z-Image Studio" in res.stdout, res.stdout + res.stderr
    else:          # no Krita here: the core tests still want the built files
        with zipfile.ZipFile(krita_zip) as zf:
            zf.extractall(resources / "pykrita")
    return resources / "pykrita"
