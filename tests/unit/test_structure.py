"""The tree's shape: no import circles between livemig's modules, no module over about
500 lines without a reason at its top, and the core never imports a backend or QMP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "livemig"
LIMIT = 500


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """livemig modules imported when ``path`` is imported (not those under TYPE_CHECKING or
    inside functions): ``from a.b import c`` counts a.b.c if that is a module, else a.b."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("livemig"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("livemig"))
    return out


def test_no_import_circles() -> None:
    graph = {m: imports(p) & MODULES.keys() for m, p in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_long_modules_say_why(name: str) -> None:
    path = MODULES[name]
    lines = path.read_text().splitlines()
    if len(lines) > LIMIT:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "over 500 lines" in doc, f"{name} has {len(lines)} lines and no reason at its top"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("livemig.core")))
def test_the_core_imports_no_backend_and_no_qmp(name: str) -> None:
    text = MODULES[name].read_text()
    for forbidden in ("livemig.backends", "livemig.qemu", "qemu.qmp", "livemig.job", "livemig.cli"):
        assert forbidden not in imports(MODULES[name]) and f"import {forbidden}" not in text, (
            name,
            forbidden,
        )
