"""Molecule metrics.

Table 1, the EDM protocol (Hoogeboom et al. 2022, ``qm9/analyze.py`` and ``qm9/rdkit_functions.py``):

- ``atom_stable``: share of atoms whose EDM bond-order sum equals the valence (H1 C4 N3 O2 F1);
- ``mol_stable``: share of molecules whose atoms are all stable;
- ``validity``: share of molecules that RDKit sanitises (implicit hydrogens allowed, as in EDM);
  the SMILES kept is that of the largest fragment;
- ``uniqueness``: distinct SMILES / valid; ``novelty``: unique SMILES absent from the training set / unique,
  the training set being the dataset the metric is given (``dataset.novelty_smiles()``: its own molecules).

Table 2, connectivity and RDKit's own bond perception (in the spirit of SemlaFlow, Irwin et al. 2024):

- ``connected_validity``: valid (EDM bonds) and a single fragment;
- ``rdkit_validity``: RDKit's own perception (``rdDetermineBonds``: xyz2mol's covalent-radius
  connectivity, d < ``rdkit_cov_factor`` (r_i + r_j), and its bond orders/charges for total charge 0,
  hydrogens explicit, nothing implicit added) gives a
  molecule that sanitises with no radicals and charges only on N/O (+-1, zwitterions);
  ``rdkit_connected_validity``: that, and a single fragment.

Tables 3 and 4, only when the samples carry generated ``bonds`` and ``charges`` (the same samples as
tables 1-2): the generated-bond protocol (``graph_*`` rows, :mod:`fmkit_molecules.graph_metrics`)
and the geometry of the generated graph against the data (``geom_*`` rows,
:mod:`fmkit_molecules.geometry_metrics`). Tables 1-2 judge the positions; tables 3-4 the graph
the model claims and how well the positions realise it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmkit_molecules.elements import COV_FACTOR, VALENCE
from fmkit_molecules.graph_metrics import ValenceTable
from fmkit_molecules.rdkit_import import load_chemistry
from fmkit_molecules.samples import has_graph, unpad, unpad_graphs


def evaluate_molecules(items: Iterable[tuple[np.ndarray, np.ndarray]], train_smiles: set[str] | None = None,
                       rdkit_protocol: bool = True, rdkit_cov_factor: float = COV_FACTOR) -> dict[str, float]:
    """Both tables for ``(pos [n,3] Angstrom, types [n])`` molecules (types -1 = not an element)."""
    chemistry = load_chemistry()
    from rdkit import Chem
    n_mol = n_atoms = stable_atoms = stable_mols = 0
    valid: list[str] = []
    connected = rd_valid = rd_connected = 0
    valence = np.asarray(VALENCE)
    for pos, types in items:
        n_mol += 1
        n_atoms += len(types)
        if len(types) == 0 or (types < 0).any():  # a non-element (mask token) left: nothing is stable
            continue
        order = chemistry.bond_orders(pos, types)
        ok = order.sum(1) == valence[types]
        stable_atoms += int(ok.sum())
        stable_mols += int(ok.all())
        smi, nfrag = chemistry.edm_validity(types, order)
        if smi is not None:
            valid.append(smi)
            connected += int(nfrag == 1)
        if rdkit_protocol:
            mol = chemistry.rdkit_perceived(types, pos, rdkit_cov_factor)
            if mol is not None:
                rd_valid += 1
                rd_connected += int(len(Chem.GetMolFrags(mol)) == 1)
    if n_mol == 0:
        raise ValueError("no molecules to evaluate")
    unique = set(valid)
    out = {
        "atom_stable": stable_atoms / max(n_atoms, 1),
        "mol_stable": stable_mols / n_mol,
        "validity": len(valid) / n_mol,
        "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "valid_unique": len(unique) / n_mol,
        "connected_validity": connected / n_mol,
    }
    if train_smiles is not None:
        out["novelty"] = sum(s not in train_smiles for s in unique) / len(unique) if unique else 0.0
    if rdkit_protocol:
        out["rdkit_validity"] = rd_valid / n_mol
        out["rdkit_connected_validity"] = rd_connected / n_mol
    out["num_molecules"] = float(n_mol)
    return out


class MoleculeMetricsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    novelty: bool = Field(True, description="compare with the SMILES of the data trained on: the recipe's dataset, "
                          "its split and limit (computed once, cached)")
    rdkit_protocol: bool = Field(True, description="also report RDKit-perceived validity (table 2)")
    rdkit_cov_factor: float = Field(COV_FACTOR, gt=1.0, le=1.5, description="table 2: bonded below this factor times "
                                    "the sum of covalent radii (xyz2mol's default 1.3 bonds the 1,3 carbons of QM9's "
                                    "strained rings: docs/molecules.md)")
    max_samples: int | None = Field(None, ge=1, description="evaluate at most this many samples")
    graph_protocol: bool = Field(True, description="table 3, samples with generated bonds and charges: stability, "
                                 "validity, uniqueness, novelty of the generated graph (SemlaFlow)")
    graph_valence: ValenceTable = Field("octet", description="table 3's allowed valences: 'octet' (Kekule orders, "
                                        "exact) or 'semlaflow' (SemlaFlow/MiDi's lenient table, to compare with them)")
    geometry: bool = Field(True, description="table 4, samples with generated bonds: W1 of bond lengths and angles "
                           "per kind against the data")
    geometry_reference: int = Field(2000, ge=1, description="table 4: molecules of the dataset in the reference "
                                    "(a fixed seeded subsample, computed once per dataset)")
    strain: bool = Field(False, description="table 4: also the median MMFF strain of the valid molecules (slower)")
    strain_iters: int = Field(200, ge=1, description="MMFF minimisation steps of the strain (a short relaxation)")


class MoleculeMetrics:
    """``metric(samples, dataset) -> dict``: EDM stability/validity/uniqueness/novelty plus table 2, and,
    when the samples carry generated ``bonds`` and ``charges``, the generated-bond protocol (table 3,
    :mod:`fmkit_molecules.graph_metrics`) and the geometry check (table 4,
    :mod:`fmkit_molecules.geometry_metrics`) on the same samples.

    Args:
        novelty: compare with the SMILES of the data trained on (the recipe's dataset, split and limit).
        rdkit_protocol: also report RDKit-perceived validity (table 2).
        rdkit_cov_factor: table 2: bonded below this factor times the sum of the covalent radii.
        max_samples: evaluate at most this many samples; None: all.
        graph_protocol: table 3 on samples with generated bonds and charges (SemlaFlow's protocol).
        graph_valence: table 3's allowed valences: "octet" (exact) or "semlaflow" (their lenient table).
        geometry: table 4: W1 of bond lengths (Angstrom) and angles (degrees) per kind against the data.
        geometry_reference: table 4: molecules of the dataset in its reference (a fixed seeded subsample).
        strain: table 4: also the median MMFF strain of the valid molecules (kcal/mol; slower).
        strain_iters: MMFF minimisation steps of the strain (a short relaxation).
    """

    #: table 2 (every sample set); a class attribute, as callers read it (``MoleculeMetrics.tables``)
    tables = {"table 2: connectivity and RDKit perception": ["connected_validity", "rdkit_validity",
                                                            "rdkit_connected_validity"]}
    #: tables 3 and 4 (samples with a generated graph); an instance's ``tables`` adds those its options keep
    graph_tables = {
        "table 3: generated bonds and charges (SemlaFlow protocol)": [
            "graph_atom_stable", "graph_mol_stable", "graph_validity", "graph_connected_validity", "graph_uniqueness",
            "graph_valid_unique", "graph_novelty"],
        "table 4: geometry of the generated graph vs the data (W1)": [
            "geom_bond_length_w1", "geom_bond_angle_w1", "geom_strain_mmff_median", "geom_strain_mmff_typed"],
    }

    def __init__(self, novelty: bool = True, rdkit_protocol: bool = True, rdkit_cov_factor: float = COV_FACTOR,
                 max_samples: int | None = None, graph_protocol: bool = True, graph_valence: ValenceTable = "octet",
                 geometry: bool = True, geometry_reference: int = 2000, strain: bool = False,
                 strain_iters: int = 200) -> None:
        self.novelty, self.rdkit_protocol, self.max_samples = novelty, rdkit_protocol, max_samples
        self.rdkit_cov_factor = rdkit_cov_factor
        self.graph_protocol, self.graph_valence = graph_protocol, graph_valence
        self.geometry, self.geometry_reference = geometry, geometry_reference
        self.strain, self.strain_iters = strain, strain_iters
        self._references: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        keep = [graph_protocol, geometry or strain]
        self.tables = {**type(self).tables, **{t: names for (t, names), k in zip(self.graph_tables.items(), keep) if k}}

    def __call__(self, samples: dict, dataset) -> dict[str, float]:
        train = None
        if self.novelty and hasattr(dataset, "novelty_smiles"):
            train = dataset.novelty_smiles()
        out = evaluate_molecules(unpad(samples, self.max_samples), train, self.rdkit_protocol, self.rdkit_cov_factor)
        if has_graph(samples) and (self.graph_protocol or self.geometry or self.strain):
            out.update(self.graph_metrics(samples, dataset))
        return out

    def graph_metrics(self, samples: dict, dataset) -> dict[str, float]:
        """Tables 3 and 4 of samples with ``bonds`` and ``charges`` (the options say which rows)."""
        from fmkit_molecules.geometry_metrics import geometry_profile, geometry_rows, strain_rows
        from fmkit_molecules.graph_metrics import assess_graph, graph_rows

        graphs = list(unpad_graphs(samples, self.max_samples))
        assessed = [assess_graph(g, self.graph_valence) for g in graphs]
        out: dict[str, float] = {}
        molecule_data = _is_molecule_dataset(dataset)
        if self.graph_protocol:
            train = self._reference(dataset, "smiles") if self.novelty and molecule_data else None
            out.update(graph_rows(assessed, train))
        if self.geometry and molecule_data:
            valid = geometry_profile(g for g, a in zip(graphs, assessed) if a.valid)
            out.update(geometry_rows(valid, self._reference(dataset, "geometry")))
        if self.strain:
            out.update(strain_rows((a.mol for a in assessed if a.valid), self.strain_iters))
        return out

    def _reference(self, dataset, what: str):  # noqa: ANN202 - a SMILES set or a GeometryProfile
        """The dataset's graph SMILES or geometry reference, computed once per dataset object."""
        try:
            cache = self._references.setdefault(dataset, {})
        except TypeError:  # not weak-referenceable: no cache
            cache = {}
        if what not in cache:
            if what == "smiles":
                from fmkit_molecules.graph_metrics import graph_smiles_of_dataset

                cache[what] = graph_smiles_of_dataset(dataset, self.rdkit_cov_factor)
            else:
                from fmkit_molecules.geometry_metrics import reference_profile

                cache[what] = reference_profile(dataset, self.geometry_reference, 0, self.rdkit_cov_factor)
        return cache[what]


def _is_molecule_dataset(dataset) -> bool:  # noqa: ANN001
    """Whether ``dataset`` has examples to read a reference from (``len`` and ``[i]``, at least one)."""
    try:
        return hasattr(dataset, "__getitem__") and len(dataset) > 0
    except TypeError:
        return False
