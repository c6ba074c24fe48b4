"""No import circles inside `trainables` and `study`.

The graph is read from the source with :mod:`ast`, so that every import counts: module-level
ones, those inside functions, and those under ``if TYPE_CHECKING:`` (a circle hidden in a
function or behind TYPE_CHECKING is still a circle in the design).

An import of ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so it is an edge to each
of them too, except to a package that contains the importing module: that one has begun before
the module itself, and importing one of its submodules needs only that it has begun.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("trainables", "study")


def module_files(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of `packages` (a package is named by
    its ``__init__.py``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(target, names imported from it, line) of every import statement in the file."""
    package = module if _is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..a import b`
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [alias.name for alias in node.names], node.lineno


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, inside `modules` only."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module, path in modules.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if _is_package(path):
            ancestors.add(module)
        for target, names, line in _imports(module, path):
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            needs_target_itself = len(submodules) < len(names) or not names
            for full in [target, *submodules]:
                parts = full.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix not in modules or prefix == module:
                        continue
                    passing_through = prefix != full or (full == target and not needs_target_itself)
                    if passing_through and prefix in ancestors:
                        continue
                    graph[module].setdefault(prefix, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(component: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    """The edges inside one circle, as `a -> b (a's file:line)`."""
    members = set(component)
    edges = [f"  {a} -> {b} ({modules[a].relative_to(REPO)}:{line})"
             for a in component for b, line in sorted(graph[a].items()) if b in members]
    return "\n".join([" <-> ".join(component), *edges])


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """A circle through a function-level import, one through TYPE_CHECKING, and no false
    circle from a submodule importing its sibling while its package imports both."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\nfrom pkg.sub.c import C\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\nfrom .d import D\n")
    (pkg / "sub" / "c.py").write_text("from pkg.sub.d import D\nfrom . import d\n")
    (pkg / "sub" / "d.py").write_text("X = 1\n")
    (pkg / "e.py").write_text("from pkg.sub.d import X\n")  # runs pkg.sub's __init__: an edge to it
    modules = module_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert set(graph["pkg.e"]) == {"pkg.sub", "pkg.sub.d"}
    assert set(graph["pkg.sub.c"]) == {"pkg.sub.d"}


def test_no_import_circles_in_trainables_and_study():
    modules = module_files()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "import circles:\n" + "\n".join(describe(c, graph, modules) for c in found)


if __name__ == "__main__":  # python tests/trainables/test_imports.py: print the circles
    _modules = module_files()
    _graph = import_graph(_modules)
    for _component in cycles(_graph):
        print(describe(_component, _graph, _modules))
