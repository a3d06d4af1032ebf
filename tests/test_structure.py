"""The shape of the code: no import cycles among idweave's modules, and no module importing
another module's private (``_name``) names.

An import inside a function counts like one at the top of a module: a lazy import that only
dodges a cycle still ties the two modules together. Imports under ``if TYPE_CHECKING:`` are
for the type checker only and do not count. Private *modules* (``idweave.linkage._db``) may be
imported within the package; private *names* may not cross a module boundary.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

# The top-level folders installed as idweave's sub-packages (pyproject's package-dir).
PACKAGES = {"linkage": "idweave.linkage", "blocking": "idweave.blocking", "cli": "idweave.cli",
            "web": "idweave.web"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in PACKAGES.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            mods[package if f.stem == "__init__" else f"{package}.{f.stem}"] = f
    return mods


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``from X import ...`` names."""
    if not node.level:
        return node.module
    parts = module.split(".")
    if MODULES[module].name != "__init__.py":
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _runtime_imports(tree: ast.Module):
    """Every import node not under ``if TYPE_CHECKING:``."""
    def walk(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:  # an else branch runs
                    yield from walk(ast.Module(body=[other], type_ignores=[]))
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from walk(child)
    yield from walk(tree)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str, int]]]:
    """(module -> idweave modules it imports, [(module, from, private name, line)])."""
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for module, path in MODULES.items():
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[module].update(a.name for a in node.names if a.name in MODULES)
                continue
            target = _target(module, node)
            if not target or not target.startswith("idweave"):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in MODULES:  # a module imported from its package
                    edges[module].add(full)
                    continue
                if target in MODULES:
                    edges[module].add(target)
                if alias.name.startswith("_") and target != module:
                    private.append((module, target, alias.name, node.lineno))
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package() -> None:
    edges, _ = _graph()
    assert {"idweave.linkage.pipeline", "idweave.blocking.pairs", "idweave.cli.app"} <= set(MODULES)
    assert "idweave.linkage.project" in edges["idweave.linkage.pipeline"]
    assert "idweave.blocking.rules" in edges["idweave.blocking.pairs"]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph()[0])
    assert cycles == [], "import cycles among idweave's modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_imported_from_another_module() -> None:
    private = _graph()[1]
    assert private == [], "private names imported across modules:\n" + "\n".join(
        f"{m}:{line} imports {name} from {src}" for m, src, name, line in private)


@pytest.mark.parametrize("source, expected", [
    ("from idweave.linkage.graph import _now\n", [("idweave.linkage.graph", "_now")]),
    ("def f():\n    from idweave.linkage.graph import _now\n", [("idweave.linkage.graph", "_now")]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from idweave.linkage.graph import _now\n", []),
    ("from idweave.linkage import _db\n", []),
])
def test_the_walk_finds_private_imports_wherever_they_are(source: str, expected: list) -> None:
    got = []
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            got += [(node.module, a.name) for a in node.names
                    if a.name.startswith("_") and f"{node.module}.{a.name}" not in MODULES]
    assert got == expected


def test_a_cycle_is_found() -> None:
    fake = {"idweave.linkage.pipeline": {"idweave.linkage.project"},
            "idweave.linkage.project": {"idweave.linkage.pipeline"}}
    assert _cycles(fake) == [["idweave.linkage.pipeline", "idweave.linkage.project"]]


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(edges.get(m, ()))
    return seen


def test_every_module_a_run_imports_is_classified_for_the_code_fingerprint() -> None:
    """A module that a run imports either decides stored state (then its code is part of the
    fingerprint that makes the next run full) or is declared unable to."""
    from idweave.linkage.fingerprint import NEUTRAL_MODULES, STATE_MODULES

    run = _reachable(_graph()[0], "idweave.linkage.pipeline")
    files = {MODULES[m].relative_to(ROOT).as_posix() for m in run}
    assert files - set(STATE_MODULES) - set(NEUTRAL_MODULES) == set(), \
        "classify these in linkage/fingerprint.py (STATE_MODULES or NEUTRAL_MODULES)"
    assert [f for f in STATE_MODULES if not (ROOT / f).exists()] == []
    assert set(STATE_MODULES) & set(NEUTRAL_MODULES) == set()
