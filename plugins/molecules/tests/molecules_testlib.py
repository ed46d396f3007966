"""Test helpers of the molecules plugin: small molecules built with RDKit (SMILES -> ETKDG
embedding -> MMFF relaxation). A uniquely named module so it never clashes with another conftest."""

from __future__ import annotations

import numpy as np
import torch
from fmkit_molecules.elements import INDEX
from fmkit_molecules.xyz import Record

SMILES = ["C", "O", "N", "C=C", "C#C", "CO", "CC", "C=O", "CCO", "CC(=O)O", "c1ccccc1", "CC#N", "NC=O", "OCC(O)CO",
          "CC(C)C", "C1CC1", "CCN", "COC", "FC(F)F", "CC(N)=O"]


def embed(smiles: str, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Element symbols and a relaxed 3-D geometry [n, 3] (Angstrom) with explicit hydrogens."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"embedding {smiles} failed")
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    pos = mol.GetConformer().GetPositions()
    return [a.GetSymbol() for a in mol.GetAtoms()], pos


def record(smiles: str, rid: str, seed: int = 0) -> Record:
    syms, pos = embed(smiles, seed)
    return Record(rid, tuple(syms), pos)


def as_batch(mols: list[tuple[list[str], np.ndarray]]) -> dict[str, torch.Tensor]:
    """Padded ``{"pos","atoms","mask"}`` (float64 positions, centred) from (symbols, pos) pairs."""
    n = max(len(s) for s, _ in mols)
    b = len(mols)
    pos = torch.zeros(b, n, 3, dtype=torch.float64)
    atoms = torch.zeros(b, n, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, (s, p) in enumerate(mols):
        k = len(s)
        pos[i, :k] = torch.as_tensor(p - p.mean(0))
        atoms[i, :k] = torch.as_tensor([INDEX[e] for e in s])
        mask[i, :k] = True
    return {"pos": pos, "atoms": atoms, "mask": mask}
