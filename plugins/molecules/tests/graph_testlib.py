"""Helpers of the generated-graph tests: molecules as :class:`MolGraph` (from SMILES, embedded, or by
hand), padded graph batches, and a stand-in dataset whose examples carry their graph."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from fmkit_molecules.elements import INDEX
from fmkit_molecules.graph import CHARGE_OFFSET
from fmkit_molecules.samples import MolGraph


def graph_from_smiles(smiles: str, seed: int = 0) -> MolGraph:
    """A real molecule as a generated graph would carry it: explicit H, Kekule orders, formal charges,
    an ETKDG + MMFF geometry (Angstrom)."""
    from fmkit_molecules import chemistry
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    assert AllChem.EmbedMolecule(mol, params) == 0, smiles
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    t, b, q = chemistry.kekulized_graph(mol)
    return MolGraph(mol.GetConformer().GetPositions(), t, b, q, True)


def star(centre: str, charge: int, n_h: int, r: float = 1.05) -> MolGraph:
    """A centre atom with ``n_h`` hydrogens bonded (single bonds) at distance ``r``: CH3 radical, NH4+ ..."""
    dirs = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / np.sqrt(3)
    pos = np.concatenate([np.zeros((1, 3)), r * dirs[:n_h]])
    types = np.array([INDEX[centre]] + [INDEX["H"]] * n_h)
    bonds = np.zeros((n_h + 1, n_h + 1), dtype=np.int64)
    bonds[0, 1:] = bonds[1:, 0] = 1
    charges = np.zeros(n_h + 1, dtype=np.int64)
    charges[0] = charge
    return MolGraph(pos, types, bonds, charges, True)


def join(a: MolGraph, b: MolGraph, shift: float = 8.0) -> MolGraph:
    """Two molecules as one sample (two fragments), ``b`` moved ``shift`` Angstrom away."""
    n, m = len(a), len(b)
    bonds = np.zeros((n + m, n + m), dtype=np.int64)
    bonds[:n, :n], bonds[n:, n:] = a.bonds, b.bonds
    pos = np.concatenate([a.pos, b.pos + np.array([shift, 0, 0])])
    return MolGraph(pos, np.concatenate([a.types, b.types]), bonds, np.concatenate([a.charges, b.charges]), True)


def graph_batch(graphs: list[MolGraph], noisy_lower: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded ``{"pos","atoms","charges","bonds","mask"}`` (class indices) as a sampler returns them:
    with ``noisy_lower`` the lower triangle and the diagonal of ``bonds`` are random classes (mask
    token included), which readers must ignore."""
    n = max(len(g) for g in graphs)
    b = len(graphs)
    gen = torch.Generator().manual_seed(seed)
    pos = torch.zeros(b, n, 3, dtype=torch.float64)
    atoms = torch.zeros(b, n, dtype=torch.long)
    charges = torch.full((b, n), CHARGE_OFFSET, dtype=torch.long)
    bonds = torch.randint(0, 5, (b, n, n), generator=gen) if noisy_lower else torch.zeros(b, n, n, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.bool)
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    for i, g in enumerate(graphs):
        k = len(g)
        pos[i, :k] = torch.as_tensor(g.pos - g.pos.mean(0))
        atoms[i, :k] = torch.as_tensor(g.types)
        charges[i, :k] = torch.as_tensor(g.charges + CHARGE_OFFSET)
        bk = torch.zeros(n, n, dtype=torch.long)
        bk[:k, :k] = torch.as_tensor(g.bonds)
        bonds[i] = torch.where(upper, bk, bonds[i])
        mask[i, :k] = True
    return {"pos": pos, "atoms": atoms, "charges": charges, "bonds": bonds, "mask": mask}


class GraphDataset:
    """Stand-in for a molecule dataset with ``bonds: true``: examples ``{"pos","atoms","bonds","charges"}``
    (class indices), ``info.meta["bonds"]``; ``bonds=False`` gives a position-only dataset."""

    def __init__(self, graphs: list[MolGraph], bonds: bool = True) -> None:
        self.graphs = graphs
        self.info = SimpleNamespace(meta={"bonds": True} if bonds else {})
        self.reads = 0

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.reads += 1
        g = self.graphs[i]
        ex = {"pos": torch.as_tensor(g.pos - g.pos.mean(0), dtype=torch.float32),
              "atoms": torch.as_tensor(g.types, dtype=torch.long)}
        if self.info.meta.get("bonds"):
            ex["bonds"] = torch.as_tensor(g.bonds, dtype=torch.long)
            ex["charges"] = torch.as_tensor(g.charges + CHARGE_OFFSET, dtype=torch.long)
        return ex
