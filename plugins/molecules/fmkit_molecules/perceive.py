"""Bonds and formal charges of a molecule from its 3-D geometry: the graph the bond-generating
design trains on (vocabulary in :mod:`fmkit_molecules.graph`).

RDKit's ``rdDetermineBonds`` for total charge 0: connectivity, then bond orders and charges by the
xyz2mol algorithm (Kim & Kim 2015, "Universal structure conversion method for organic molecules").
Connectivity is first RDKit's default connect-the-dots rule; where that yields no sanitizable
molecule (a few percent of QM9, mostly strained rings and long bonds: docs/molecules.md) it is retried
with extended-Hückel connectivity (YAeHMOP, ``useHueckel=True``). The result is kekulized (orders
1/2/3, no aromatic class) and accepted only when the graph rebuilt from the returned arrays alone --
atoms with explicit hydrogens, bond orders, formal charges -- sanitizes, so it is exactly what a
model may learn. Deterministic: the same atoms and coordinates give the same graph.

RDKit is needed here (imported on first use of this module); a cached graph is read without it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds

from fmkit_molecules.elements import ELEMENTS
from fmkit_molecules.graph import CHARGES

RDLogger.DisableLog("rdApp.*")

#: how the connectivity was found, in the order tried
METHODS: tuple[str, ...] = ("default", "hueckel")
_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
_BOND_TYPE = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
#: molecules per work item of :func:`perceive_packed`: enough work per item that the process pool's
#: per-item overhead stays small
CHUNK = 1000


@dataclass(frozen=True)
class Graph:
    """A perceived graph: ``bonds`` [n, n] int8 kekulized orders 0..3 (symmetric, zero diagonal),
    ``charges`` [n] int8 formal charges in (-1, 0, +1), ``method`` the connectivity that worked
    (one of :data:`METHODS`)."""

    bonds: np.ndarray
    charges: np.ndarray
    method: str


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: YAeHMOP (the Hückel connectivity) prints '!!! Warning !!! Distance
    between atoms ... is suspicious' from C for most QM9 molecules, which would flood the terminal."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _xyz_mol(atoms: np.ndarray, pos: np.ndarray) -> Chem.Mol | None:
    block = f"{len(atoms)}\n\n" + "\n".join(
        f"{ELEMENTS[int(t)]} {x:.6f} {y:.6f} {z:.6f}" for t, (x, y, z) in zip(atoms, pos))
    return Chem.MolFromXYZBlock(block)


def _attempt(atoms: np.ndarray, pos: np.ndarray, hueckel: bool) -> Chem.Mol | None:
    """Connectivity (default or Hückel), orders and charges for total charge 0, sanitized and
    kekulized; None when RDKit finds none or the molecule does not sanitize."""
    mol = _xyz_mol(atoms, pos)
    if mol is None:
        return None
    try:
        if hueckel:
            with _quiet_stderr():
                rdDetermineBonds.DetermineBonds(mol, useHueckel=True, charge=0, embedChiral=False)
        else:
            rdDetermineBonds.DetermineBonds(mol, charge=0, embedChiral=False)
        Chem.SanitizeMol(mol)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except (ValueError, RuntimeError):  # RDKit's valence / charge / kekulization errors subclass these
        return None
    return mol


def _arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray] | None:
    """(bonds [n,n] int8, charges [n] int8) of a kekulized molecule; None if it has a radical, a
    charge outside (-1, 0, +1) or a bond that is not single/double/triple."""
    n = mol.GetNumAtoms()
    charges = np.zeros(n, dtype=np.int8)
    for a in mol.GetAtoms():
        q = a.GetFormalCharge()
        if a.GetNumRadicalElectrons() or q not in CHARGES:
            return None
        charges[a.GetIdx()] = q
    bonds = np.zeros((n, n), dtype=np.int8)
    for b in mol.GetBonds():
        order = _ORDER.get(b.GetBondType())
        if order is None:
            return None
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = order
    return bonds, charges


def molecule_from_graph(atoms: np.ndarray, bonds: np.ndarray, charges: np.ndarray) -> Chem.RWMol:
    """An unsanitized RDKit molecule from the graph fields alone: atoms [n] class indices (all
    hydrogens explicit: no implicit ones are added), bonds [n,n] orders 0..3 (upper triangle read),
    charges [n] formal charges."""
    mol = Chem.RWMol()
    for t, q in zip(np.asarray(atoms, dtype=np.int64), np.asarray(charges, dtype=np.int64)):
        a = Chem.Atom(ELEMENTS[int(t)])
        a.SetFormalCharge(int(q))
        a.SetNoImplicit(True)
        mol.AddAtom(a)
    ii, jj = np.nonzero(np.triu(np.asarray(bonds), 1))
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, _BOND_TYPE[int(bonds[i, j])])
    return mol


def graph_sanitizes(atoms: np.ndarray, bonds: np.ndarray, charges: np.ndarray) -> bool:
    """Whether the molecule of these graph fields passes RDKit sanitization (valences, kekulization)."""
    mol = molecule_from_graph(atoms, bonds, charges)
    try:
        Chem.SanitizeMol(mol)
    except (ValueError, RuntimeError):
        return False
    return not any(a.GetNumRadicalElectrons() for a in mol.GetAtoms())


def perceive(atoms: np.ndarray, pos: np.ndarray) -> Graph | None:
    """The bond graph and formal charges of a neutral molecule from atom class indices [n]
    (0..4 = H,C,N,O,F, hydrogens explicit) and positions [n, 3] in Angstrom.

    Default connectivity first, Hückel connectivity where that gives no sanitizable molecule.
    None when neither does, or the graph holds a radical or a charge outside (-1, 0, +1).
    """
    atoms = np.asarray(atoms, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.float64)
    for method in METHODS:
        mol = _attempt(atoms, pos, hueckel=method == "hueckel")
        got = _arrays(mol) if mol is not None else None
        if got is not None and graph_sanitizes(atoms, *got):
            return Graph(got[0], got[1], method)
    return None


@dataclass
class PerceivedChunk:
    """The graphs of consecutive molecules, packed: per molecule its edges ``i < j`` (local atom
    indices) with their orders, per atom its charge; a molecule with no graph has no edges and
    zero charges, ``ok`` False. ``method`` is the index into :data:`METHODS` (-1: none)."""

    edge_counts: np.ndarray  # [M] int64
    edges: np.ndarray  # [E, 2] int16
    orders: np.ndarray  # [E] int8
    charges: np.ndarray  # [A] int8
    ok: np.ndarray  # [M] bool
    method: np.ndarray  # [M] int8


def perceive_chunk(atoms: np.ndarray, pos: np.ndarray, offsets: np.ndarray) -> PerceivedChunk:
    """:func:`perceive` over molecules packed as concatenated atoms [A], pos [A,3] and offsets [M+1]
    (molecule m is ``offsets[m]:offsets[m+1]``, offsets starting at 0)."""
    m = len(offsets) - 1
    edge_counts = np.zeros(m, dtype=np.int64)
    edges: list[np.ndarray] = []
    orders: list[np.ndarray] = []
    charges = np.zeros(len(atoms), dtype=np.int8)
    ok = np.zeros(m, dtype=bool)
    method = np.full(m, -1, dtype=np.int8)
    for k in range(m):
        a, b = int(offsets[k]), int(offsets[k + 1])
        g = perceive(atoms[a:b], pos[a:b])
        if g is None:
            continue
        ii, jj = np.nonzero(np.triu(g.bonds, 1))
        edges.append(np.stack([ii, jj], axis=1).astype(np.int16))
        orders.append(g.bonds[ii, jj].astype(np.int8))
        edge_counts[k] = len(ii)
        charges[a:b] = g.charges
        ok[k] = True
        method[k] = METHODS.index(g.method)
    return PerceivedChunk(
        edge_counts=edge_counts,
        edges=np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int16),
        orders=np.concatenate(orders) if orders else np.zeros(0, dtype=np.int8),
        charges=charges, ok=ok, method=method)


def _work(args: tuple[np.ndarray, np.ndarray, np.ndarray]) -> PerceivedChunk:
    return perceive_chunk(*args)


def _worker_signals() -> None:
    """Pool initializer: a forked worker drops the handlers it inherited (``fmkit`` turns SIGTERM into
    KeyboardInterrupt), so the pool's own SIGTERM at shutdown ends it quietly, and leaves Ctrl-C to
    the parent, which stops the pool."""
    for name in ("SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def perceive_packed(atoms: np.ndarray, pos: np.ndarray, offsets: np.ndarray, *, processes: int = 2,
                    progress: Callable[[int], None] | None = None) -> PerceivedChunk:
    """:func:`perceive_chunk` over all molecules, in chunks of :data:`CHUNK` molecules spread over up
    to ``processes`` worker processes (results in molecule order, so the output does not depend on
    ``processes``).

    Args:
        atoms: atom classes of all molecules, concatenated [A].
        pos: their positions [A, 3] (Angstrom).
        offsets: molecule m is ``offsets[m]:offsets[m+1]`` [M+1], starting at 0.
        processes: most worker processes (capped at the CPU count and the number of chunks).
        progress: called with ``k`` as each chunk of ``k`` molecules is done; None: silent.

    Returns:
        The graphs of all M molecules, packed, in molecule order.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    m = len(offsets) - 1
    jobs = []
    for s in range(0, m, CHUNK):
        e = min(s + CHUNK, m)
        a, b = int(offsets[s]), int(offsets[e])
        jobs.append((np.asarray(atoms[a:b]), np.asarray(pos[a:b], dtype=np.float64), offsets[s : e + 1] - a))
    procs = max(1, min(int(processes), os.cpu_count() or 1, len(jobs)))
    parts: list[PerceivedChunk] = []
    if procs == 1:
        results: Iterator[PerceivedChunk] = map(_work, jobs)
        pool = None
    else:
        import multiprocessing

        # fork (as torch's DataLoader workers): spawn would re-run a user's unguarded script in each worker;
        # the workers touch only numpy and RDKit, never torch's thread pools
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(procs, initializer=_worker_signals)
        results = pool.imap(_work, jobs)
    try:
        for job, part in zip(jobs, results):
            parts.append(part)
            if progress is not None:
                progress(len(job[2]) - 1)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return _concat(parts)


def _concat(parts: list[PerceivedChunk]) -> PerceivedChunk:
    if not parts:
        return PerceivedChunk(np.zeros(0, np.int64), np.zeros((0, 2), np.int16), np.zeros(0, np.int8),
                              np.zeros(0, np.int8), np.zeros(0, bool), np.zeros(0, np.int8))
    return PerceivedChunk(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                            ("edge_counts", "edges", "orders", "charges", "ok", "method")))


__all__ = ["Graph", "METHODS", "perceive", "molecule_from_graph", "graph_sanitizes", "PerceivedChunk",
           "perceive_chunk", "perceive_packed"]
