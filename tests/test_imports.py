"""The package's import graph: no cycle, and each pipeline stage imports only what it may.

Every module is parsed with ``ast`` (nothing is imported), every import counts, at module level or
inside a function, except those under ``if TYPE_CHECKING:``. The rules are the README's code map.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import ndtracker

PACKAGE = Path(ndtracker.__file__).resolve().parent

# Stage -> what it must never import (other stages of the package, or third-party roots).
FORBIDDEN = {
    "detect": {"tracking", "spectra", "store", "reports", "integrations", "torch", "pandas", "pyarrow"},
    "store": {"tracking", "spectra", "detect", "reports", "integrations", "torch"},
    "reports": {"tracking", "spectra", "integrations", "torch"},
    "spectra": {"tracking", "store", "detect", "reports", "integrations"},
    "ground": {"tracking", "spectra", "store", "detect", "reports", "integrations", "torch"},
}
GROUND = {"errors", "checks", "vocabulary", "version"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_package: bool, modules: set[str] = frozenset()) -> set[str]:
    """Every module this tree imports, as absolute names: ``from a import b`` is ``a.b`` when that
    is a module of ``modules``, else ``a`` (the names come from ``a`` itself)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node, module, is_package)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


@functools.cache
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = imported(tree, name, path.name == "__init__.py", set(modules))
        edges[name] = {target for target in names if target in modules and target != name}
    return edges


def third_party(name: str) -> set[str]:
    path = next(p for p in PACKAGE.rglob("*.py") if module_name(p) == name)
    return {n.split(".")[0] for n in imported(ast.parse(path.read_text(encoding="utf-8")), name, False)}


def stage(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) == 1:
        return None
    if len(parts) == 2 and parts[1] in GROUND:
        return "ground"
    return parts[1] if len(parts) > 2 or parts[1] in FORBIDDEN else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_count_and_type_checking_blocks_do_not():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ndtracker.a\n"
        "def f():\n    from ndtracker import b\n"
    )
    assert imported(tree, "ndtracker.x", False, {"ndtracker.a", "ndtracker.b"}) == {"typing", "ndtracker.b"}


def test_no_module_imports_the_package_face():
    offenders = sorted(name for name, targets in graph().items() if "ndtracker" in targets)
    assert offenders == []


@pytest.mark.parametrize("name", sorted(graph()))
def test_each_stage_imports_only_what_it_may(name):
    kind = stage(name)
    if kind not in FORBIDDEN:
        return
    roots = {target.split(".")[1] for target in graph()[name] if target.count(".")}
    roots |= third_party(name)
    assert not roots & FORBIDDEN[kind], f"{name} ({kind}) imports {sorted(roots & FORBIDDEN[kind])}"
