"""Writers of samples with a generated graph: the SDF holds the generated bonds, Kekule orders and
formal charges exactly (a round trip through RDKit's reader), radicals marked; the PNG grid depicts
the generated graph."""

from __future__ import annotations

import numpy as np
import pytest
from fmkit_molecules.elements import ELEMENTS
from fmkit_molecules.writers import MoleculeGridWriter, SDFWriter, molecules
from graph_testlib import graph_batch, graph_from_smiles, star
from rdkit import Chem


@pytest.fixture(scope="module")
def graphs():
    return [graph_from_smiles("c1ccccc1"), star("N", 1, 4), graph_from_smiles("CC(=O)[O-]"), star("C", 0, 3),
            star("N", 0, 4)]


def read_back(path):
    return list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))


def test_sdf_round_trip_keeps_the_generated_graph(tmp_path, graphs):
    batch = graph_batch(graphs)  # noisy lower triangles: the writer reads the upper one
    (path,) = SDFWriter()(batch, tmp_path, None, step=3)
    mols = read_back(path)
    assert len(mols) == len(graphs) and all(m is not None for m in mols)
    for g, m, i in zip(graphs, mols, range(len(graphs))):
        assert [a.GetSymbol() for a in m.GetAtoms()] == [ELEMENTS[t] for t in g.types]
        assert [a.GetFormalCharge() for a in m.GetAtoms()] == g.charges.tolist()
        back = np.zeros_like(g.bonds)
        for b in m.GetBonds():
            back[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] = back[b.GetEndAtomIdx(), b.GetBeginAtomIdx()] = \
                int(b.GetBondTypeAsDouble())
        assert np.array_equal(back, g.bonds)  # same bonds, same Kekule orders (benzene's alternation too)
        n = len(g)
        np.testing.assert_allclose(m.GetConformer().GetPositions(), batch["pos"][i, :n].numpy(), atol=1e-4)
    assert [m.GetProp("valid") for m in mols] == ["1", "1", "1", "1", "0"]  # neutral 4-bonded N: invalid
    assert [m.GetProp("smiles") for m in mols] == ["c1ccccc1", "[NH4+]", "CC(=O)[O-]", "[CH3]", ""]
    # no hydrogen is invented on reading: the radical stays a radical, the charged N keeps 4 H atoms
    assert mols[3].GetAtomWithIdx(0).GetNumRadicalElectrons() == 1
    for m in mols[:4]:
        m.UpdatePropertyCache(strict=False)
        assert all(a.GetNumImplicitHs() == 0 for a in m.GetAtoms())
    sanitised = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert [m is not None for m in sanitised] == [True, True, True, True, False]


def test_edm_bonds_when_the_samples_have_no_graph(tmp_path, graphs):
    """Position-only samples still get EDM bonds from distances: benzene's 1.39-1.40 A ring bonds are
    all single there (EDM's known gap), while the generated graph kept the alternation."""
    batch = {k: v for k, v in graph_batch(graphs[:1]).items() if k in ("pos", "atoms", "mask")}
    (path,) = SDFWriter()(batch, tmp_path, None, step=0)
    (m,) = read_back(path)
    assert {b.GetBondTypeAsDouble() for b in m.GetBonds()} == {1.0}


def test_png_grid_draws_the_valid_generated_graphs(tmp_path, graphs):
    batch = graph_batch(graphs)
    assert [w.valid for w in molecules(batch)] == [True, True, True, True, False]
    (path,) = MoleculeGridWriter(num=8, per_row=4, size=100)(batch, tmp_path, None, step=1)
    from PIL import Image

    img = Image.open(path)
    assert img.size == (400, 100)  # the 4 valid molecules in one row; the invalid one is left out
    assert len(np.unique(np.asarray(img.convert("L")))) > 2


def test_random_graphs_with_mask_tokens_are_written_and_scored_without_error(tmp_path):
    """What an untrained model samples: any class anywhere (mask tokens, hypervalent atoms, H with 4
    bonds). Every sample is written, the metrics stay fractions, and (almost) nothing is valid."""
    import torch
    from fmkit_molecules.metrics import MoleculeMetrics

    g = torch.Generator().manual_seed(0)
    b, n = 16, 12
    batch = {"pos": torch.randn(b, n, 3, generator=g) * 2, "atoms": torch.randint(0, 6, (b, n), generator=g),
             "charges": torch.randint(0, 4, (b, n), generator=g), "bonds": torch.randint(0, 5, (b, n, n), generator=g),
             "mask": torch.arange(n)[None, :] < torch.randint(1, n + 1, (b, 1), generator=g)}
    (path,) = SDFWriter()(batch, tmp_path, None, step=0)
    assert len(read_back(path)) == b
    r = MoleculeMetrics(rdkit_protocol=False, novelty=False, geometry=False)(batch, None)
    assert all(0.0 <= r[k] <= 1.0 for k in r if k.startswith("graph_"))
    assert r["graph_mol_stable"] < 0.5
    MoleculeGridWriter()(batch, tmp_path, None, step=0)
