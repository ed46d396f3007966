"""Padded sample batches as per-molecule arrays: plain numpy, no RDKit (the XYZ writer and the metrics
both start here)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fmkit_molecules.elements import ELEMENTS


def unpad(samples: dict, max_items: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(pos [n,3] float64, types [n] int)`` per molecule of a padded batch.

    ``atoms`` may be class indices [B,N] or one-hot / scores [B,N,K] (argmax is taken); atoms with an
    index outside the vocabulary (a leftover mask token) are kept as -1 so metrics count them invalid.
    """
    pos = samples["pos"].detach().cpu().double().numpy()
    atoms = samples["atoms"].detach().cpu()
    if atoms.is_floating_point():
        atoms = atoms.argmax(-1)
    atoms = atoms.long().numpy()
    mask = samples.get("mask")
    mask = np.ones(atoms.shape, dtype=bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
    count = pos.shape[0] if max_items is None else min(max_items, pos.shape[0])
    for i in range(count):
        m = mask[i]
        t = atoms[i][m]
        t = np.where((t >= 0) & (t < len(ELEMENTS)), t, -1)
        yield pos[i][m], t
