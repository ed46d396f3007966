"""``fmkit new-plugin NAME --kind K``: a plugin package that installs and passes its own tests unchanged.

The package: ``pyproject.toml`` (build-system, version, the ``fmkit`` entry point, package-data for
its recipes), ``fmkit_<name>/plugin.py`` registering one example component of kind K, the
component's module, a recipe that trains with it, and tests that check the component with
:mod:`fmkit.testing` and train the recipe through the CLI.

The files are written from the templates in ``scaffold_templates/`` (package data): real Python,
TOML, YAML and Markdown files, in which ``__plugin__``, ``__kind__`` and ``__desc__`` stand for the
plugin's name, its kind and the component's one-line description (identifiers, so the Python
templates parse and lint as they are). A kind's folder holds its ``plugin.py``, its component's
module and its test; the rest is shared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from fmkit.errors import OutputError, RecipeError

TEMPLATES = Path(__file__).with_name("scaffold_templates")
PLACEHOLDER = re.compile(r"__(plugin|kind|desc)__")


class Example(NamedTuple):
    """One kind's example component: the module it lives in (``fmkit_<name>.<module>``), its one-line
    description, and the line of the demo recipe it sets (``key: value``, replacing that key's line
    or added)."""

    module: str
    description: str
    recipe: str


EXAMPLES: dict[str, Example] = {
    "dataset": Example("data", "2-D points on a noisy spiral", "data: {name: __plugin___spiral, n: 2048}"),
    "model": Example("net", "residual MLP velocity model", "model: {name: __plugin___net, hidden: 32}"),
    "path": Example("paths", "affine path alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)",
                    "path: {name: __plugin___sine}"),
    "coupling": Example("couplings", "pairs by sorting x0 and x1 along one random direction (a 1-D optimal "
                        "transport)", "coupling: {name: __plugin___sliced}"),
    "metric": Example("metrics", "distance between the mean and covariance of samples and data",
                      "eval: {every: 0, num_samples: 256, metrics: [{name: __plugin___moments}]}"),
    "writer": Example("writers", "samples as a CSV file",
                      "eval: {every: 0, num_samples: 64, writers: [{name: __plugin___csv}]}"),
}
KINDS = tuple(EXAMPLES)


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``__plugin__``, ``__kind__`` and ``__desc__`` replaced by its value."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _recipe(ex: Example) -> str:
    """The shared demo recipe with the kind's own line in place of (or after) the line of its key."""
    key = ex.recipe.split(":", 1)[0] + ":"
    lines = (TEMPLATES / "recipe.yaml").read_text().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith(key)), None)
    lines = lines[:at] + [ex.recipe] + lines[at + 1:] if at is not None else [*lines, ex.recipe]
    return "\n".join(lines) + "\n"


def scaffold(name: str, kind: str, dest: Path) -> list[Path]:
    """Write the plugin package for ``name`` (a Python identifier, lower case) with one example
    component of ``kind`` into ``dest`` (a new or empty folder); returns the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
        raise RecipeError(f"plugin name {name!r} is not a lower-case Python identifier", where="fmkit new-plugin NAME",
                          fix="use letters, digits and '_', starting with a letter, e.g. `fmkit new-plugin acme`")
    if kind not in EXAMPLES:
        raise RecipeError(f"unknown kind {kind!r}", where="--kind", fix=f"use one of: {', '.join(KINDS)}")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputError(f"{dest} exists and is not an empty folder", where=str(dest),
                          fix="pass --out with a new folder, or remove that one")
    ex = EXAMPLES[kind]
    own = TEMPLATES / kind
    pkg = dest / f"fmkit_{name}"
    sources = {
        dest / "pyproject.toml": (TEMPLATES / "pyproject.toml").read_text(),
        dest / "README.md": (TEMPLATES / "README.md").read_text(),
        pkg / "__init__.py": '"""fmkit plugin __plugin__."""\n',
        pkg / "plugin.py": (own / "plugin.py").read_text(),
        pkg / f"{ex.module}.py": (own / f"{ex.module}.py").read_text(),
        pkg / "recipes" / f"{name}_demo.yaml": _recipe(ex),
        dest / "tests" / "test_recipe.py": (TEMPLATES / "test_recipe.py").read_text(),
        dest / "tests" / f"test_{kind}.py": (own / f"test_{kind}.py").read_text(),
    }
    values = {"plugin": name, "kind": kind, "desc": ex.description}
    try:
        for path, text in sources.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(text, values))
    except OSError as exc:
        raise OutputError(f"cannot write the plugin into {dest}: {exc.strerror or exc}", where=str(dest),
                          fix="pass --out with a folder you can write to") from None
    return list(sources)
