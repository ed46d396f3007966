"""The generated-bond protocol: stability, validity, uniqueness and novelty of the graph a model
generates with the atoms (SemlaFlow, Irwin et al. 2024; FlowMol, Dunn & Koes 2024), not of bonds
inferred from distances (that is the EDM protocol of :mod:`fmkit_molecules.metrics`).

The molecule is built from the generated atom types, the generated bond matrix (upper triangle,
Kekule orders 1..3) and the generated formal charges, hydrogens explicit and nothing implicit added
(:func:`fmkit_molecules.chemistry.graph_molecule`). Per sample set:

- ``graph_atom_stable``: share of atoms whose bond-order sum is an allowed valence for their element
  and formal charge (:data:`VALENCE_TABLES`); ``graph_mol_stable``: share of molecules whose atoms are
  all stable;
- ``graph_validity``: share of molecules that ``Chem.SanitizeMol`` accepts, the WHOLE molecule (as
  SemlaFlow's ``Validity()``; no largest-fragment rescue, unlike EDM). A radical passes
  sanitisation (RDKit gives the atom a radical electron): stability is the row that flags it;
- ``graph_connected_validity``: valid and a single fragment (SemlaFlow's ``Validity(connected=True)``);
- ``graph_uniqueness``: distinct canonical SMILES (hydrogens folded in) / valid molecules;
  ``graph_valid_unique``: distinct / all molecules;
- ``graph_novelty``: distinct SMILES absent from the training set / distinct (EDM's convention, so
  the two novelty rows compare; SemlaFlow divides the novel *valid* molecules by the valid ones).
  The reference is the dataset the metric is given, its own graph when it has one (``info.meta``
  ``bonds: true``), else RDKit's perception of its geometries (:func:`chemistry.rdkit_perceived`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fmkit_molecules.elements import COV_FACTOR, ELEMENTS
from fmkit_molecules.rdkit_import import load_chemistry
from fmkit_molecules.samples import MolGraph, graph_of_example

ValenceTable = Literal["octet", "semlaflow"]

#: allowed bond-order sums by element and formal charge.
#: ``octet``: the table for Kekule orders (a neutral C needs 4, C+ / C- 3, N 3, N+ 4, N- 2, O 2, O+ 3,
#: O- 1, H and F 1); ``semlaflow``: SemlaFlow's ``ALLOWED_VALENCIES`` (from MiDi, Vignac et al. 2023)
#: restricted to H C N O F, more lenient (neutral C 3 or 4, neutral N 2 or 3, N+ 2..4, bare H+/H-/F-)
#: because it sums aromatic bonds as 1.5 and truncates; use it only to compare with published numbers.
VALENCE_TABLES: dict[str, dict[str, dict[int, tuple[int, ...]]]] = {
    "octet": {"H": {0: (1,)}, "C": {0: (4,), -1: (3,), 1: (3,)}, "N": {0: (3,), 1: (4,), -1: (2,)},
              "O": {0: (2,), 1: (3,), -1: (1,)}, "F": {0: (1,)}},
    "semlaflow": {"H": {0: (1,), 1: (0,), -1: (0,)}, "C": {0: (3, 4), 1: (3,), -1: (3,)},
                  "N": {0: (2, 3), 1: (2, 3, 4), -1: (2,)}, "O": {0: (2,), 1: (3,), -1: (1,)},
                  "F": {0: (1,), -1: (0,)}},
}
_MAX_VALENCE = 12  # a bond-order sum above this is never allowed (the lookup is clipped here)
_CHARGE_RANGE = 4  # the lookup covers formal charges -4..4 (other charges are never stable)


def _lookup(table: Mapping[str, Mapping[int, Sequence[int]]]) -> np.ndarray:
    """[elements, charges -R..R, valence 0..MAX] bool lookup of a valence table."""
    out = np.zeros((len(ELEMENTS), 2 * _CHARGE_RANGE + 1, _MAX_VALENCE + 2), dtype=bool)
    for e, by_charge in table.items():
        for q, vals in by_charge.items():
            for v in vals:
                out[ELEMENTS.index(e), q + _CHARGE_RANGE, v] = True
    return out


_LOOKUPS = {name: _lookup(t) for name, t in VALENCE_TABLES.items()}


def graph_atom_stability(types: np.ndarray, bonds: np.ndarray, charges: np.ndarray,
                         table: ValenceTable = "octet") -> np.ndarray:
    """Per-atom stability [n] bool: the atom's bond-order sum (row of the symmetric Kekule ``bonds``
    [n, n]) is an allowed valence for its element (``types`` [n]) and formal charge (``charges`` [n])
    in ``VALENCE_TABLES[table]``. No RDKit; the graph must be in the vocabulary (types >= 0, bonds >= 0)."""
    types = np.asarray(types, dtype=np.int64)
    valence = np.clip(np.asarray(bonds, dtype=np.int64).sum(1), 0, _MAX_VALENCE + 1)
    q = np.asarray(charges, dtype=np.int64)
    inside = np.abs(q) <= _CHARGE_RANGE
    ok = _LOOKUPS[table][types, np.clip(q, -_CHARGE_RANGE, _CHARGE_RANGE) + _CHARGE_RANGE, valence]
    return ok & inside


@dataclass(frozen=True)
class GraphAssessment:
    """One generated graph judged: per-atom ``stable`` [n] bool, the sanitised RDKit molecule (with
    the generated conformer; None when invalid), its canonical ``smiles`` and ``fragments`` count."""

    stable: np.ndarray
    mol: Any
    smiles: str | None
    fragments: int

    @property
    def valid(self) -> bool:
        return self.mol is not None


def assess_graph(graph: MolGraph, table: ValenceTable = "octet") -> GraphAssessment:
    """Stability and validity of one :class:`MolGraph`. A graph with a class outside its vocabulary
    (a leftover mask token) or no atom is neither stable nor valid."""
    n = len(graph)
    if n == 0 or not graph.in_vocab:
        return GraphAssessment(np.zeros(n, dtype=bool), None, None, 0)
    chemistry = load_chemistry()
    stable = graph_atom_stability(graph.types, graph.bonds, graph.charges, table)
    mol = chemistry.sanitized_copy(chemistry.graph_molecule(graph.types, graph.bonds, graph.charges, graph.pos))
    if mol is None:
        return GraphAssessment(stable, None, None, 0)
    return GraphAssessment(stable, mol, chemistry.canonical_smiles(mol), chemistry.num_fragments(mol))


def graph_rows(assessed: Sequence[GraphAssessment], train_smiles: set[str] | None = None) -> dict[str, float]:
    """The ``graph_*`` rows (module docstring) of assessed graphs; ``graph_novelty`` only with a reference."""
    n_mol = len(assessed)
    if n_mol == 0:
        raise ValueError("no molecules to evaluate")
    n_atoms = sum(len(a.stable) for a in assessed)
    valid = [a.smiles for a in assessed if a.smiles is not None]
    unique = set(valid)
    out = {
        "graph_atom_stable": sum(int(a.stable.sum()) for a in assessed) / max(n_atoms, 1),
        "graph_mol_stable": sum(bool(len(a.stable)) and bool(a.stable.all()) for a in assessed) / n_mol,
        "graph_validity": len(valid) / n_mol,
        "graph_connected_validity": sum(a.valid and a.fragments == 1 for a in assessed) / n_mol,
        "graph_uniqueness": len(unique) / len(valid) if valid else 0.0,
        "graph_valid_unique": len(unique) / n_mol,
    }
    if train_smiles is not None:
        out["graph_novelty"] = sum(s not in train_smiles for s in unique) / len(unique) if unique else 0.0
    return out


def evaluate_graphs(graphs: Iterable[MolGraph], train_smiles: set[str] | None = None,
                    table: ValenceTable = "octet") -> dict[str, float]:
    """The ``graph_*`` rows of generated graphs (see :func:`fmkit_molecules.samples.unpad_graphs`)."""
    return graph_rows([assess_graph(g, table) for g in graphs], train_smiles)


def smiles_of_graphs(items: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[str | None]:
    """Canonical SMILES of each ``(types [n], bonds [n, n] Kekule orders 0..3, charges [n] formal)``
    graph, built as the metric builds generated ones (None where sanitisation fails). The novelty
    reference of any graph source: a dataset's fields, RDKit's perception, a file of graphs."""
    chemistry = load_chemistry()
    out: list[str | None] = []
    for types, bonds, charges in items:
        types = np.asarray(types, dtype=np.int64)
        if len(types) == 0 or (types < 0).any() or (np.asarray(bonds) < 0).any():
            out.append(None)
            continue
        mol = chemistry.sanitized_copy(chemistry.graph_molecule(types, bonds, charges))
        out.append(None if mol is None else chemistry.canonical_smiles(mol))
    return out


# --- the reference: the dataset's own graphs ----------------------------------------------------------


def dataset_has_bonds(dataset: Any) -> bool:
    """Whether a dataset's examples carry their graph (``info.meta["bonds"]`` is true)."""
    meta = getattr(getattr(dataset, "info", None), "meta", None) or {}
    return bool(meta.get("bonds"))


