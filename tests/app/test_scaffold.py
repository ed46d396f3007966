"""`fmkit new-plugin`: the package it writes installs, is listed by `fmkit plugins` with its
distribution and version, trains its recipe, and passes its own tests, for every kind; its templates
are real files (Python that parses, importing only fmkit.plugin and fmkit.testing) that fmkit's wheel
ships."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fmkit.app.scaffold import KINDS, TEMPLATES, scaffold

ROOT = Path(__file__).resolve().parents[2]


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FMKIT_PLUGINS", "FMKIT_DISABLE_PLUGINS", "FMKIT_DEBUG")}
    # the site first, then the path this test runs under (the fmkit under test, not another installed one)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", COLUMNS="200")
    return env


def _run(*args: object, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_scaffolded_plugin_installs_is_listed_trains_and_passes_its_own_test(tmp_path):
    env = _env(tmp_path / "site")
    r = _run(sys.executable, "-m", "fmkit", "new-plugin", "acme", "--kind", "coupling", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    pkg = tmp_path / "fmkit-acme"
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", tmp_path / "site", pkg,
             cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "fmkit_acme" / "recipes" / "acme_demo.yaml").is_file()  # package-data in the wheel
    r = _run(sys.executable, "-m", "fmkit", "plugins", "--json", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    acme = next(p for p in doc["plugins"] if p["name"] == "acme")
    assert (acme["distribution"], acme["version"]) == ("fmkit-acme", "0.1.0")
    assert acme["hooks"] == ["register_couplings", "register_recipes"]
    assert any(c["name"] == "acme_sliced" and c["plugin"] == "acme" for c in doc["components"])
    assert doc["recipes"]["acme_demo"]["plugin"] == "acme" and not doc["broken"]
    r = _run(sys.executable, "-m", "fmkit", "train", "acme_demo", "--out", "run", "--set", "trainer.steps=10",
             cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["components"]["couplings.acme_sliced"] == {"plugin": "acme", "distribution": "fmkit-acme",
                                                           "version": "0.1.0"}
    r = _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pkg / "tests", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_scaffolds_a_plugin_whose_generated_tests_pass(kind, tmp_path, monkeypatch):
    name = f"t_{kind}"
    files = scaffold(name, kind, tmp_path / "plugin")
    assert {f.name for f in files} >= {"pyproject.toml", "plugin.py", "test_recipe.py", f"test_{kind}.py",
                                       f"{name}_demo.yaml"}
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    for mod in [m for m in sys.modules if m.startswith(f"fmkit_{name}")]:
        monkeypatch.delitem(sys.modules, mod)
    tests = []
    for path in sorted((tmp_path / "plugin" / "tests").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"{path.stem}_{kind}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tests += [f for n, f in vars(module).items() if n.startswith("test_") and inspect.isfunction(f)]
    assert len(tests) == 2
    for i, test in enumerate(tests):
        kwargs = {"tmp_path": tmp_path / f"t{i}"} if "tmp_path" in inspect.signature(test).parameters else {}
        for p in kwargs.values():
            p.mkdir()
        test(**kwargs)


def test_the_python_templates_parse_and_import_only_the_plugin_api():
    """The templates are real Python (placeholders are identifiers), so linters read them, and what they
    import from the core is fmkit.plugin and fmkit.testing alone."""
    found = sorted(TEMPLATES.rglob("*.py"))
    assert len(found) == 1 + 3 * len(KINDS), [str(p) for p in found]  # test_recipe.py + plugin, module, test per kind
    for path in found:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                if n == "fmkit" or n.startswith("fmkit."):
                    assert n in ("fmkit.plugin", "fmkit.testing"), f"{path.relative_to(TEMPLATES)} imports {n}"


def test_a_generated_file_holds_no_placeholder_and_no_doubled_brace(tmp_path):
    for kind in KINDS:
        for f in scaffold("acme", kind, tmp_path / kind):
            text = f.read_text()
            assert not any(p in text for p in ("__plugin__", "__kind__", "__desc__", "{{", "}}")), (kind, f.name)


def test_the_wheel_of_fmkit_ships_the_templates(tmp_path):
    src = tmp_path / "src"  # a copy: pip builds in the source tree, and the checkout stays as it is
    shutil.copytree(ROOT / "core", src / "core", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps", *isolation, "-w",
             tmp_path / "wheel", src, cwd=tmp_path, env=_env(tmp_path / "site"))
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "wheel").glob("fmkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"fmkit/app/scaffold_templates/{p.relative_to(TEMPLATES).as_posix()}" for p in TEMPLATES.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert len(want) == 4 + 3 * len(KINDS) and want <= names, sorted(want - names)
