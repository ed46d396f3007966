"""Affine paths x_t = alpha_t x1 + sigma_t x0 (Lipman et al. 2022, "Flow Matching for Generative
Modeling"), with the conditional velocity dx_t = alpha'_t x1 + sigma'_t x0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fmkit.flow.paths.base import SIGMA_FLOOR, PathSample, ProbPath, expand_t
from fmkit.flow.paths.schedulers import (
    CondOTScheduler,
    Scheduler,
    check_scheduler,
)
from fmkit.flow.state import masked_mean_per_example


class AffinePath(ProbPath):
    """x_t = alpha_t x1 + sigma_t x0, trained by masked MSE on what the model predicts.

    ``prediction="velocity"``: the model regresses the conditional velocity dx_t (the CFM loss).
    ``prediction="x1"``: it regresses the data endpoint x1, and the solver integrates the velocity
    that x1 estimate implies (Lipman et al. 2024, sec. 4.8.1; the endpoint parameterisation that
    FlowMol and SemlaFlow train molecules with).
    """

    PREDICTIONS = ("velocity", "x1")

    def __init__(self, scheduler: Scheduler, prediction: str = "velocity") -> None:
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"affine path prediction must be one of {self.PREDICTIONS}, got {prediction!r}")
        check_scheduler(scheduler)
        self.scheduler = scheduler
        self.prediction = prediction

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return tuple(expand_t(c, like) for c in self.scheduler(t))  # type: ignore[return-value]

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        if type(self.scheduler) is CondOTScheduler and x0.dtype == x1.dtype:  # hot path, two ops:
            # dx_t = x1 - c x0, x_t = x0 + t dx_t
            c, tt = 1.0 - self.scheduler.sigma_min, expand_t(t, x1)
            if c == 1.0:  # lerp is exact at both ends: x_0 = x0, x_1 = x1
                return PathSample(t, torch.lerp(x0, x1, tt), x1 - x0)
            dx = torch.sub(x1, x0, alpha=c)
            return PathSample(t, torch.addcmul(x0, tt, dx), dx)
        a, s, da, ds = self.coefficients(t, x1)
        return PathSample(t, a * x1 + s * x0, da * x1 + ds * x0)

    def target(self, ps: PathSample, x1: Tensor) -> Tensor:
        """What the model regresses: dx_t, or x1 itself."""
        return ps.dx_t if self.prediction == "velocity" else x1

    def loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        return masked_mean_per_example(F.mse_loss(pred.float(), self.target(ps, x1).float(), reduction="none"), mask)

    def batch_loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:  # every example has the same size: the mean of means is the plain mean
            return F.mse_loss(pred.float(), self.target(ps, x1).float())
        return super().batch_loss(pred, ps, x1, mask)

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "velocity":
            return pred
        # u_t = alpha'_t x1^ + sigma'_t eps^ with eps^ = (x_t - alpha_t x1^) / sigma_t; sigma_t is
        # floored because fixed-step and adaptive solvers evaluate at t = 1, where sigma_1 = 0 for
        # CondOT without sigma_min (there x_t = x1^ and the noise term vanishes anyway).
        a, s, da, ds = self.coefficients(t, x_t)
        eps = (x_t - a * pred.to(x_t.dtype)) / s.clamp_min(SIGMA_FLOOR)
        return da * pred.to(x_t.dtype) + ds * eps

    # Conversions between parameterisations (Lipman et al. 2024, sec. 4.8).
    def x1_to_velocity(self, x1_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self.coefficients(t, x_t)
        return (ds / s) * x_t + (da - ds * a / s) * x1_pred

    def velocity_to_x1(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self.coefficients(t, x_t)
        return (s * v - ds * x_t) / (s * da - ds * a)

    def epsilon_to_velocity(self, eps_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self.coefficients(t, x_t)
        return (da / a) * x_t + (ds - da * s / a) * eps_pred

    def velocity_to_epsilon(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, da, ds = self.coefficients(t, x_t)
        return (a * v - da * x_t) / (a * ds - da * s)

    def x1_to_epsilon(self, x1_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self.coefficients(t, x_t)
        return (x_t - a * x1_pred) / s

    def epsilon_to_x1(self, eps_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self.coefficients(t, x_t)
        return (x_t - s * eps_pred) / a