def dataset_graph(dataset: Any, i: int, cov_factor: float = COV_FACTOR) -> MolGraph | None:
    """Example ``i`` of a molecule dataset as a :class:`MolGraph`: its own ``bonds``/``charges`` when the
    dataset has them, else the graph RDKit perceives from its geometry (bond orders and charges for
    a neutral molecule, Kekule form; :func:`chemistry.rdkit_perceived`). None if there is none."""
    ex = dataset[i]
    if dataset_has_bonds(dataset):
        g = graph_of_example(ex)
        return g if g.in_vocab else None
    chemistry = load_chemistry()
    atoms = ex["atoms"]
    types = (atoms.argmax(-1) if atoms.is_floating_point() else atoms).long().numpy()
    pos = ex["pos"].double().numpy()
    mol = chemistry.rdkit_perceived(types, pos, cov_factor)
    if mol is None:
        return None
    t, b, q = chemistry.kekulized_graph(mol)
    return MolGraph(pos, t, b, q, True)


def graph_reference_name(dataset: Any, cov_factor: float = COV_FACTOR) -> str | None:
    """Disk-cache name of a dataset's graph SMILES (None: the dataset has no cache name)."""
    base = getattr(dataset, "smiles_cache", None)
    if not base:
        return None
    return f"{base}.graph" if dataset_has_bonds(dataset) else f"{base}.perceived{round(100 * cov_factor)}"


def graph_smiles_of_dataset(dataset: Any, cov_factor: float = COV_FACTOR) -> set[str]:
    """Canonical SMILES of every molecule of a dataset under the generated-bond protocol (its own
    graph, or RDKit's perception without one): the ``graph_novelty`` reference. Cached on disk next
    to the EDM SMILES (``$FMKIT_CACHE_DIR/qm9/<smiles_cache>.graph.smi``) when the dataset names a cache."""
    chemistry = load_chemistry("novelty (training SMILES of the graph)")

    def compute() -> set[str]:
        def items():
            for i in range(len(dataset)):
                g = dataset_graph(dataset, i, cov_factor)
                if g is not None:
                    yield g.types, g.bonds, g.charges

        return {s for s in smiles_of_graphs(chemistry.progress(items(), len(dataset), "training graph SMILES")) if s}

    return chemistry.cached_smiles(graph_reference_name(dataset, cov_factor), compute)


__all__ = ["VALENCE_TABLES", "graph_atom_stability", "GraphAssessment", "assess_graph", "graph_rows",
           "evaluate_graphs", "smiles_of_graphs", "dataset_has_bonds", "dataset_graph", "graph_smiles_of_dataset"]
