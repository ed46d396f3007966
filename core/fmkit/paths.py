"""Probability paths from source (t=0) to data (t=1).

Affine paths follow Lipman et al. 2022 ("Flow Matching for Generative Modeling"), in the notation
of Lipman et al. 2024 ("Flow Matching Guide and Code"): x_t = alpha_t x1 + sigma_t x0, with the
conditional velocity dx_t = alpha'_t x1 + sigma'_t x0. The discrete mixture path follows Gat et al.
2024 ("Discrete Flow Matching"): x_t = x1 with probability kappa_t, else x0.

Every path works on one tensor field; :class:`StatePath` composes per-field paths into the path of
a whole state.
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fmkit.errors import ContractError, ModelError
from fmkit.state import State, fields, is_categorical, masked_mean_per_example


@dataclass
class PathSample:
    """A point on the path: time ``t`` [B], position ``x_t`` and target velocity ``dx_t``.

    For a whole state, ``x_t`` and ``dx_t`` are dicts of fields; ``dx_t`` is None for discrete fields.
    """

    t: Tensor
    x_t: Any
    dx_t: Any


SIGMA_FLOOR = 1e-3
"""Smallest sigma_t that an x1-predicting path divides by when it turns x1^ into a velocity."""


def expand_t(t: Tensor, like: Tensor) -> Tensor:
    """Reshape ``t`` [B] to broadcast against ``like`` [B, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype if like.is_floating_point() else t.dtype)


# --------------------------------------------------------------------------------------------
# Schedulers: (alpha_t, sigma_t) and their time derivatives.
# --------------------------------------------------------------------------------------------
class Scheduler(ABC):
    """alpha_t (weight of data x1) and sigma_t (weight of noise x0) with derivatives, t in [0, 1]."""

    @abstractmethod
    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(alpha_t, sigma_t, d alpha_t/dt, d sigma_t/dt)``."""


class CondOTScheduler(Scheduler):
    """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t (Lipman et al. 2022, eq. 20; rectified flow at 0)."""

    def __init__(self, sigma_min: float = 0.0) -> None:
        self.sigma_min = float(sigma_min)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = 1.0 - self.sigma_min
        return t, 1.0 - c * t, torch.ones_like(t), torch.full_like(t, -c)


class VPScheduler(Scheduler):
    """Lipman et al. 2022 eq. 19: alpha_t = a(1-t), sigma_t = sqrt(1 - a(1-t)^2),
    a(s) = exp(-T(s)/2), T(s) = beta_min s + (beta_max - beta_min) s^2 / 2."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        s = 1.0 - t
        T = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * s  # dT/ds
        a = torch.exp(-0.5 * T)
        da = 0.5 * beta * a  # d/dt a(1-t) = -a'(s) = 0.5 beta(s) a(s)
        sig = torch.sqrt((1.0 - a**2).clamp_min(1e-12))
        dsig = -a * da / sig
        return a, sig, da, dsig


class CosineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2) (Nichol & Dhariwal 2021 style, variance preserving)."""

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = 0.5 * math.pi
        return torch.sin(h * t), torch.cos(h * t), h * torch.cos(h * t), -h * torch.sin(h * t)


class PolynomialScheduler(Scheduler):
    """alpha_t = t^n, sigma_t = 1 - t^n (Lipman et al. 2024, polynomial convex scheduler)."""

    def __init__(self, exponent: float = 2.0) -> None:
        self.n = float(exponent)

    def __call__(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a = t**self.n
        da = self.n * t ** (self.n - 1.0)
        return a, 1.0 - a, da, -da


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
# Per-field paths
# --------------------------------------------------------------------------------------------
class ProbPath(ABC):
    """A conditional probability path for one tensor field."""

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Sample x_t ~ p_t(.|x0, x1) and its conditional velocity; ``t`` is [B]."""

    @abstractmethod
    def loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        """Per-example training loss [B] for the model output ``pred``."""

    def batch_loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        """The batch mean of :meth:`loss` (a scalar), what the trainer minimises; override it only
        with a faster way to the same number."""
        return self.loss(pred, ps, x1, mask).mean()

    @abstractmethod
    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """What a solver integrates, from the model output: a velocity, or for a categorical field a
        CTMC rate over classes [..., K]. A path whose ``velocity`` also takes ``step`` gets a fixed-step
        solver's step size h, to return the rate averaged over [t, t + h] (see DiscretePath)."""


