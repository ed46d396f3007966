"""Registration through the fmkit registry, option models that forbid extras, shipped recipes."""

from __future__ import annotations

import filecmp
from pathlib import Path

import fmkit_molecules.plugin as plugin
import pytest
from fmkit.plugin import load_recipe
from fmkit.testing import fresh_registry

REPO = Path(__file__).resolve().parents[3]
EXPECTED = {
    "datasets": {"qm9", "xyz_molecules"}, "models": {"e3nn_flow", "egnn", "egnn_graph"}, "sources": {"com_free_gaussian"},
    "couplings": {"equivariant_ot"}, "metrics": {"molecules"}, "writers": {"sdf", "xyz", "mol_grid"},
}


@pytest.fixture()
def reg():
    return fresh_registry(plugin)


def test_everything_registered_with_strict_options(reg):
    for kind, names in EXPECTED.items():
        entries = reg.entries(kind)
        assert names <= set(entries), kind
        for n in names:
            opts = entries[n].options
            assert opts is None or opts.model_config.get("extra") == "forbid", (kind, n)
            assert entries[n].description


def test_recipes_shipped_and_identical_to_repo_copies(reg):
    shipped = reg.recipes()
    assert {"molecules_qm9", "molecules_qm9_smoke"} <= set(shipped)
    for name, (path, _) in shipped.items():
        repo_copy = REPO / "recipes" / f"{name}.yaml"
        if repo_copy.exists():
            assert filecmp.cmp(path, repo_copy, shallow=False), f"{path} differs from {repo_copy}"


@pytest.mark.parametrize("name", ["molecules_qm9", "molecules_qm9_cpu", "molecules_qm9_smoke"])
def test_recipes_validate(reg, name):
    path = reg.recipes()[name][0]
    recipe = load_recipe(path, registry=reg)
    assert recipe.coupling.name == "equivariant_ot"
