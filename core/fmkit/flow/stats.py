"""Statistics of sample sets that metrics share: the Fréchet distance between fitted Gaussians."""

from __future__ import annotations

import torch
from torch import Tensor


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` [N, D] and ``b`` [M, D]
    (Heusel et al. 2017, FID's formula): ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

    The trace of the square root is taken as that of the symmetric ``(S_a^(1/2) S_b S_a^(1/2))^(1/2)``
    (the same eigenvalues) in float64: exact for the singular covariances that features which are
    always zero give, where a general matrix square root warns and may lose accuracy."""
    a64, b64 = a.detach().double().reshape(len(a), -1), b.detach().double().reshape(len(b), -1)
    s1, s2 = torch.atleast_2d(torch.cov(a64.T)), torch.atleast_2d(torch.cov(b64.T))
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    m = root1 @ s2 @ root1
    trace_root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    mean_term = (a64.mean(0) - b64.mean(0)).pow(2).sum()
    return float(mean_term + s1.trace() + s2.trace() - 2 * trace_root)
