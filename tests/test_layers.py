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


def engine_import_graph() -> dict[str, set[str]]:
    """engine module -> the engine modules it imports, at the top or inside functions alike."""
    modules = {}
    for path in (ROOT / "engine").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_inside_engine():
    graph = engine_import_graph()
    assert "engine.pipeline" in graph and "engine.model.transformer" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_circle_finder_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