def takes_step(fn: Callable) -> bool:
    """Whether ``fn`` accepts a ``step`` keyword (a path's or a sampler's velocity that can average a
    rate over a solver's step); a wrapper may say so itself in a ``takes_step`` attribute."""
    declared = getattr(fn, "takes_step", None)
    if isinstance(declared, bool):
        return declared
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "step" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@functools.cache
def _path_takes_step(cls: type) -> bool:  # once per path class, not per solver step
    return takes_step(cls.velocity)


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


class DiscretePath(ProbPath):
    """Mixture path for class indices (Gat et al. 2024): x_t = x1 w.p. kappa_t = t^exponent, else x0.

    The model outputs logits [..., K] of p(x1 | x_t); the loss is their cross-entropy. With the
    ``mask`` source, x0 is the extra class K (a mask token), so inputs range over K + 1 values.
    """

    def __init__(self, source: str = "mask", exponent: float = 1.0) -> None:
        if source not in ("mask", "uniform"):
            raise ValueError(f"discrete path source must be 'mask' or 'uniform', got {source!r}")
        self.source_kind = source
        self.exponent = float(exponent)

    def kappa(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t**self.exponent, self.exponent * t ** (self.exponent - 1.0)

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        k, _ = self.kappa(t)
        u = torch.rand(x1.shape, device=x1.device)
        keep = u < k.reshape(-1, *([1] * (x1.dim() - 1)))
        return PathSample(t, torch.where(keep, x1, x0), None)

    def loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        ce = F.cross_entropy(pred.float().reshape(-1, pred.shape[-1]), x1.reshape(-1), reduction="none")
        return masked_mean_per_example(ce.reshape(x1.shape), mask)

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor, step: float | None = None) -> Tensor:
        """CTMC rate u_t(y | x_t) = kappa'/(1-kappa) (p(x1 = y | x_t) - delta_{x_t}(y)), over K (+1) classes.

        With ``step`` = h > 0, the rate averaged over [t, t + h] with p(x1 | x_t) held: coefficient
        (kappa_{t+h} - kappa_t) / ((1 - kappa_t) h), so that an Euler jump delta + h u is the path's
        exact transition (1 - lambda) delta + lambda p, lambda = (kappa_{t+h} - kappa_t) / (1 - kappa_t)
        (Gat et al. 2024). For kappa = t it equals the instantaneous rate; for t^a it stays finite at
        t = 0 when a < 1 (kappa' is infinite there) and unmasks every token on the last step when a > 1.
        """
        k, dk = self.kappa(t)
        if step is not None and step > 0:
            k_next, _ = self.kappa((t + step).clamp_max(1.0))
            coef = (k_next - k) / ((1.0 - k).clamp_min(1e-12) * step)
        else:
            coef = dk / (1.0 - k).clamp_min(1e-6)
        coef = coef.reshape(-1, *([1] * x_t.dim()))
        p = torch.softmax(pred if pred.dtype == torch.float64 else pred.float(), dim=-1)
        if self.source_kind == "mask":
            p = F.pad(p, (0, 1))  # the mask token is never a target
        onehot = F.one_hot(x_t.long(), p.shape[-1]).to(p.dtype)
        return coef * (p - onehot)


