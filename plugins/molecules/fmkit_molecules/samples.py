"""Padded sample batches as per-molecule arrays: plain numpy, no RDKit (the XYZ writer and the metrics
both start here).

Two views of one batch: :func:`unpad` gives ``(pos, types)`` for the position-only protocols (EDM);
:func:`unpad_graphs` gives :class:`MolGraph` (positions, atom types, the generated bond orders and
formal charges) when the samples carry ``bonds`` and ``charges`` (see :mod:`fmkit_molecules.graph`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fmkit_molecules.elements import ELEMENTS
from fmkit_molecules.graph import BOND_ORDERS, CHARGE_OFFSET, CHARGES


def _classes(x: torch.Tensor) -> np.ndarray:
    """Class indices as int64 numpy: argmax of one-hot / scores / logits (last axis), else as given."""
    x = x.detach().cpu()
    if x.is_floating_point():
        x = x.argmax(-1)
    return x.long().numpy()


def _atom_mask(samples: Mapping, shape: tuple[int, ...]) -> np.ndarray:
    mask = samples.get("mask")
    return np.ones(shape, dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)


def unpad(samples: dict, max_items: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(pos [n,3] float64, types [n] int)`` per molecule of a padded batch.

    ``atoms`` may be class indices [B,N] or one-hot / scores [B,N,K] (argmax is taken); atoms with an
    index outside the vocabulary (a leftover mask token) are kept as -1 so metrics count them invalid.
    """
    pos = samples["pos"].detach().cpu().double().numpy()
    atoms = _classes(samples["atoms"])
    mask = _atom_mask(samples, atoms.shape)
    count = pos.shape[0] if max_items is None else min(max_items, pos.shape[0])
    for i in range(count):
        m = mask[i]
        t = atoms[i][m]
        t = np.where((t >= 0) & (t < len(ELEMENTS)), t, -1)
        yield pos[i][m], t


@dataclass(frozen=True, eq=False)
class MolGraph:
    """One molecule with its graph, as the metrics and writers read it.

    - ``pos`` [n, 3] float64, Angstrom;
    - ``types`` [n] int64: element index into ``ELEMENTS``, -1 where not an element (a mask token);
    - ``bonds`` [n, n] int64 symmetric, diagonal 0: kekulized bond order 0..3, -1 where the class is
      not a bond class (a mask token); built from the upper triangle only;
    - ``charges`` [n] int64: formal charge (-1, 0, +1); 0 where the class was not a charge class;
    - ``in_vocab``: every atom, bond and charge class is in its vocabulary (else nothing is stable or valid).
    """

    pos: np.ndarray
    types: np.ndarray
    bonds: np.ndarray
    charges: np.ndarray
    in_vocab: bool

    def __len__(self) -> int:
        return len(self.types)


def has_graph(samples: Mapping) -> bool:
    """Whether a sample batch (or example) carries a generated graph: both ``bonds`` and ``charges``."""
    return "bonds" in samples and "charges" in samples


def graph_from_arrays(pos: np.ndarray, atoms: np.ndarray, bond_classes: np.ndarray,
                      charge_classes: np.ndarray) -> MolGraph:
    """A :class:`MolGraph` from one molecule's class indices: atoms [n], bond classes [n, n] (only
    ``i < j`` is read: a sampler's lower triangle is noise), charge classes [n] (formal charge + 1)."""
    atoms = np.asarray(atoms, dtype=np.int64)
    n = len(atoms)
    bc = np.asarray(bond_classes, dtype=np.int64).reshape(n, n)
    cc = np.asarray(charge_classes, dtype=np.int64).reshape(n)
    types = np.where((atoms >= 0) & (atoms < len(ELEMENTS)), atoms, -1)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    bond_ok = (bc >= 0) & (bc < len(BOND_ORDERS))
    orders = np.where(bond_ok, np.asarray(BOND_ORDERS)[np.clip(bc, 0, len(BOND_ORDERS) - 1)], -1)
    up = np.where(upper, orders, 0)
    bonds = up + up.T
    charge_ok = (cc >= 0) & (cc < len(CHARGES))
    charges = np.where(charge_ok, cc - CHARGE_OFFSET, 0)
    in_vocab = bool((types >= 0).all() and bond_ok[upper].all() and charge_ok.all())
    return MolGraph(np.asarray(pos, dtype=np.float64).reshape(n, 3), types, bonds, charges, in_vocab)


def unpad_graphs(samples: dict, max_items: int | None = None) -> Iterator[MolGraph]:
    """Yield a :class:`MolGraph` per molecule of a padded batch that has ``bonds`` [B,N,N] (class
    indices, or scores [B,N,N,4]) and ``charges`` [B,N] (class indices, or scores [B,N,3]); ``atoms``
    as in :func:`unpad`. Padding and a pair's lower triangle are ignored."""
    pos = samples["pos"].detach().cpu().double().numpy()
    atoms = _classes(samples["atoms"])
    bonds = _classes(samples["bonds"])
    charges = _classes(samples["charges"])
    mask = _atom_mask(samples, atoms.shape)
    count = pos.shape[0] if max_items is None else min(max_items, pos.shape[0])
    for i in range(count):
        m = mask[i]
        yield graph_from_arrays(pos[i][m], atoms[i][m], bonds[i][np.ix_(m, m)], charges[i][m])


def graph_of_example(example: Mapping) -> MolGraph:
    """A dataset example ``{"pos": [n,3], "atoms": [n] or [n,K], "bonds": [n,n], "charges": [n]}``
    (class indices, as a dataset with ``bonds: true`` gives them) as a :class:`MolGraph`."""
    return graph_from_arrays(example["pos"].detach().cpu().double().numpy(), _classes(example["atoms"]),
                             _classes(example["bonds"]), _classes(example["charges"]))
