"""Masked geometry helpers: centring, random rotations, Kabsch alignment.

Shapes: ``x`` [..., N, 3] positions, ``mask`` [..., N] bool (True = real atom).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real atoms, [..., 1, 3]."""
    if mask is None:
        return x.mean(dim=-2, keepdim=True)
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp_min(1.0)


def remove_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Centre the real atoms at the origin and zero the padding (EDM's ``remove_mean_with_mask``)."""
    out = x - masked_mean(x, mask)
    return out if mask is None else out * mask.unsqueeze(-1).to(x.dtype)


def random_rotation(n: int = 1, *, dtype=torch.float64, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniformly random proper rotations [n, 3, 3] (QR of a Gaussian matrix, sign-fixed)."""
    a = torch.randn(n, 3, 3, dtype=dtype, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[det < 0, :, 0] *= -1
    return q


def kabsch(src: Tensor, ref: Tensor, mask: Tensor | None = None) -> Tensor:
    """Proper rotation R [..., 3, 3] minimising sum ||src_i R^T - ref_i||^2 over real atoms
    (Kabsch 1976); both point sets are assumed centred. Apply as ``src @ R.transpose(-1, -2)``."""
    if mask is not None:
        src = src * mask.unsqueeze(-1).to(src.dtype)
    h = src.transpose(-1, -2) @ ref  # [...,3,3] covariance
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones(*h.shape[:-2], 3, dtype=h.dtype, device=h.device)
    diag[..., 2] = d
    return vh.transpose(-1, -2) @ torch.diag_embed(diag) @ u.transpose(-1, -2)
