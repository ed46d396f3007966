"""The molecular graph as generated fields: bond orders per atom pair and formal charges per atom.

Layout of a molecule state with its graph (``qm9``/``xyz_molecules`` with ``bonds: true``):

- ``bonds`` [B, N, N] long, symmetric, diagonal 0: the *kekulized* bond order of each pair, an index
  into :data:`BOND_TYPES` (none, single, double, triple). Kekulé form rather than an aromatic class:
  its orders add up to each atom's valence exactly, so valence (the stability metrics) is read off
  the generated graph with no aromaticity model, and RDKit re-perceives aromaticity on sanitization.
- ``charges`` [B, N] long: formal charge + 1, an index into :data:`CHARGES` (-1, 0, +1).
- ``masks["bonds"]`` [B, N, N] bool: the pairs that count, ``i < j`` with both atoms real (each
  pair once). Only the upper triangle is meaningful: models read it and mirror it, metrics and
  writers read it; a sampler's lower triangle is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: bond class index -> bond order (kekulized; 0 = no bond)
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple")
BOND_ORDERS: tuple[int, ...] = (0, 1, 2, 3)
#: charge class index -> formal charge
CHARGES: tuple[int, ...] = (-1, 0, 1)
CHARGE_OFFSET = 1  # class index = formal charge + CHARGE_OFFSET


def pair_mask(mask: Tensor) -> Tensor:
    """[B, N] atom mask -> [B, N, N] bool pair mask: ``i < j`` and both atoms real."""
    n = mask.shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    m = mask.to(torch.bool)
    return m[..., :, None] & m[..., None, :] & upper


def symmetric_from_upper(x: Tensor) -> Tensor:
    """A [..., N, N, ...] pair tensor rebuilt from its upper triangle (``i < j``), mirrored below
    the diagonal; the diagonal is zero. Works for class indices [B,N,N] and features [B,N,N,F]."""
    n = x.shape[1]
    upper = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
    shape = (1, n, n) + (1,) * (x.dim() - 3)
    up = upper.reshape(shape)
    xt = x.transpose(1, 2)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(up, x, torch.where(up.transpose(1, 2), xt, zero))
