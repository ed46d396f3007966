"""The geometry check (table 4): bond-length and bond-angle W1 per kind against the data, on sets
whose answer is known in closed form (every length / angle shifted by a constant: W1 = that
constant), the kinds it groups by, the reference weighting, and the MMFF strain."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fmkit_molecules.elements import INDEX
from fmkit_molecules.geometry_metrics import (
    angle_kind,
    bond_kind,
    geometry_profile,
    geometry_rows,
    reference_profile,
    strain_rows,
    weighted_w1,
)
from fmkit_molecules.graph_metrics import assess_graph
from fmkit_molecules.metrics import MoleculeMetrics
from fmkit_molecules.samples import MolGraph
from graph_testlib import GraphDataset, graph_batch, graph_from_smiles, star


def water(r: float, theta_deg: float) -> MolGraph:
    """H-O-H with both O-H bonds ``r`` Angstrom long and the angle ``theta_deg``."""
    t = math.radians(theta_deg) / 2
    pos = np.array([[0.0, 0, 0], [r * math.sin(t), r * math.cos(t), 0], [-r * math.sin(t), r * math.cos(t), 0]])
    bonds = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    return MolGraph(pos, np.array([INDEX["O"], INDEX["H"], INDEX["H"]]), bonds, np.zeros(3, int), True)


def test_kind_names():
    c, h, o, n = INDEX["C"], INDEX["H"], INDEX["O"], INDEX["N"]
    assert bond_kind(h, c, 1) == bond_kind(c, h, 1) == "C-H"
    assert bond_kind(o, c, 2) == "C=O" and bond_kind(c, n, 3) == "C#N"
    assert angle_kind(h, c, h, 4) == "H-C-H|4" and angle_kind(o, c, c, 3) == angle_kind(c, c, o, 3) == "C-C-O|3"


def test_shifted_lengths_and_angles_give_the_shift():
    """Reference: waters with O-H 0.90..1.00 A and angles 100..110 deg; generated: every length +0.05 A
    and every angle +3 deg. W1 between a sample and its translate is the translation."""
    ref = [water(0.90 + 0.01 * i, 100.0 + i) for i in range(11)]
    gen = [water(0.95 + 0.01 * i, 103.0 + i) for i in range(11)]
    rows = geometry_rows(geometry_profile(gen), geometry_profile(ref))
    assert rows["geom_bond_length_w1"] == pytest.approx(0.05, abs=1e-9)
    assert rows["geom_bond_angle_w1"] == pytest.approx(3.0, abs=1e-6)
    same = geometry_rows(geometry_profile(ref), geometry_profile(ref))
    assert same == {"geom_bond_length_w1": 0.0, "geom_bond_angle_w1": 0.0}


def test_kinds_are_weighted_by_their_reference_counts_and_unshared_kinds_ignored():
    ref = {"C-H": np.array([1.09, 1.10, 1.11]), "C=O": np.array([1.21])}
    gen = {"C-H": ref["C-H"] + 0.1, "C=O": ref["C=O"] + 0.3, "O-O": np.array([1.5])}
    assert weighted_w1(gen, ref) == pytest.approx((3 * 0.1 + 1 * 0.3) / 4)
    assert math.isnan(weighted_w1({"O-O": np.array([1.5])}, ref))  # nothing to compare


def test_angles_are_grouped_by_the_centre_hybridisation():
    """Methane's H-C-H (4 neighbours, 109.5 deg) and ethylene's H-C-H (3 neighbours, ~117 deg) are
    different kinds: an sp3 angle is never scored against an sp2 one."""
    prof = geometry_profile([graph_from_smiles("C"), graph_from_smiles("C=C")])
    _, angles = prof.arrays()
    assert set(angles) == {"H-C-H|4", "H-C-H|3", "C-C-H|3"}
    assert angles["H-C-H|4"] == pytest.approx(np.full(6, 109.47), abs=0.1)
    assert 115 < angles["H-C-H|3"].mean() < 119
    lengths, _ = prof.arrays()
    assert set(lengths) == {"C-H", "C=C"} and len(lengths["C-H"]) == 8


def test_metric_compares_valid_generated_graphs_with_the_dataset(cache):
    mols = [graph_from_smiles(s) for s in ["CCO", "CC=O", "C#N", "c1ccccc1"]]
    data = GraphDataset(mols)
    assert reference_profile(data, num=10).molecules == 4  # all of a small dataset
    r = MoleculeMetrics(rdkit_protocol=False, novelty=False)(graph_batch(mols), data)
    assert r["geom_bond_length_w1"] == pytest.approx(0.0, abs=1e-6)  # the data itself (float32 round-off)
    assert r["geom_bond_angle_w1"] == pytest.approx(0.0, abs=1e-4)
    stretched = [MolGraph(g.pos * 1.1, g.types, g.bonds, g.charges, True) for g in mols]
    r2 = MoleculeMetrics(rdkit_protocol=False, novelty=False)(graph_batch(stretched), data)
    assert 0.09 < r2["geom_bond_length_w1"] < 0.15  # 10% of 0.9-1.5 A bonds
    assert r2["geom_bond_angle_w1"] == pytest.approx(0.0, abs=1e-4)  # scaling keeps angles
    # an invalid sample (neutral N with 4 bonds) adds nothing to the geometry
    r3 = MoleculeMetrics(rdkit_protocol=False, novelty=False)(graph_batch(mols + [star("N", 0, 4, r=3.0)]), data)
    assert r3["geom_bond_length_w1"] == pytest.approx(r["geom_bond_length_w1"], abs=1e-9)


def test_mmff_strain_is_zero_at_a_minimum_and_positive_when_stretched():
    relaxed = graph_from_smiles("CCO")  # MMFF-minimised already
    stretched = MolGraph(relaxed.pos * 1.08, relaxed.types, relaxed.bonds, relaxed.charges, True)
    mols = [assess_graph(g).mol for g in (relaxed, stretched)]
    r0 = strain_rows(mols[:1])
    assert abs(r0["geom_strain_mmff_median"]) < 0.05 and r0["geom_strain_mmff_typed"] == 1.0
    assert strain_rows(mols[1:])["geom_strain_mmff_median"] > 5.0  # kcal/mol
    none = strain_rows([])  # no valid molecule: no strain to report
    assert math.isnan(none["geom_strain_mmff_median"]) and none["geom_strain_mmff_typed"] == 0.0
