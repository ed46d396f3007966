"""From coordinates and atom types to bonds and RDKit molecules, and from a generated graph to one.

Bond orders follow EDM (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``): a pair is bonded with order
3 / 2 / 1 when its distance is below the triple / double / single reference length plus a margin of
3 / 5 / 10 pm (the reference lengths are in :mod:`fmkit_molecules.elements`). A generated graph
(bonds and formal charges sampled with the atoms) is built as it is, hydrogens explicit and no
implicit H (:func:`graph_molecule`; the metrics of :mod:`fmkit_molecules.graph_metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

from fmkit_molecules.elements import BOND1_PM, BOND2_PM, BOND3_PM, COV_FACTOR, ELEMENTS, MARGINS_PM, VALENCE

RDLogger.DisableLog("rdApp.*")

_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def bond_orders(pos: np.ndarray, types: np.ndarray) -> np.ndarray:
    """EDM bond orders [n, n] (0 = no bond) from positions [n, 3] in Angstrom and class indices [n]."""
    pos = np.asarray(pos, dtype=np.float64)
    types = np.asarray(types, dtype=np.int64)
    d = 100.0 * np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))  # pm
    ti, tj = types[:, None], types[None, :]
    b1, b2, b3 = BOND1_PM[ti, tj], BOND2_PM[ti, tj], BOND3_PM[ti, tj]
    m1, m2, m3 = MARGINS_PM
    order = ((b1 > 0) & (d < b1 + m1)).astype(np.int64)
    order = np.where((order == 1) & (b2 > 0) & (d < b2 + m2), 2, order)
    order = np.where((order == 2) & (b3 > 0) & (d < b3 + m3), 3, order)
    np.fill_diagonal(order, 0)
    return order


def atom_stability(pos: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Per-atom EDM stability [n] bool: bond-order sum equals the element's valence (H1 C4 N3 O2 F1)."""
    order = bond_orders(pos, types)
    return order.sum(1) == np.asarray(VALENCE)[np.asarray(types, dtype=np.int64)]


def add_conformer(mol: Chem.RWMol, pos: np.ndarray) -> None:
    """Attach positions [n, 3] (Angstrom) to ``mol`` as its conformer."""
    conf = Chem.Conformer(mol.GetNumAtoms())
    for k, (x, y, z) in enumerate(np.asarray(pos, dtype=np.float64)):
        conf.SetAtomPosition(k, (float(x), float(y), float(z)))
    mol.AddConformer(conf, assignId=True)


def build_molecule(types: np.ndarray, order: np.ndarray, pos: np.ndarray | None = None) -> Chem.RWMol:
    """RDKit molecule with the given atoms and bonds (no sanitisation); a conformer if ``pos`` is given."""
    mol = Chem.RWMol()
    for t in np.asarray(types, dtype=np.int64):
        mol.AddAtom(Chem.Atom(ELEMENTS[int(t)]))
    ii, jj = np.nonzero(np.triu(order, 1))
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, _BOND_TYPES[int(order[i, j])])
    if pos is not None:
        add_conformer(mol, pos)
    return mol


def sanitized_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES after RDKit sanitisation (in place), or None if it fails (EDM's ``mol2smiles``)."""
    try:
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):
        return None
    return Chem.MolToSmiles(mol)


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(frags, default=mol, key=lambda m: m.GetNumAtoms())


def edm_validity(types: np.ndarray, order: np.ndarray) -> tuple[str | None, int]:
    """EDM validity: the molecule sanitises; returns (SMILES of its largest fragment or None, #fragments)."""
    mol = build_molecule(types, order)
    if sanitized_smiles(mol) is None:
        return None, 0
    nfrag = len(Chem.GetMolFrags(mol))
    return sanitized_smiles(Chem.Mol(largest_fragment(mol))), nfrag


#: most bonds an atom may have for RDKit's bond-order perception to be tried (keeps it fast on junk)
_MAX_DEGREE = (1, 4, 4, 3, 1)


