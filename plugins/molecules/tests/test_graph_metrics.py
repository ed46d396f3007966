"""The generated-bond protocol (table 3) on hand-built graphs whose answers are known: a valid
molecule, a radical, a charged atom with and without its charge, two fragments, mask tokens, a
sampler's noisy lower triangle, and novelty against a dataset's own graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fmkit_molecules.elements import INDEX
from fmkit_molecules.graph_metrics import (
    assess_graph,
    evaluate_graphs,
    graph_atom_stability,
    graph_smiles_of_dataset,
    smiles_of_graphs,
)
from fmkit_molecules.metrics import MoleculeMetrics
from fmkit_molecules.samples import MolGraph, unpad_graphs
from graph_testlib import GraphDataset, graph_batch, graph_from_smiles, join, star


@pytest.fixture(scope="module")
def mols():
    return {s: graph_from_smiles(s) for s in ["CCO", "O", "C", "c1ccccc1", "CC(=O)[O-]", "C[NH3+]", "C#N"]}


def test_ethanol_is_stable_valid_connected(mols):
    r = evaluate_graphs([mols["CCO"]])
    assert r["graph_atom_stable"] == 1.0 and r["graph_mol_stable"] == 1.0
    assert r["graph_validity"] == 1.0 and r["graph_connected_validity"] == 1.0
    assert assess_graph(mols["CCO"]).smiles == "CCO"  # hydrogens folded in: the plain canonical SMILES


def test_methyl_radical_is_unstable_but_sanitises():
    """C with 3 bonds and charge 0: the carbon is unstable (needs 4), so the molecule is; RDKit's
    sanitisation accepts it as a radical ([CH3], one radical electron), so it counts as valid: the
    stability rows are the ones that flag radicals (as in SemlaFlow)."""
    methyl = star("C", 0, 3)
    assert graph_atom_stability(methyl.types, methyl.bonds, methyl.charges).tolist() == [False, True, True, True]
    r = evaluate_graphs([methyl])
    assert r["graph_atom_stable"] == pytest.approx(3 / 4) and r["graph_mol_stable"] == 0.0
    a = assess_graph(methyl)
    assert a.valid and a.smiles == "[CH3]" and a.mol.GetAtomWithIdx(0).GetNumRadicalElectrons() == 1
    assert r["graph_validity"] == 1.0 and r["graph_connected_validity"] == 1.0
    # SemlaFlow's lenient table (aromatic bonds summed as 1.5 and truncated) lets a neutral 3-valent C pass
    assert evaluate_graphs([methyl], table="semlaflow")["graph_mol_stable"] == 1.0


def test_charge_decides_stability_and_validity():
    """N with 4 bonds: stable and valid as ammonium N+, unstable and invalid (RDKit: hypervalent N)
    with charge 0; O- with one bond (hydroxide) stable, O with one bond (a hydroxyl radical) not."""
    ammonium, neutral = star("N", 1, 4), star("N", 0, 4)
    assert graph_atom_stability(ammonium.types, ammonium.bonds, ammonium.charges).all()
    assert assess_graph(ammonium).smiles == "[NH4+]"
    assert not graph_atom_stability(neutral.types, neutral.bonds, neutral.charges)[0]
    r = evaluate_graphs([ammonium, neutral])
    assert r["graph_mol_stable"] == pytest.approx(1 / 2) and r["graph_validity"] == pytest.approx(1 / 2)
    assert r["graph_atom_stable"] == pytest.approx(9 / 10)  # the neutral N alone is unstable
    hydroxide, hydroxyl = star("O", -1, 1), star("O", 0, 1)
    assert graph_atom_stability(hydroxide.types, hydroxide.bonds, hydroxide.charges).all()
    assert not graph_atom_stability(hydroxyl.types, hydroxyl.bonds, hydroxyl.charges).all()
    # a charge outside the table (C+2 with 2 bonds, a carbene dication) is never stable
    assert not graph_atom_stability(np.array([INDEX["C"]]), np.zeros((1, 1), int), np.array([2]))[0]


def test_real_charged_molecules_are_stable(mols):
    """Zwitterion-like QM9 chemistry: acetate O-, methylammonium N+; benzene in Kekule form; nitrile."""
    r = evaluate_graphs([mols[s] for s in ["CC(=O)[O-]", "C[NH3+]", "c1ccccc1", "C#N"]])
    assert r["graph_mol_stable"] == 1.0 and r["graph_validity"] == 1.0
    assert assess_graph(mols["c1ccccc1"]).smiles == "c1ccccc1"  # RDKit re-perceives the aromatic ring


def test_two_fragments_valid_but_not_connected(mols):
    both = join(mols["CCO"], mols["O"])
    r = evaluate_graphs([both])
    assert r["graph_mol_stable"] == 1.0 and r["graph_validity"] == 1.0  # the whole molecule sanitises
    assert r["graph_connected_validity"] == 0.0
    assert assess_graph(both).smiles == "CCO.O" and assess_graph(both).fragments == 2


def test_mask_tokens_and_empty_graphs_are_neither_stable_nor_valid(mols):
    g = mols["CCO"]
    bad_bond = g.bonds.copy()
    bad_bond[0, 1] = bad_bond[1, 0] = -1
    graphs = [MolGraph(g.pos, g.types, bad_bond, g.charges, False), g]
    r = evaluate_graphs(graphs)
    assert r["graph_validity"] == pytest.approx(1 / 2) and r["graph_mol_stable"] == pytest.approx(1 / 2)
    assert r["graph_atom_stable"] == pytest.approx(1 / 2)  # every atom of the masked graph counts unstable


def test_uniqueness_and_novelty_from_canonical_smiles(mols):
    graphs = [mols["CCO"]] * 3 + [mols["C"], star("C", 0, 3)]
    train = set(smiles_of_graphs([(mols["C"].types, mols["C"].bonds, mols["C"].charges)]))
    assert train == {"C"}
    r = evaluate_graphs(graphs, train_smiles=train)
    assert r["graph_uniqueness"] == pytest.approx(3 / 5) and r["graph_valid_unique"] == pytest.approx(3 / 5)
    assert r["graph_novelty"] == pytest.approx(2 / 3)  # CCO and [CH3] are new, methane is not
    assert smiles_of_graphs([(np.array([INDEX["N"]] + [0] * 4), star("N", 0, 4).bonds, np.zeros(5, int))]) == [None]


def test_batches_read_only_the_upper_triangle(mols):
    """A sampler's lower triangle and diagonal are noise (any class, the mask token too): unpadding
    gives back each graph exactly, and the metrics do not change with the noise."""
    graphs = [mols["CCO"], star("N", 1, 4), mols["c1ccccc1"]]
    clean, noisy = graph_batch(graphs, noisy_lower=False), graph_batch(graphs, noisy_lower=True, seed=3)
    assert not torch.equal(clean["bonds"], noisy["bonds"])
    for g, u in zip(graphs, unpad_graphs(noisy)):
        assert u.in_vocab and np.array_equal(u.bonds, g.bonds) and np.array_equal(u.charges, g.charges)
    r1, r2 = evaluate_graphs(unpad_graphs(clean)), evaluate_graphs(unpad_graphs(noisy))
    assert r1 == r2 and r1["graph_mol_stable"] == 1.0
    # logits (the model's output) are read by argmax, like atoms
    logits = dict(noisy, bonds=torch.nn.functional.one_hot(noisy["bonds"], 5).double() * 3.0,
                  charges=torch.nn.functional.one_hot(noisy["charges"], 3).double())
    assert evaluate_graphs(unpad_graphs(logits)) == r1
    noisy["charges"][1, 0] = 3  # the charge mask token left on the N: that molecule is out of the vocabulary
    assert evaluate_graphs(unpad_graphs(noisy))["graph_validity"] == pytest.approx(2 / 3)


def test_metric_reports_both_protocols_on_the_same_samples(mols, cache):
    data = GraphDataset([mols["CCO"], mols["O"], mols["C"]])
    batch = graph_batch([mols["CCO"], star("N", 1, 4), mols["c1ccccc1"], star("C", 0, 3)])
    r = MoleculeMetrics(rdkit_protocol=False)(batch, data)
    for name in ["atom_stable", "mol_stable", "validity", "graph_atom_stable", "graph_mol_stable", "graph_validity",
                 "graph_connected_validity", "graph_uniqueness", "graph_novelty", "geom_bond_length_w1",
                 "geom_bond_angle_w1"]:
        assert name in r, name
    assert r["graph_mol_stable"] == pytest.approx(3 / 4) and r["graph_validity"] == 1.0
    table3, table4 = MoleculeMetrics.graph_tables.values()  # shown as their own tables, every row there
    assert set(table3) <= set(r) and {"geom_bond_length_w1", "geom_bond_angle_w1"} <= set(table4)
    assert len(MoleculeMetrics.tables) == 1 and len(MoleculeMetrics().tables) == 3
    assert r["graph_novelty"] == pytest.approx(3 / 4)  # ethanol was in the data
    # EDM's distance rules cannot see the charge: NH4+ is hypervalent there, benzene's 1.39 A bonds too
    assert r["mol_stable"] < r["graph_mol_stable"]
    # position-only samples: no graph rows; the switches turn the rows off
    plain = {k: batch[k] for k in ("pos", "atoms", "mask")}
    assert not any(k.startswith(("graph_", "geom_")) for k in MoleculeMetrics(rdkit_protocol=False)(plain, data))
    off = MoleculeMetrics(rdkit_protocol=False, graph_protocol=False, geometry=False)(batch, data)
    assert not any(k.startswith(("graph_", "geom_")) for k in off)
    only_graph = MoleculeMetrics(rdkit_protocol=False, geometry=False, novelty=False)(batch, data)
    assert "graph_validity" in only_graph and "geom_bond_length_w1" not in only_graph
    assert "graph_novelty" not in only_graph


def test_graph_novelty_reference_from_the_dataset_graph_or_rdkit_perception(mols, cache):
    """With ``bonds: true`` the reference is the dataset's own graph (charged species as they are);
    without, RDKit's perception of its geometry (neutral molecules, cached under its own name)."""
    graphs = [mols["CCO"], mols["C[NH3+]"]]
    with_bonds = GraphDataset(graphs)
    assert graph_smiles_of_dataset(with_bonds) == {"CCO", "C[NH3+]"}
    plain = GraphDataset(graphs, bonds=False)
    assert graph_smiles_of_dataset(plain) == {"CCO"}  # a cation is not a neutral molecule: not perceived
    metric = MoleculeMetrics(rdkit_protocol=False, geometry=False)
    batch = graph_batch([mols["CCO"]])
    metric(batch, with_bonds)
    reads = with_bonds.reads
    assert metric(batch, with_bonds)["graph_novelty"] == 0.0 and with_bonds.reads == reads  # computed once


def test_graph_reference_smiles_are_cached_on_disk_by_kind(mols, cache):
    """A dataset that names a SMILES cache keeps its graph SMILES beside the EDM ones, under a name
    that says where the graph came from (its own fields, or RDKit's perception at a factor)."""
    data = GraphDataset([mols["CCO"], mols["C[NH3+]"]])
    data.smiles_cache = "toy"
    assert graph_smiles_of_dataset(data) == {"CCO", "C[NH3+]"}
    reads = data.reads
    assert graph_smiles_of_dataset(data) == {"CCO", "C[NH3+]"} and data.reads == reads  # read from the file
    plain = GraphDataset([mols["CCO"]], bonds=False)
    plain.smiles_cache = "toy"
    assert graph_smiles_of_dataset(plain) == {"CCO"}
    assert sorted(p.name for p in (cache / "qm9").glob("*.smi")) == ["toy.graph.smi", "toy.perceived115.smi"]
