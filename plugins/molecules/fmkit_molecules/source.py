"""Zero-centre-of-mass Gaussian over each molecule's real atoms (EDM, Hoogeboom et al. 2022, Sec. 3.2).

x ~ N(0, std^2 I) projected onto the subspace sum_i x_i = 0 (real atoms only); its density lives on
that (n-1)*3-dimensional subspace: log p(x) = -||x||^2 / (2 std^2) - (n-1)*3 * (log std + log(2 pi) / 2).
"""

from __future__ import annotations

import math

import torch
from fmkit.plugin import ContractError
from fmkit.plugin import Source
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fmkit_molecules.geometry import remove_mean


class ComFreeGaussianOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    std: float = Field(1.0, gt=0.0, description="standard deviation per coordinate (Angstrom)")


class ComFreeGaussian(Source):
    """Isotropic Gaussian positions [B, N, 3] with zero mean over the real atoms of each molecule."""

    def __init__(self, std: float = 1.0) -> None:
        self.std = float(std)

    def sample(self, like: Tensor, mask: Tensor | None = None) -> Tensor:
        if like.dim() != 3 or like.shape[-1] != 3:  # e.g. one-hot atom types [B,N,5]: centring them means nothing
            raise ContractError(
                f"com_free_gaussian draws 3-D positions [B, N, 3]; it was asked for a field of shape "
                f"{tuple(like.shape)}", where="source",
                fix="give the other fields a source of their own, e.g. for one-hot atom types "
                    "`source: {name: com_free_gaussian, fields: {atoms: {name: gaussian}}}`")
        dtype = like.dtype if like.is_floating_point() else torch.float32
        x = torch.randn(like.shape, dtype=dtype, device=like.device) * self.std
        return remove_mean(x, mask)

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Density on the CoM-free subspace, [B]; ``x`` must already be centred (it is not re-centred)."""
        b, n = x.shape[0], x.shape[1]
        if mask is None:
            counts = torch.full((b,), n, dtype=x.dtype, device=x.device)
            sq = x.reshape(b, -1).pow(2).sum(1)
        else:
            m = mask.to(x.dtype)
            counts = m.sum(1)
            sq = (x.pow(2).sum(-1) * m).sum(1)
        dof = (counts - 1.0) * x.shape[-1]
        return -0.5 * sq / self.std**2 - dof * (math.log(self.std) + 0.5 * math.log(2 * math.pi))
