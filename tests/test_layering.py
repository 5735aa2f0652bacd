"""The package's layering: each sub-package imports only the sub-packages its docstring allows (the line
"May import: ..."), no module imports another in a cycle (counting imports inside functions, so no late
import can hide one), sub-packages never import the public façade, and the flat module paths of earlier
versions name the very same module objects as their new homes."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import infinet
from infinet import _compat

PACKAGE = Path(infinet.__file__).parent
LAYERS = ("core", "engine", "inference", "finite", "theory", "scale", "app")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path) -> dict[str, set[str]]:
    """Every module under ``root`` (a package folder) -> the modules of the same package it imports, at any
    depth of its code; ``from p import name`` counts as importing p.name when that is a module."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base == top or base.startswith(top + "."):
                    for alias in node.names:
                        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name == top or a.name.startswith(top + ".")}
        graph[name] = found - {name}
    return graph


def allowed(root: Path) -> dict[str, set[str]]:
    """Sub-package -> the sub-packages it may import, read from its docstring's "May import:" sentence."""
    rules = {}
    for layer in LAYERS:
        init = root / layer / "__init__.py"
        if not init.exists():
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        match = re.search(r"May import:(.*?)(\.\s|\.$|$)", doc, re.S)
        assert match, f"{root.name}.{layer}: its docstring does not say what it may import"
        rules[layer] = {layer} | set(re.findall(rf"{root.name}\.(\w+)", match.group(1)))
    return rules


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def violations(root: Path) -> list[str]:
    graph, rules = imports(root), allowed(root)
    found = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        if own is None:
            continue  # the package's façade (its __init__ and public modules) may import anything
        for target in sorted(targets):
            other = layer_of(target)
            if other is None:
                found.append(f"{module} imports {target}, outside the layers (the public façade or an old path)")
            elif other not in rules[own]:
                found.append(f"{module} ({own}) imports {target} ({other}); {own} may import {sorted(rules[own])}")
    return found + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component) + [min(component)])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_sub_packages_import_only_what_their_docstrings_allow_and_form_no_cycle():
    assert set(allowed(PACKAGE)) == set(LAYERS)
    assert violations(PACKAGE) == []


def test_no_module_level_getattr_in_the_layers():
    """A module ``__getattr__`` that imports on demand is how a cycle was hidden before; the façade's own
    lazy submodules are the one exception."""
    for path in PACKAGE.rglob("*.py"):
        if layer_of(module_name(path, PACKAGE)) is None:
            continue
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), path


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_an_import_against_the_layering_and_a_late_cycle(tmp_path):
    root = tmp_path / "pkg"
    _write(root, {
        "__init__.py": "",
        "core/__init__.py": '"""Base. May import: nothing."""',
        "core/a.py": "from ..engine import b\n",  # upwards: forbidden
        "engine/__init__.py": '"""Engine. May import: :mod:`pkg.core`."""',
        "engine/b.py": "from . import c\n",
        "engine/c.py": "def f():\n    from .b import g\n",  # a late import closing the cycle b -> c -> b
        "engine/d.py": "from pkg import thing\n",  # the façade: forbidden inside a layer
    })
    found = violations(root)
    assert any("pkg.core.a (core) imports pkg.engine.b (engine)" in v for v in found), found
    assert any(v.startswith("import cycle: pkg.engine.b -> pkg.engine.c") for v in found), found
    assert any("pkg.engine.d imports pkg, outside the layers" in v for v in found), found


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_old_flat_paths_are_the_same_modules(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(_compat.MOVED[old])
    assert module.__spec__.name == _compat.MOVED[old]
    assert sys.modules[old] is module


def test_old_paths_of_submodules_and_patching_through_them():
    import infinet.engine.tiling as tiling
    import infinet.layers.dense as old_dense
    from infinet.engine.layers import dense
    from infinet.layers.base import Layer

    assert old_dense is dense and Layer is infinet.Layer
    tiling_old = importlib.import_module("infinet.tiling")
    before = tiling.DEFAULT_TILE
    tiling_old.DEFAULT_TILE = before + 1
    try:
        assert tiling.DEFAULT_TILE == before + 1
    finally:
        tiling_old.DEFAULT_TILE = before


def test_an_old_path_does_not_hide_the_public_name_of_the_same_spelling():
    import infinet.from_torch  # noqa: F401  (the module, by its old path)

    assert callable(infinet.from_torch) and infinet.from_torch is infinet.engine.from_torch.from_torch
