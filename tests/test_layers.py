"""The dependency rule of docs/architecture.md, checked on every import statement in the tree."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "protocol": {"torch", "numpy", "bpy", "engine", "PIL", "diffusers", "transformers"},
    "engine": {"bpy", "diffusers", "blender_addon"},
    "blender_addon": {"torch", "engine", "diffusers", "transformers"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layers(package):
    files = [p for p in (ROOT / package).rglob("*.py") if "wheels" not in p.parts]
    assert files or package == "blender_addon"
    bad = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & FORBIDDEN[package])
           for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_protocol_imports_with_heavy_modules_blocked():
    code = (
        "import sys\n"
        "for m in ('torch', 'numpy', 'bpy', 'PIL'): sys.modules[m] = None\n"
        "import protocol, protocol.errors\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(protocol.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('protocol.' + m.name)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