# --------------------------------------------------------------------------------------------
# A whole state
# --------------------------------------------------------------------------------------------
class StatePath:
    """Per-field paths composed into the path of a state (``mask``/``cond`` pass through)."""

    def __init__(self, default: ProbPath, per_field: Mapping[str, ProbPath] | None = None) -> None:
        self.default = default
        self.per_field = dict(per_field or {})

    def for_field(self, name: str, value: Tensor | None = None) -> ProbPath:
        if name in self.per_field:
            return self.per_field[name]
        if value is not None and is_categorical(value) and not isinstance(self.default, DiscretePath):
            raise ValueError(
                f"field {name!r} holds class indices but its path is {type(self.default).__name__}; "
                f"give it a discrete path (path.fields.{name}.name: discrete)"
            )
        return self.default

    def sample(self, x0: State, x1: State, t: Tensor) -> PathSample:
        xt: State = {}
        dxt: dict[str, Tensor | None] = {}
        for k, v1 in fields(x1).items():
            ps = self.for_field(k, v1).sample(x0[k], v1, t)
            xt[k], dxt[k] = ps.x_t, ps.dx_t
        for k in ("mask", "cond"):
            if k in x1:
                xt[k] = x1[k]
        return PathSample(t, xt, dxt)

    def losses(self, pred: State, ps: PathSample, x1: State, reduce: bool = False) -> dict[str, Tensor]:
        """Per-field losses: per example ``{field: [B]}``, or with ``reduce`` their batch means (scalars)."""
        check_output(pred, x1)
        mask = x1.get("mask")
        out = {}
        for k, v1 in fields(x1).items():
            field_ps = PathSample(ps.t, ps.x_t[k], ps.dx_t[k])
            path = self.for_field(k, v1)
            out[k] = (path.batch_loss if reduce else path.loss)(pred[k], field_ps, v1, mask)
        return out

    def velocity(self, pred: State, x_t: State, t: Tensor, step: float | None = None) -> State:
        """Per-field velocities; ``step`` (a solver's step size) reaches the paths whose velocity
        takes it (their rate averaged over the step; see :meth:`DiscretePath.velocity`)."""
        check_output(pred, x_t)
        out = {}
        for k, v in fields(x_t).items():
            path = self.for_field(k, v)
            out[k] = path.velocity(pred[k], v, t, step=step) if step is not None and _path_takes_step(type(path)) \
                else path.velocity(pred[k], v, t)
        return out


def check_output(pred: Any, like: State, what: str = "the model") -> None:
    """Fail with a :class:`ModelError` unless ``pred`` has every field of ``like``, each of its shape
    (a categorical field, class indices [...], takes logits or rates [..., K]). Shapes only: no sync."""
    if not isinstance(pred, Mapping):
        raise ModelError(
            f"{what} returned a {type(pred).__name__}, not a dict of fields {sorted(fields(like))}",
            where="model output",
            fix="return {field: tensor}; a network on bare tensors can be wrapped in fmkit.TensorModel(net)")
    for k, v in fields(like).items():
        if k not in pred:
            raise ModelError(f"{what} returned no output for field {k!r} (it returned {sorted(pred)})",
                             where=f"model output {k!r}", fix=f"return an entry {k!r} for every field of the data")
        out = pred[k]
        shape = tuple(getattr(out, "shape", ()))
        ok = shape[:-1] == tuple(v.shape) if is_categorical(v) else shape == tuple(v.shape)
        if not isinstance(out, Tensor) or not ok:
            want = (f"{tuple(v.shape)} + (num_classes,), logits per class index" if is_categorical(v)
                    else f"{tuple(v.shape)}, the shape of the field")
            got = shape if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(
                f"{what}'s output for field {k!r} has shape {got}; it must be {want}", where=f"model output {k!r}",
                fix="check the model's output layer: one value per element of the field (batch dimension first)")


def make_affine(kind: str, **opts: float) -> AffinePath:
    """Affine path by scheduler name: condot, vp, cosine, polynomial."""
    schedulers = {"condot": CondOTScheduler, "vp": VPScheduler, "cosine": CosineScheduler,
                  "polynomial": PolynomialScheduler}
    return AffinePath(schedulers[kind](**opts))
