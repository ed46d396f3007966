"""The shipped plugins and the example plugin reach the core through ``fmkit.plugin`` alone, and their
tests through ``fmkit.plugin`` and ``fmkit.testing`` alone (checked on the source, so an import of a
core module that may move fails here, naming the file and line). Nothing else of fmkit is reached, by
import or by attribute: not ``fmkit.app``, ``fmkit.engine``, ``fmkit.flow`` or ``fmkit.errors``, and
not the library names of ``fmkit`` itself (``fmkit.Trainer``): what a plugin's end-to-end test needs
of them, ``fmkit.testing`` re-exports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIRS = sorted([*(ROOT / "plugins").iterdir(), *(ROOT / "examples").iterdir()])
PACKAGE_ONLY = {"fmkit.plugin"}
TESTS_ALSO = {"fmkit.testing"}


def _files(kind: str) -> list[Path]:
    """Every .py file of the plugins and examples: ``package`` (its package, scripts) or ``tests``."""
    out = []
    for d in PLUGIN_DIRS:
        for p in sorted(d.rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            if ("tests" in p.relative_to(d).parts) == (kind == "tests"):
                out.append(p)
    return out


def core_uses(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, what)`` for each use of the core in ``path`` (or in ``source``, read from it): the
    modules it imports (``fmkit``, ``fmkit.x.y``, ``fmkit.NAME`` for ``from fmkit import NAME``) and the
    attributes it reads from a name bound to ``fmkit`` (``fmkit.X`` for ``import fmkit`` then ``fmkit.X.Y``)."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    out: list[tuple[int, str]] = []
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "fmkit" or a.name.startswith("fmkit."):
                    out.append((node.lineno, a.name))
                    if a.asname is None:
                        bound.add("fmkit")
                    elif a.name == "fmkit":
                        bound.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "fmkit":
                out += [(node.lineno, f"fmkit.{a.name}") for a in node.names]
            elif node.module.startswith("fmkit."):
                out.append((node.lineno, node.module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            out.append((node.lineno, f"fmkit.{node.attr}"))
    return out


def _allowed_in_tests(what: str) -> bool:
    return what in PACKAGE_ONLY | TESTS_ALSO


def test_there_are_plugins_and_tests_to_check():
    assert {"audio", "image", "molecules", "fmkit-timeseries"} <= {d.name for d in PLUGIN_DIRS}
    assert len(_files("package")) > 40 and len(_files("tests")) > 30


@pytest.mark.parametrize("path", _files("package"), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plugin_package_imports_only_fmkit_plugin(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in core_uses(path) if what not in PACKAGE_ONLY]
    assert not bad, "a plugin reaches the core through fmkit.plugin only:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _files("tests"), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plugin_test_imports_only_fmkit_plugin_and_fmkit_testing(path):
    bad = [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in core_uses(path) if not _allowed_in_tests(what)]
    assert not bad, "a plugin's tests use fmkit.plugin and fmkit.testing only:\n" + "\n".join(bad)


DOCS = [ROOT / "docs" / "plugins.md", *sorted(ROOT.glob("plugins/*/README.md")),
        *sorted(ROOT.glob("examples/*/README.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_plugin_docs_code_imports_only_fmkit_plugin_and_fmkit_testing(doc):
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    bad = [f"{doc.relative_to(ROOT)}, block {i}: {what}" for i, code in enumerate(blocks)
           for _, what in core_uses(doc, code) if what not in PACKAGE_ONLY | TESTS_ALSO]
    assert not bad, "the plugin docs show fmkit.plugin and fmkit.testing only:\n" + "\n".join(bad)
    if doc.name == "plugins.md":
        assert len(blocks) >= 5 and sum(1 for c in blocks if "from fmkit.plugin import" in c) >= 4


@pytest.mark.parametrize("source, found, allowed_in_tests", [
    ("import fmkit\nfmkit.app.run.build_trainer\n", [(1, "fmkit"), (2, "fmkit.app")], False),
    ("import fmkit as fm\nfm.engine\n", [(1, "fmkit"), (2, "fmkit.engine")], False),
    ("def f():\n    from fmkit.errors import DataError\n", [(2, "fmkit.errors")], False),
    ("from fmkit import Trainer, app\n", [(1, "fmkit.Trainer"), (1, "fmkit.app")], False),
    ("import fmkit.plugin\nfmkit.plugin.hookimpl\n", [(1, "fmkit.plugin"), (2, "fmkit.plugin")], True),
    ("import fmkit\nfmkit.Trainer\n", [(1, "fmkit"), (2, "fmkit.Trainer")], False),
    ("from fmkit.testing import run_cli\nfrom fmkit.plugin import hookimpl\n",
     [(1, "fmkit.testing"), (2, "fmkit.plugin")], True),
])
def test_the_checker_sees_every_way_to_reach_the_core(tmp_path, source, found, allowed_in_tests):
    f = tmp_path / "m.py"
    f.write_text(source)
    assert sorted(core_uses(f)) == sorted(found)
    assert all(_allowed_in_tests(w) for _, w in found) == allowed_in_tests
