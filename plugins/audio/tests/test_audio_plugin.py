"""Registration, strict options, the shipped recipes (identical to the repo's recipes/ copies, valid),
the ``fmkit audio`` command group."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import typer
from fmkit.plugin import load_recipe
from fmkit.testing import fresh_registry

import fmkit_audio.plugin as plugin

REPO = Path(__file__).resolve().parents[3]
RECIPES = ["audio_digits", "audio_digits_cpu"]


@pytest.fixture()
def reg():
    return fresh_registry(plugin)


def test_everything_registered_with_strict_options(reg):
    expected = {"datasets": {"fsdd", "audio_folder", "speechcommands"}, "models": {"mel_unet"},
                "metrics": {"audio_digits"}, "writers": {"wav", "mel_png", "mel_safetensors"}}
    for kind, names in expected.items():
        entries = reg.entries(kind)
        assert names <= set(entries), kind
        for n in names:
            if entries[n].options is not None:
                assert entries[n].options.model_config.get("extra") == "forbid", (kind, n)


def test_recipes_shipped_and_identical_to_repo_copies(reg):
    shipped = reg.recipes()
    assert set(RECIPES) <= set(shipped)
    for name in RECIPES:
        assert filecmp.cmp(shipped[name][0], REPO / "recipes" / f"{name}.yaml", shallow=False), name


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_validate(reg, name):
    rec = load_recipe(reg.recipes()[name][0], registry=reg)
    assert rec.model.name == "mel_unet" and rec.solver.spec().get("steps") == 32  # at most 32 NFE a sample
    assert [m.name for m in rec.eval.metrics] == ["audio_digits"]
    wav = next(w.spec() for w in rec.eval.writers if w.name == "wav")
    assert rec.eval.metrics[0].spec()["vocoder"] == wav["vocoder"]  # the metric hears what the wav writer writes


def test_gpu_recipe_names_its_cpu_alternative(reg):
    rec = load_recipe(reg.recipes()["audio_digits"][0], registry=reg)
    assert rec.cpu_alternative == "audio_digits_cpu" and rec.cpu_alternative in reg.recipes()


def test_commands_are_added_under_audio():
    app = typer.Typer()
    plugin.register_commands(app)
    groups = {g.name for g in app.registered_groups}
    assert "audio" in groups
    from fmkit_audio.cli import app as audio_app

    assert {c.name for c in audio_app.registered_commands} == {"train-classifier", "vocoders"}


def test_plugin_imports_only_the_public_fmkit_api():
    """The package imports fmkit.plugin alone from fmkit (the core's modules move between releases)."""
    import ast

    pkg = Path(plugin.__file__).parent
    for f in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                if n == "fmkit" or n.startswith("fmkit.") or n.startswith("fmkit_") and not n.startswith("fmkit_audio"):
                    assert n == "fmkit.plugin", f"{f.name} imports {n}"
