"""No module of ``core/fmkit`` imports itself round a circle: the import graph of the whole core (the
top-level modules and ``fmkit/__init__``, ``fmkit.flow``, ``fmkit.engine``, ``fmkit.app`` with its CLI and
built-in plugin), built from the source with ``ast``, has no cycle.

What counts as an edge A -> B: an import statement of module A that names fmkit module B, absolute or
relative (``from .state import State``), at *module level*: at the top of the file or inside a top-level
``if``/``try``/``with`` block, ``if TYPE_CHECKING:`` included. A type-only import does not run, but it is
a dependency the reader follows all the same (a module that types its argument as the class of a module
that imports it is one half of a circle). Imports inside a function body run on a call, not on import,
and are how a module defers a heavy or optional dependency (the CLI's commands do); the strict form,
``import_graph(..., function_level=True)``, counts them too, and the core passes it as well: deferring
an import is not a way round a circle.

``from pkg import name`` is an edge to the module ``pkg.name`` when there is one, else to ``pkg`` (its
``__init__.py``). Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` as well; those implicit
edges are left out, since fmkit's package ``__init__`` files are empty or lazy. ``fmkit/__init__.py``
itself is a node: it names the whole API for type checkers, so a module that imports ``fmkit`` (for its
version, say) closes a circle through it; such a module imports ``fmkit._version`` instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core" / "fmkit"
#: the dotted prefixes checked: the whole core (a cycle within one layer is a cycle within the core)
SCOPES = ("fmkit",)
#: what the whole core holds, part by part: the checker must see each module named and modules of each
#: package (``fmkit.flow.`` is every module below ``fmkit.flow``)
PARTS = {"top level": ("fmkit", "fmkit._version", "fmkit.errors", "fmkit.plugin", "fmkit.testing", "fmkit.__main__"),
         "math": ("fmkit.flow.",), "engine": ("fmkit.engine.",), "application": ("fmkit.app.",),
         "CLI": ("fmkit.app.cli.",), "built-in plugin": ("fmkit.app.builtin.",)}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` under ``root`` (the folder of ``package``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _statements(body: list[ast.stmt], function_level: bool) -> list[ast.stmt]:
    """The statements of ``body`` that run on import (nested blocks opened), plus function bodies' when asked."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if function_level or isinstance(node, ast.ClassDef):  # a class body runs on import
                out += _statements(node.body, function_level)
            continue
        for field in ("body", "orelse", "finalbody"):
            out += _statements(getattr(node, field, []) or [], function_level)
        for handler in getattr(node, "handlers", []) or []:
            out += _statements(handler.body, function_level)
    return out


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules an import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    out = set()
    for alias in node.names:
        sub = f"{pkg}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif pkg in known:
            out.add(pkg)
    return out


def import_graph(root: Path = CORE, package: str = "fmkit", *, function_level: bool = False) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the modules of ``package`` (in folder ``root``); see the module
    docstring for what counts as an import (``function_level``: imports in function bodies too)."""
    files = module_names(root, package)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_targets(n, name, is_package, known)
                                    for n in _statements(tree.body, function_level))) - {name}
    return graph


def cycles(graph: dict[str, set[str]], scope: str) -> list[list[str]]:
    """The import cycles among the modules of ``scope`` (a dotted prefix): each strongly connected set of
    two or more modules, sorted (Tarjan's algorithm on the edges inside the scope)."""
    inside = {m for m in graph if m == scope or m.startswith(scope + ".")}
    edges = {m: sorted(t for t in graph[m] if t in inside) for m in sorted(inside)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def path_round(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest closed walk from the component's first module back to it (who imports whom)."""
    members, start = set(component), component[0]
    edges = {m: sorted(graph[m] & members) for m in component}
    prev: dict[str, str] = {}
    queue = [start]
    while queue:  # breadth-first, inside the component
        v = queue.pop(0)
        for w in edges[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return component  # unreachable for a strongly connected component


@pytest.mark.parametrize("function_level", [False, True], ids=["module-level", "with-function-level"])
@pytest.mark.parametrize("scope", SCOPES)
def test_no_import_cycle(scope, function_level):
    graph = import_graph(function_level=function_level)
    found = cycles(graph, scope)
    assert not found, f"import cycles in {scope}:\n" + "\n".join(
        f"{', '.join(c)} (e.g. {' -> '.join(path_round(c, graph))})" for c in found)


def test_the_graph_resolves_absolute_relative_and_type_only_imports(tmp_path):
    """The checker sees what it claims to: a circle closed by a relative import under TYPE_CHECKING is
    found, a function-level import only in the strict form, and a module of another package not at all."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")
    (pkg / "a.py").write_text("from pkg.sub import c\nimport os\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..b import B\n")
    (pkg / "b.py").write_text("import pkg.a\nclass B: ...\n")
    (pkg / "d.py").write_text("def f():\n    from . import e\n")
    (pkg / "e.py").write_text("from pkg import d\n")
    g = import_graph(pkg, "pkg")
    assert g["pkg.a"] == {"pkg.sub.c"} and g["pkg.sub.c"] == {"pkg.b"} and g["pkg.b"] == {"pkg.a"}
    assert g["pkg.sub"] == {"pkg.sub.c"} and g["pkg.d"] == set() and g["pkg.e"] == {"pkg.d"}
    assert cycles(g, "pkg") == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert path_round(["pkg.a", "pkg.b", "pkg.sub.c"], g) == ["pkg.a", "pkg.sub.c", "pkg.b", "pkg.a"]
    assert cycles(g, "pkg.sub") == []  # the circle leaves the scope
    strict = import_graph(pkg, "pkg", function_level=True)
    assert strict["pkg.d"] == {"pkg.e"}
    assert sorted(cycles(strict, "pkg")) == [["pkg.a", "pkg.b", "pkg.sub.c"], ["pkg.d", "pkg.e"]]


def test_the_core_graph_covers_every_part_of_the_core():
    """A broken parser or a wrong root would find no edges and so no cycles: the graph holds modules of every
    part of the core, each part's modules import others, and the edges known from the source are there."""
    g = import_graph()
    for part, names in PARTS.items():
        mods = [m for m in g if m in names or any(n.endswith(".") and m.startswith(n) for n in names)]
        assert all(n in g for n in names if not n.endswith(".")) and mods, f"the {part} is missing from the graph"
        assert any(g[m] for m in mods), f"no module of the {part} imports another fmkit module"
    assert {"fmkit.engine.evaluation", "fmkit.engine.stream"} <= g["fmkit.engine.trainer"]
    assert "fmkit.flow.state" in g["fmkit.flow.sampling"]
    assert {"fmkit.app.factories", "fmkit.app.plugin_loading"} <= g["fmkit.app.registry"]
    assert {"fmkit._version", "fmkit.app.registry", "fmkit.engine.trainer"} <= g["fmkit"]  # its TYPE_CHECKING list
    strict = import_graph(function_level=True)
    assert "fmkit.app.run" in strict["fmkit.app.cli.train"] - g["fmkit.app.cli.train"]  # a command's lazy import