def rdkit_perceived(types: np.ndarray, pos: np.ndarray, cov_factor: float = COV_FACTOR) -> Chem.Mol | None:
    """Bonds and formal charges perceived by RDKit (``rdDetermineBonds``: xyz2mol's covalent-radius
    connectivity, d < ``cov_factor`` (r_i + r_j), then its bond orders (Kim & Kim 2015) for total
    charge 0), sanitised; None if impossible or chemically implausible: any radical, or a formal
    charge other than +-1 on N or O (zwitterions such as NH3+ / COO- are allowed, a bare [H+] or [C-]
    is not). RDKit's default connect-the-dots rule would reject real QM9 molecules with strained rings
    (docs/molecules.md gives the share)."""
    n = len(types)
    block = f"{n}\n\n" + "\n".join(
        f"{ELEMENTS[int(t)]} {x:.6f} {y:.6f} {z:.6f}" for t, (x, y, z) in zip(types, np.asarray(pos, float)))
    mol = Chem.MolFromXYZBlock(block)
    if mol is None:
        return None
    try:
        rdDetermineBonds.DetermineConnectivity(mol, useVdw=True, covFactor=cov_factor)
        if any(a.GetDegree() > _MAX_DEGREE[int(t)] for a, t in zip(mol.GetAtoms(), types)):
            return None
        rdDetermineBonds.DetermineBondOrders(mol, charge=0)
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):
        return None
    for a in mol.GetAtoms():
        q = a.GetFormalCharge()
        if a.GetNumRadicalElectrons() or (q and (a.GetSymbol() not in ("N", "O") or abs(q) > 1)):
            return None
    return mol


# --- the generated graph (bonds and formal charges come with the sample) ------------------------------


def graph_molecule(types: np.ndarray, bonds: np.ndarray, charges: np.ndarray,
                   pos: np.ndarray | None = None) -> Chem.RWMol:
    """RDKit molecule of a generated graph, unsanitised: atoms ``types`` [n] (element indices) with
    formal ``charges`` [n] and no implicit hydrogens (``SetNoImplicit``: hydrogens are atoms of the
    graph, as in SemlaFlow/FlowMol), bonds of order 1..3 from the upper triangle of ``bonds`` [n, n]
    (0 or a non-bond class -1 adds nothing); a conformer if ``pos`` [n, 3] (Angstrom) is given."""
    mol = Chem.RWMol()
    for t, q in zip(np.asarray(types, dtype=np.int64).tolist(), np.asarray(charges, dtype=np.int64).tolist()):
        atom = Chem.Atom(ELEMENTS[t])
        atom.SetFormalCharge(q)
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    up = np.triu(np.asarray(bonds, dtype=np.int64), 1)
    ii, jj = np.nonzero(up > 0)
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, _BOND_TYPES[int(up[i, j])])
    if pos is not None:
        add_conformer(mol, pos)
    return mol


def sanitized_copy(mol: Chem.Mol) -> Chem.Mol | None:
    """A sanitised copy of ``mol`` (``Chem.SanitizeMol``: valence, kekulisation, aromaticity,
    radicals), or None when sanitisation fails. The input is left as it is (its Kekule orders)."""
    m = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(m)
    except (ValueError, RuntimeError):
        return None
    return m


def canonical_smiles(mol: Chem.Mol) -> str:
    """Canonical SMILES of a sanitised molecule, hydrogens folded into their heavy atoms
    (``[NH4+]``, ``[CH3]`` for a methyl radical); the identity used for uniqueness and novelty."""
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except (ValueError, RuntimeError):
        return Chem.MolToSmiles(mol)


def num_fragments(mol: Chem.Mol) -> int:
    return len(Chem.GetMolFrags(mol))


