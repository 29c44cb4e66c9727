"""The house rules on imports, read from the source with ``ast`` (no project module is imported here):

- no module under ``services/<a>/`` imports from ``services/<b>/``: what two services share is contract and
  lives in ``shared/`` (the modules at the ``services/`` root are the composition layer, not a service);
- nothing but ``services/__main__.py`` imports ``services/bootstrap.py`` (the tests may);
- ``shared/`` imports nothing from ``services/``;
- there is no import cycle among the modules of ``services/`` and ``shared/``.

An import counts wherever it is written, at module level or inside a function (it runs when the function
does); one under ``if TYPE_CHECKING:`` does not (it never runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("services", "shared")  # the modules the graph is made of
CLIENTS = ("bench", "tools")  # code beside the project that must not reach into the composition root either
BOOTSTRAP = "services.bootstrap"
MAY_IMPORT_BOOTSTRAP = {"services.__main__"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files(top: str, root: Path = ROOT) -> dict[str, Path]:
    """Every module under ``top`` by dotted name."""
    base = root / top
    if not base.is_dir():
        return {}
    return {module_name(p, root): p for p in sorted(base.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every import statement under ``node``, function bodies included, ``if TYPE_CHECKING:`` bodies not."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the ``else`` of a TYPE_CHECKING test runs
                if isinstance(other, (ast.Import, ast.ImportFrom)):
                    yield other
                else:
                    yield from _import_nodes(other)
        else:
            yield from _import_nodes(child)


def _known(name: str, known: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a known module (``a.b.C`` names module ``a.b`` when C is not one)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in known:
            return candidate
    return None


def imports_of(tree: ast.Module, module: str, known: set[str], is_package: bool = False) -> dict[str, int]:
    """The known modules ``module`` (parsed as ``tree``) imports, each with the line of its first import."""
    found: dict[str, int] = {}
    package = module if is_package else module.rpartition(".")[0]
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from a.b import c``: module a.b.c when there is one, else the name c of module a.b
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for name in names:
            target = _known(name, known)
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def parse_all(tops: tuple[str, ...], root: Path = ROOT) -> dict[str, tuple[ast.Module, bool]]:
    """module → (its syntax tree, whether it is a package's ``__init__``), for every module under ``tops``."""
    files: dict[str, Path] = {}
    for top in tops:
        files.update(python_files(top, root))
    return {m: (ast.parse(p.read_text(), str(p)), p.name == "__init__.py") for m, p in files.items()}


def graph(trees: dict[str, tuple[ast.Module, bool]], known: set[str]) -> dict[str, dict[str, int]]:
    """module → {imported project module: line}."""
    return {m: imports_of(tree, m, known, is_package) for m, (tree, is_package) in trees.items()}


# Parsed once, at collection: on CPython 3.11 an ast.parse after a failed test can trip over an interpreter bug
# ("AST constructor recursion depth mismatch") and hide what the rules found.
TREES = parse_all(PROJECT + CLIENTS)
KNOWN_PROJECT = {m for m in TREES if m.split(".")[0] in PROJECT}
EDGES = graph({m: t for m, t in TREES.items() if m in KNOWN_PROJECT}, KNOWN_PROJECT)


def service_of(module: str, root: Path = ROOT) -> str | None:
    """``x`` for a module under ``services/x/`` (a package); None at the ``services/`` root or elsewhere."""
    parts = module.split(".")
    if parts[0] != "services" or len(parts) < 2 or not (root / "services" / parts[1]).is_dir():
        return None
    return parts[1]


def cycles(edges: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """Each group of modules that import one another in a loop, with one cycle through it as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:  # Tarjan, iterative so a deep graph cannot exhaust the recursion limit
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            advanced = False
            for w in children:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [(group, _closed_path(group, edges)) for group in groups]


def _closed_path(group: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected group: [a, b, ..., a]."""
    members, start = set(group), group[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    return group  # not reached: a strongly connected group has a cycle through each member


def _describe(path: list[str], edges: dict[str, dict[str, int]]) -> str:
    return " → ".join(f"{a} (line {edges[a][b]})" for a, b in zip(path, path[1:])) + f" → {path[-1]}"


# ---- the rules --------------------------------------------------------------------------------------------

def test_no_service_imports_another_service():
    edges = EDGES
    crossings = [f"{m}:{line} imports {t}" for m, targets in sorted(edges.items()) for t, line in targets.items()
                 if service_of(m) and service_of(t) and service_of(m) != service_of(t)]
    assert not crossings, "a service reaches into another (move what they share to shared/):\n" + "\n".join(crossings)


def test_only_the_entry_point_imports_the_composition_root():
    edges = graph(TREES, KNOWN_PROJECT)  # bench/ and tools/ too
    importers = [f"{m}:{targets[BOOTSTRAP]}" for m, targets in sorted(edges.items())
                 if BOOTSTRAP in targets and m not in MAY_IMPORT_BOOTSTRAP]
    assert not importers, f"only services/__main__.py may import {BOOTSTRAP}:\n" + "\n".join(importers)


def test_shared_imports_nothing_from_services():
    edges = EDGES
    reaching = [f"{m}:{line} imports {t}" for m, targets in sorted(edges.items()) if m.split(".")[0] == "shared"
                for t, line in targets.items() if t.split(".")[0] == "services"]
    assert not reaching, "shared/ is contract and may not depend on a service:\n" + "\n".join(reaching)


def test_no_import_cycle():
    edges = EDGES
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(
        f"{_describe(path, edges)}  (the loop takes in {', '.join(group)})" for group, path in found)


# ---- the checker itself -----------------------------------------------------------------------------------

KNOWN = {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "other"}
EVERY_FORM = ast.parse("""
from __future__ import annotations
import typing
from typing import TYPE_CHECKING
import pkg.a
from pkg import b
from .sub import c
from . import sub
from pkg.a import SomeName
if TYPE_CHECKING:
    import other
else:
    import os
if typing.TYPE_CHECKING:
    from pkg.sub.c import Hidden
def later():
    from other import thing
""")
RELATIVE = ast.parse("from .. import a\nfrom ..sub import c")
PACKAGE_RELATIVE = ast.parse("from . import a")


def test_the_checker_reads_every_form_of_import_but_type_checking_only_ones():
    got = imports_of(EVERY_FORM, "pkg.x", KNOWN)
    assert set(got) == {"pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub", "other"}
    assert got["other"] == 17  # from the function, not from the TYPE_CHECKING block on line 11
    assert imports_of(RELATIVE, "pkg.sub.x", KNOWN) == {"pkg.a": 1, "pkg.sub.c": 2}
    assert imports_of(PACKAGE_RELATIVE, "pkg", KNOWN, is_package=True) == {"pkg.a": 1}


def test_the_checker_finds_a_cycle_and_names_its_path():
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 1}}
    [(group, path)] = cycles(edges)
    assert group == ["a", "b", "c"] and path == ["a", "b", "c", "a"]
    assert _describe(path, edges) == "a (line 1) → b (line 2) → c (line 3) → a"
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_checker_tells_services_from_the_composition_layer():
    assert service_of("services.gateway.app") == "gateway"
    assert service_of("services.gateway") == "gateway"
    assert service_of("services.runtime") is None and service_of("services.bootstrap") is None
    assert service_of("shared.bus") is None
    edges = EDGES
    assert edges, "no module found under services/ and shared/"
    assert BOOTSTRAP in edges.get("services.__main__", {}), "the entry point's import of the root is not seen"
