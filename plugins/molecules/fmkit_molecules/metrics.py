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
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmkit_molecules.elements import COV_FACTOR, VALENCE
from fmkit_molecules.rdkit_import import load_chemistry
from fmkit_molecules.samples import unpad


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
                                    "the sum of covalent radii (xyz2mol's default 1.3 rejects 5% of QM9)")
    max_samples: int | None = Field(None, ge=1, description="evaluate at most this many samples")


class MoleculeMetrics:
    """``metric(samples, dataset) -> dict``: EDM stability/validity/uniqueness/novelty plus table 2."""

    tables = {"table 2: connectivity and RDKit perception": ["connected_validity", "rdkit_validity",
                                                            "rdkit_connected_validity"]}

    def __init__(self, novelty: bool = True, rdkit_protocol: bool = True, rdkit_cov_factor: float = COV_FACTOR,
                 max_samples: int | None = None) -> None:
        self.novelty, self.rdkit_protocol, self.max_samples = novelty, rdkit_protocol, max_samples
        self.rdkit_cov_factor = rdkit_cov_factor

    def __call__(self, samples: dict, dataset) -> dict[str, float]:
        train = None
        if self.novelty and hasattr(dataset, "novelty_smiles"):
            train = dataset.novelty_smiles()
        return evaluate_molecules(unpad(samples, self.max_samples), train, self.rdkit_protocol, self.rdkit_cov_factor)
