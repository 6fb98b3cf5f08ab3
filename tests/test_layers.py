"""The package floors, read from the source with ``ast``: no cycles between modules, no
import that runs upward, no reach into another package's private module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scalepool"

#: Floors, lowest first; a package imports its own modules and anything on a lower floor.
FLOORS = (
    ("units", "_files", "provenance"),
    ("neighbors",),
    ("data",),
    ("models",),
    ("md", "testing", "export"),
    ("metrics",),
    ("train",),
    ("scales",),
    ("search",),
    ("plots",),
    ("studies",),
    ("cli",),
)
LEVEL = {name: level for level, names in enumerate(FLOORS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of scalepool that ``name`` imports (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("scalepool"):
                continue
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in MODULES and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_floor():
    packages = {_package(m) for m in MODULES} - {"", "__main__"}
    assert packages <= set(LEVEL), f"packages without a floor: {sorted(packages - set(LEVEL))}"


def test_no_upward_imports():
    upward = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if _package(a) and _package(b) and LEVEL[_package(b)] > LEVEL[_package(a)]
    ]
    assert not upward, "imports that run up a floor:\n" + "\n".join(sorted(upward))


def test_no_private_reach_in():
    private = [
        f"{a} -> {b}"
        for a, targets in GRAPH.items()
        for b in targets
        if _package(a) != _package(b) and any(part.startswith("_") for part in b.split(".")[2:])
    ]
    assert not private, "imports of another package's private module:\n" + "\n".join(sorted(private))


def test_no_cycles_between_modules():
    # a package's __init__ importing its own modules is not a cycle with them
    edges = {
        a: {b for b in targets if not (MODULES[b].name == "__init__.py" and a.startswith(b + "."))}
        for a, targets in GRAPH.items()
    }
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("bad", ["upward", "private"])
def test_the_checks_see_a_violation(bad, monkeypatch):
    """Negative control: a crafted edge trips each check (the test can fail)."""
    edge = (
        ("scalepool.data._frameset", "scalepool.cli._main")
        if bad == "upward"
        else ("scalepool.scales._pool", "scalepool.data._keys")
    )
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph[edge[0]].add(edge[1])
    check = test_no_upward_imports if bad == "upward" else test_no_private_reach_in
    monkeypatch.setitem(check.__globals__, "GRAPH", graph)
    with pytest.raises(AssertionError, match=edge[1].replace(".", r"\.")):
        check()


def test_no_reference_outside_the_repository():
    """Docs cite files the repository has (an old DESIGN.md lived outside it)."""
    for path in MODULES.values():
        assert "DESIGN.md" not in path.read_text(), f"{path} cites DESIGN.md, which the repository lacks"
