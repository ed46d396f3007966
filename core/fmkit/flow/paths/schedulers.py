"""Schedulers of affine paths: alpha_t (weight of the data x1) and sigma_t (weight of the noise x0)
with their time derivatives, as in Lipman et al. 2024 ("Flow Matching Guide and Code")."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from fmkit.errors import ContractError


class SchedulerOutput(NamedTuple):
    """``(alpha_t, sigma_t, d_alpha_t, d_sigma_t)``, each shaped like t [B]; a tuple, so it unpacks as four."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler(ABC):
    """alpha_t (weight of data x1) and sigma_t (weight of noise x0) with derivatives, t in [0, 1]."""

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput:
        """Return ``SchedulerOutput(alpha_t, sigma_t, d alpha_t/dt, d sigma_t/dt)`` (a plain 4-tuple works too)."""


class CondOTScheduler(Scheduler):
    """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t (Lipman et al. 2022, eq. 20; rectified flow at 0)."""

    def __init__(self, sigma_min: float = 0.0) -> None:
        self.sigma_min = float(sigma_min)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        c = 1.0 - self.sigma_min
        return SchedulerOutput(t, 1.0 - c * t, torch.ones_like(t), torch.full_like(t, -c))


class VPScheduler(Scheduler):
    """Lipman et al. 2022 eq. 19: alpha_t = a(1-t), sigma_t = sqrt(1 - a(1-t)^2),
    a(s) = exp(-T(s)/2), T(s) = beta_min s + (beta_max - beta_min) s^2 / 2."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        s = 1.0 - t
        T = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * s  # dT/ds
        a = torch.exp(-0.5 * T)
        da = 0.5 * beta * a  # d/dt a(1-t) = -a'(s) = 0.5 beta(s) a(s)
        sig = torch.sqrt((1.0 - a**2).clamp_min(1e-12))
        dsig = -a * da / sig
        return SchedulerOutput(a, sig, da, dsig)


class CosineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2) (Nichol & Dhariwal 2021 style, variance preserving)."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        h = 0.5 * math.pi
        return SchedulerOutput(torch.sin(h * t), torch.cos(h * t), h * torch.cos(h * t), -h * torch.sin(h * t))


class PolynomialScheduler(Scheduler):
    """alpha_t = t^n, sigma_t = 1 - t^n (Lipman et al. 2024, polynomial convex scheduler)."""

    def __init__(self, exponent: float = 2.0) -> None:
        self.n = float(exponent)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        a = t**self.n
        da = self.n * t ** (self.n - 1.0)
        return SchedulerOutput(a, 1.0 - a, da, -da)


def check_scheduler(scheduler: Scheduler) -> None:
    """A scheduler must map t [B] to four tensors (alpha_t, sigma_t, alpha'_t, sigma'_t) of t's shape;
    probed once at two times, so a wrong one fails here, not as a bare unpacking error in training."""
    t = torch.tensor([0.25, 0.75])
    out = scheduler(t)
    if not (isinstance(out, (tuple, list)) and len(out) == 4
            and all(isinstance(c, Tensor) and c.shape == t.shape for c in out)):
        got = (f"{len(out)} values" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}")
        raise ContractError(f"scheduler {type(scheduler).__name__} returned {got} for t of shape (2,)",
                            where=f"scheduler {type(scheduler).__name__}",
                            fix="return (alpha_t, sigma_t, d alpha_t/dt, d sigma_t/dt), each a tensor shaped like t")


# --------------------------------------------------------------------------------------------
