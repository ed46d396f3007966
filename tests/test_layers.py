"""The core's layers import one way only (app -> engine -> flow), and ``import fmkit`` pulls in no
plugin and no heavy optional dependency: both checked on the source, so a new import that breaks
either fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core" / "fmkit"
FORBIDDEN = {"flow": ("fmkit.engine", "fmkit.app", "fmkit.plugin"), "engine": ("fmkit.app", "fmkit.plugin")}
#: package data, not modules of the core: the sources `fmkit new-plugin` renders into a new plugin
TEMPLATES = CORE / "app" / "scaffold_templates"


def core_modules(folder: Path = CORE) -> list[Path]:
    """The core's Python modules under ``folder`` (the scaffold's templates are not among them)."""
    return [p for p in sorted(folder.rglob("*.py")) if TEMPLATES not in p.parents]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "fmkit":  # `from fmkit import app` reaches up as well
                out += [(node.lineno, f"fmkit.{a.name}") for a in node.names]
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    bad = [f"{p.relative_to(CORE)}:{line}: {mod}" for p in core_modules(CORE / layer)
           for line, mod in _imports(p) if mod.startswith(FORBIDDEN[layer])]
    assert not bad, f"{layer}/ must not import {FORBIDDEN[layer]}:\n" + "\n".join(bad)


def test_the_checker_sees_a_reaching_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from fmkit.app.run import build_trainer\n")
    assert _imports(f) == [(2, "fmkit.app.run")]


def test_import_fmkit_loads_no_plugin_and_no_heavy_optional_dependency():
    code = ("import sys, fmkit\n"
            "heavy = ('e3nn', 'rdkit', 'torchvision', 'torchaudio', 'matplotlib', 'tensorboard')\n"
            "print(sorted(m for m in sys.modules if m.startswith('fmkit_') or m.split('.')[0] in heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout



def test_no_core_module_imports_a_plugin():
    """Core never imports a plugin: no module under core/fmkit names a plugin package (fmkit_*), so the
    core installed alone has every import it needs."""
    found = [f"{p.relative_to(CORE)}:{line} imports {name}" for p in core_modules()
             for line, name in _imports(p) if name.split(".")[0].startswith("fmkit_")]
    assert not found, found
    assert len(core_modules()) > 50 and any(TEMPLATES in p.parents for p in CORE.rglob("*.py"))
