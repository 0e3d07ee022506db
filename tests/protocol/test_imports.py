"""protocol/ must import with torch, numpy, PIL, bpy and engine unavailable."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = r"""
import sys
for name in ("torch", "numpy", "PIL", "bpy", "engine"):
    sys.modules[name] = None          # any import of these now raises ImportError
import protocol, protocol.errors, protocol.wire, protocol.messages, protocol.png
import protocol.client, protocol.cli, protocol.request, protocol.connection
import protocol.events, protocol.jobs, protocol.generate
from protocol.client import EngineClient, Event, ImageData, generate
c = EngineClient("tcp://127.0.0.1:1")
c.start(); c.close()
img = ImageData(2, 1, 3, "raw", bytes(6))
assert img.to_png_bytes({"a": "b"}).startswith(b"\x89PNG")
heavy = [m for m in ("torch", "numpy", "PIL", "bpy", "engine") if sys.modules.get(m)]
assert not heavy, heavy
print("ok")
"""


def test_protocol_imports_without_torch_numpy_pil_bpy():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
