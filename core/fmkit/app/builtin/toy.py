"""The built-in 2-D toy modality: distributions usable both as datasets and as sources.

Each distribution samples ``[n, 2]`` points with class labels (the mode or component a point came
from), so the toy modality also exercises conditioning and classifier-free guidance. Those with a
closed-form density (``gaussian``, ``eight_gaussians``) give exact log-likelihood references.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from fmkit.flow.data import DataInfo, Dataset, FieldInfo, Indices
from fmkit.flow.sources import Source
from fmkit.flow.state import State

Sampler = Callable[[int, torch.Generator | None], tuple[Tensor, Tensor]]  # None: the global RNG


def moons(n: int, g: torch.Generator | None, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    """Two interleaved half circles, scaled by 3 and shifted by -1 (as TorchCFM's examples)."""
    y = torch.randint(0, 2, (n,), generator=g)
    th = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(th), torch.sin(th)], 1)
    x = torch.where(y[:, None] == 1, torch.stack([1 - torch.cos(th), 0.5 - torch.sin(th)], 1), x)
    x = x + noise * torch.randn(n, 2, generator=g)
    return x * 3.0 - 1.0, y


def eight_gaussians(n: int, g: torch.Generator | None, radius: float = 5.0, std: float = 0.5) -> tuple[Tensor, Tensor]:
    """Equal mixture of 8 isotropic Gaussians on a circle."""
    y = torch.randint(0, 8, (n,), generator=g)
    ang = y.float() * (2 * math.pi / 8)
    c = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return c + std * torch.randn(n, 2, generator=g), y


def eight_gaussians_log_prob(x: Tensor, radius: float = 5.0, std: float = 0.5) -> Tensor:
    ang = torch.arange(8, dtype=x.dtype, device=x.device) * (2 * math.pi / 8)
    c = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    comp = -0.5 * d2 / std**2 - 2 * math.log(std) - math.log(2 * math.pi)
    return torch.logsumexp(comp, 1) - math.log(8)


def checkerboard(n: int, g: torch.Generator | None, size: float = 4.0) -> tuple[Tensor, Tensor]:
    """Uniform on the dark squares of a 4x4 board on [-size, size]^2 (FFJORD's toy)."""
    u = torch.rand(n, 2, generator=g) * 2 - 1  # [-1, 1)^2
    cell = torch.floor((u + 1) * 2).long()  # 0..3
    flip = ((cell[:, 0] + cell[:, 1]) % 2 == 1)
    # move the point horizontally by one cell when it falls on a light square
    shift = torch.where(cell[:, 0] % 2 == 0, 0.5, -0.5)
    u[:, 0] = torch.where(flip, u[:, 0] + shift, u[:, 0])
    cell = torch.floor((u + 1) * 2).long().clamp(0, 3)
    return u * size, cell[:, 0] * 4 + cell[:, 1]


def circles(n: int, g: torch.Generator | None, noise: float = 0.05, factor: float = 0.5, scale: float = 3.0
            ) -> tuple[Tensor, Tensor]:
    """Two concentric circles (outer radius ``scale``, inner ``factor * scale``).

    Args:
        n: number of points.
        g: the random generator; None: the global CPU RNG.
        noise: standard deviation of the Gaussian noise added to each point, before scaling.
        factor: inner radius over outer radius, in (0, 1).
        scale: the outer radius.

    Returns:
        Points [n, 2] and their circle [n] (0 outer, 1 inner).
    """
    y = torch.randint(0, 2, (n,), generator=g)
    th = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.where(y == 1, factor, 1.0)
    x = torch.stack([r * torch.cos(th), r * torch.sin(th)], 1) + noise * torch.randn(n, 2, generator=g)
    return x * scale, y


def gaussian(n: int, g: torch.Generator | None, mean: list[float] | None = None, cov: list[list[float]] | None = None
             ) -> tuple[Tensor, Tensor]:
    """N(mean, cov) in 2-D (or the dimension of ``mean``)."""
    m, L = _gaussian_params(mean, cov)
    z = torch.randn(n, m.shape[0], generator=g, dtype=torch.float64)
    return (m + z @ L.T).float(), torch.zeros(n, dtype=torch.long)


def _gaussian_params(mean: list[float] | None, cov: list[list[float]] | None) -> tuple[Tensor, Tensor]:
    m = torch.tensor(mean if mean is not None else [0.0, 0.0], dtype=torch.float64)
    c = torch.tensor(cov, dtype=torch.float64) if cov is not None else torch.eye(m.shape[0], dtype=torch.float64)
    return m, torch.linalg.cholesky(c)


DISTRIBUTIONS: dict[str, tuple[Callable[..., tuple[Tensor, Tensor]], int]] = {
    "moons": (moons, 2),
    "eight_gaussians": (eight_gaussians, 8),
    "checkerboard": (checkerboard, 16),
    "circles": (circles, 2),
    "gaussian": (gaussian, 1),
}


class ToyDataset(Dataset):
    """``n`` points of a 2-D distribution, generated once from ``seed``; field ``x`` [2], ``cond`` label."""

    def __init__(self, kind: str, n: int = 100_000, seed: int = 0, conditional: bool = False, **params: object):
        fn, ncls = DISTRIBUTIONS[kind]
        g = torch.Generator().manual_seed(seed)
        self.kind, self.params = kind, params
        self.x, self.y = fn(n, g, **params)
        self.conditional = conditional
        dim = self.x.shape[1]
        self.info = DataInfo({"x": FieldInfo((dim,))}, num_cond_classes=ncls if conditional else None,
                             meta={"distribution": kind, "likelihood": "continuous"})

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> State:
        item = {"x": self.x[i]}
        if self.conditional:
            item["cond"] = self.y[i]
        return item

    def collate(self, items: list[State]) -> State:  # type: ignore[override]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def get_batch(self, idx: Indices) -> State:
        """Fast path: one tensor gather instead of per-item calls."""
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))  # no copy for an int64 array
        out = {"x": self.x[i]}
        if self.conditional:
            out["cond"] = self.y[i]
        return out


class ToySource(Source):
    """A toy distribution used as p_0 (e.g. 8 gaussians -> moons)."""

    def __init__(self, kind: str, **params: object) -> None:
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown toy distribution {kind!r}")
        self.kind, self.params = kind, params

    def sample(self, like: Tensor, mask: Tensor | None = None) -> Tensor:
        fn, _ = DISTRIBUTIONS[self.kind]
        x, _ = fn(like.shape[0], None, **self.params)  # the global CPU RNG: seeded per step, resumable
        if x.shape[1:] != like.shape[1:]:
            from fmkit.errors import RecipeError

            raise RecipeError(f"toy source {self.kind!r} gives shape {tuple(x.shape[1:])}, data has "
                              f"{tuple(like.shape[1:])}", where="source",
                              fix="use a source of the data's shape, e.g. `source: {name: gaussian}`")
        return x.to(like.device, like.dtype if like.is_floating_point() else torch.float32)

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.kind == "eight_gaussians":
            return eight_gaussians_log_prob(x, **self.params)  # type: ignore[arg-type]
        if self.kind == "gaussian":
            m, L = _gaussian_params(self.params.get("mean"), self.params.get("cov"))  # type: ignore[arg-type]
            dist = torch.distributions.MultivariateNormal(m.to(x), scale_tril=L.to(x))
            return dist.log_prob(x)
        return super().log_prob(x, mask)