def kekulized_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(types [n], bond orders [n, n] (Kekule, 0..3), formal charges [n])`` of a sanitised RDKit
    molecule whose elements are all in ``ELEMENTS`` (e.g. :func:`rdkit_perceived`'s); raises
    ValueError for another element."""
    m = Chem.Mol(mol)
    Chem.Kekulize(m, clearAromaticFlags=True)
    n = m.GetNumAtoms()
    types = np.array([ELEMENTS.index(a.GetSymbol()) for a in m.GetAtoms()], dtype=np.int64)
    charges = np.array([a.GetFormalCharge() for a in m.GetAtoms()], dtype=np.int64)
    bonds = np.zeros((n, n), dtype=np.int64)
    for b in m.GetBonds():
        i, j, o = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondTypeAsDouble())
        bonds[i, j] = bonds[j, i] = o
    return types, bonds, charges


def mmff_strain(mol: Chem.Mol, max_iters: int = 200) -> float | None:
    """MMFF94 strain of a sanitised molecule's own conformer, kcal/mol: energy as generated minus
    energy after at most ``max_iters`` minimisation steps (a short relaxation, as SemlaFlow's
    ``AverageStrainEnergy``; a lower bound of the full strain). None if MMFF cannot type the molecule
    (e.g. a radical) or it has no conformer."""
    from rdkit.Chem import rdForceFieldHelpers as ff_helpers

    if mol.GetNumConformers() == 0:
        return None
    m = Chem.Mol(mol)
    props = ff_helpers.MMFFGetMoleculeProperties(m)
    if props is None:
        return None
    ff = ff_helpers.MMFFGetMoleculeForceField(m, props)
    if ff is None:
        return None
    before = ff.CalcEnergy()
    ff.Minimize(maxIts=max_iters)
    return float(before - ff.CalcEnergy())


def smiles_of(items: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[str | None]:
    """Whole-molecule canonical SMILES under EDM bonds (None where sanitisation fails)."""
    out: list[str | None] = []
    for pos, types in items:
        if (types < 0).any():
            out.append(None)
            continue
        out.append(sanitized_smiles(build_molecule(types, bond_orders(pos, types))))
    return out


def smiles_of_dataset(dataset, cache_name: str | None = None) -> set[str]:
    """The set of SMILES of every molecule of a molecule dataset (EDM's training-set SMILES), cached
    under ``$FMKIT_CACHE_DIR/qm9/<cache_name>.smi`` when ``cache_name`` is given."""
    def compute() -> set[str]:
        items = ((dataset[i]["pos"].numpy(), _types(dataset[i]["atoms"])) for i in range(len(dataset)))
        return {s for s in smiles_of(progress(items, len(dataset), "training SMILES")) if s}

    return cached_smiles(cache_name, compute)


def progress(items: Iterable, total: int, desc: str) -> Iterable:
    """``items`` behind a tqdm bar (off with ``FMKIT_NO_PROGRESS=1``)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, mininterval=2.0, disable=os.environ.get("FMKIT_NO_PROGRESS") == "1")


def cached_smiles(cache_name: str | None, compute: Callable[[], set[str]]) -> set[str]:
    """A set of SMILES read from ``$FMKIT_CACHE_DIR/qm9/<cache_name>.smi`` when there, else computed
    and written there (atomically; a cache that cannot be written is skipped). No cache if no name."""
    from fmkit_molecules.qm9 import cache_dir

    cfile = cache_dir() / "qm9" / f"{cache_name}.smi" if cache_name else None
    if cfile is not None and cfile.is_file():
        return set(cfile.read_text().split())
    smiles = compute()
    if cfile is not None:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text("\n".join(sorted(smiles)) + "\n")
            os.replace(tmp, cfile)
        except OSError:
            pass
    return smiles


def _types(atoms: torch.Tensor) -> np.ndarray:
    return (atoms.argmax(-1) if atoms.is_floating_point() else atoms).long().numpy()


__all__ = ["bond_orders", "atom_stability", "build_molecule", "sanitized_smiles", "edm_validity", "rdkit_perceived",
           "smiles_of", "smiles_of_dataset", "cached_smiles", "graph_molecule", "sanitized_copy", "canonical_smiles",
           "num_fragments", "kekulized_graph", "mmff_strain"]
