"""Geometry of the generated graph against the data: bond lengths and bond angles per kind.

A chemist's check that a molecule whose graph is right also has the right shape. On each valid
generated molecule (its generated bonds, not distance-inferred ones):

- every bond's length (Angstrom), grouped by kind: the two elements and the Kekule order
  (``C-H``, ``C-C``, ``C=O``, ``C#N`` ...);
- every bond angle i-j-k (degrees) between two bonds sharing atom j, grouped by the two end elements,
  the centre element and the centre's number of bonded neighbours (``H-C-H|4``: sp3 carbon,
  ``C-C-O|3``: sp2), so that an sp2 angle is never compared with an sp3 one.

Each kind's distribution is compared with the same kind in reference molecules from the data by
the Wasserstein-1 distance (``scipy.stats.wasserstein_distance``; as MiDi's bond-length and angle
W1, Vignac et al. 2023, per kind); ``geom_bond_length_w1`` and ``geom_bond_angle_w1`` are the
means over the kinds found in both, weighted by the kind's count in the reference (a rare kind in
the generated set weighs what it weighs in the data). Optional: ``geom_strain_mmff_median``, the
median MMFF94 strain energy (kcal/mol) of the valid molecules' generated conformers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fmkit_molecules.elements import COV_FACTOR, ELEMENTS
from fmkit_molecules.samples import MolGraph

_BOND_SYMBOL = {1: "-", 2: "=", 3: "#"}


def bond_kind(a: int, b: int, order: int) -> str:
    """Name of a bond kind from element indices and order: ``C-H``, ``C=O`` (elements alphabetical)."""
    x, y = sorted((ELEMENTS[a], ELEMENTS[b]))
    return f"{x}{_BOND_SYMBOL[order]}{y}"


def angle_kind(a: int, centre: int, b: int, degree: int) -> str:
    """Name of an angle kind: ends alphabetical, centre element, centre's neighbour count: ``H-C-H|4``."""
    x, y = sorted((ELEMENTS[a], ELEMENTS[b]))
    return f"{x}-{ELEMENTS[centre]}-{y}|{degree}"


@dataclass
class GeometryProfile:
    """Bond lengths (Angstrom) and bond angles (degrees) of a set of molecules, by kind."""

    lengths: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    angles: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    molecules: int = 0

    def add(self, graph: MolGraph) -> None:
        """Add one molecule's bonds (upper triangle of ``graph.bonds``, orders 1..3) and angles."""
        pos, types = np.asarray(graph.pos, dtype=np.float64), graph.types
        order = np.triu(np.asarray(graph.bonds, dtype=np.int64), 1)
        ii, jj = np.nonzero(order > 0)
        for i, j in zip(ii.tolist(), jj.tolist()):
            self.lengths[bond_kind(types[i], types[j], int(order[i, j]))].append(
                float(np.linalg.norm(pos[i] - pos[j])))
        adj = np.asarray(graph.bonds) > 0
        for j in range(len(types)):
            nb = np.flatnonzero(adj[j])
            if len(nb) < 2:
                continue
            v = pos[nb] - pos[j]
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            cos = np.clip(v @ v.T, -1.0, 1.0)
            ai, ak = np.triu_indices(len(nb), 1)
            deg = np.degrees(np.arccos(cos[ai, ak]))
            for p, q, ang in zip(ai.tolist(), ak.tolist(), deg.tolist()):
                self.angles[angle_kind(types[nb[p]], types[j], types[nb[q]], len(nb))].append(ang)
        self.molecules += 1

    def arrays(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return ({k: np.asarray(v) for k, v in self.lengths.items() if v},
                {k: np.asarray(v) for k, v in self.angles.items() if v})


def geometry_profile(graphs: Iterable[MolGraph]) -> GeometryProfile:
    """The bond-length and bond-angle profile of some molecules (all their bonds count: pass valid ones)."""
    prof = GeometryProfile()
    for g in graphs:
        prof.add(g)
    return prof


def w1_by_kind(generated: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Wasserstein-1 distance per kind found in both (units of the values)."""
    from scipy.stats import wasserstein_distance

    return {k: float(wasserstein_distance(generated[k], reference[k])) for k in generated
            if k in reference and len(generated[k]) and len(reference[k])}


def weighted_w1(generated: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """Mean of the per-kind W1 over the kinds found in both, weighted by each kind's reference count
    (NaN when no kind is shared, e.g. no valid generated molecule)."""
    per = w1_by_kind(generated, reference)
    if not per:
        return float("nan")
    w = np.array([len(reference[k]) for k in per], dtype=np.float64)
    return float(np.dot(w, np.array(list(per.values()))) / w.sum())


def geometry_rows(generated: GeometryProfile, reference: GeometryProfile) -> dict[str, float]:
    """``geom_bond_length_w1`` (Angstrom) and ``geom_bond_angle_w1`` (degrees) of a generated profile."""
    gl, ga = generated.arrays()
    rl, ra = reference.arrays()
    return {"geom_bond_length_w1": weighted_w1(gl, rl), "geom_bond_angle_w1": weighted_w1(ga, ra)}


def strain_rows(mols: Iterable, max_iters: int = 200) -> dict[str, float]:
    """``geom_strain_mmff_median`` (kcal/mol, over the molecules MMFF can type; NaN if none) and
    ``geom_strain_mmff_typed`` (share of the given molecules MMFF typed) of sanitised RDKit molecules
    with their generated conformers (:func:`fmkit_molecules.chemistry.mmff_strain`)."""
    from fmkit_molecules.rdkit_import import load_chemistry

    chemistry = load_chemistry("the MMFF strain metric")
    mols = list(mols)
    strains = [s for s in (chemistry.mmff_strain(m, max_iters) for m in mols) if s is not None]
    return {"geom_strain_mmff_median": float(np.median(strains)) if strains else float("nan"),
            "geom_strain_mmff_typed": len(strains) / len(mols) if mols else 0.0}


def reference_profile(dataset, num: int = 2000, seed: int = 0, cov_factor: float = COV_FACTOR) -> GeometryProfile:
    """The profile of a fixed subsample of a molecule dataset: ``num`` examples drawn without
    replacement by a seeded generator (all when the dataset is smaller), each as its own graph
    (``bonds: true``) or RDKit's perception of its geometry, valid ones only."""
    from fmkit_molecules.graph_metrics import assess_graph, dataset_graph, dataset_has_bonds

    n = len(dataset)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(num, n), replace=False))
    prof = GeometryProfile()
    check = dataset_has_bonds(dataset)  # a perceived graph is sanitised already
    for i in idx.tolist():
        g = dataset_graph(dataset, i, cov_factor)
        if g is not None and (not check or assess_graph(g).valid):
            prof.add(g)
    return prof


__all__ = ["bond_kind", "angle_kind", "GeometryProfile", "geometry_profile", "w1_by_kind", "weighted_w1",
           "geometry_rows", "strain_rows", "reference_profile"]
