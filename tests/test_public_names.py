"""Every fmkit name the documentation uses resolves: ``fmkit.X.Y`` written in README.md, docs/ and
the plugins' READMEs, and the names their code blocks import (``from fmkit.plugin import A, B``).
A rename inside the core that forgets the docs (or a public name dropped) fails here, naming both."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]
DOTTED = re.compile(r"(?<![\w./-])fmkit(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from (fmkit(?:\.\w+)*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$", re.M)


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _names() -> dict[str, str]:
    found: dict[str, str] = {}
    for doc in DOCS:
        text = doc.read_text()
        for m in DOTTED.finditer(text):
            name = m.group(0).rstrip(".")
            if not re.search(r"\.(md|py|yaml|toml|txt|png|json)$", name):
                found.setdefault(name, doc.name)
        for mod, names in FROM_IMPORT.findall(text):
            for n in re.split(r"[,\s]+", names.strip()):
                if n and n != "as":
                    found.setdefault(f"{mod}.{n}", doc.name)
    return found


def test_the_docs_use_names_that_exist():
    names = _names()
    assert len(names) > 40  # the docs do use the API: a broken pattern would find nothing and pass
    missing = sorted(f"{n} (in {where})" for n, where in names.items() if not _resolve(n))
    assert not missing, "names the docs use that do not resolve:\n" + "\n".join(missing)


def test_the_library_and_plugin_apis_resolve():
    import fmkit
    import fmkit.plugin

    for module in (fmkit, fmkit.plugin):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
