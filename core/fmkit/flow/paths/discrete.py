"""The discrete mixture path for categorical fields (Gat et al. 2024, "Discrete Flow Matching"):
x_t = x1 with probability kappa_t, else x0."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fmkit.flow.paths.base import PathSample, ProbPath
from fmkit.flow.state import masked_mean_per_example


class DiscretePath(ProbPath):
    """Mixture path for class indices (Gat et al. 2024): x_t = x1 w.p. kappa_t = t^exponent, else x0.

    The model outputs logits [..., K] of p(x1 | x_t); the loss is their cross-entropy. With the
    ``mask`` source, x0 is the extra class K (a mask token), so inputs range over K + 1 values.

    ``stochasticity`` (eta >= 0, mask source only) changes sampling, not training: tokens already
    unmasked are masked again at rate eta and masked ones unmask faster to keep the path's marginals
    (detailed-balance noise, Campbell et al. 2024, "Generative Flows on Discrete State-Spaces",
    sec. 3.3), so a class chosen early from a poor prediction can be revised later.
    ``temperature`` (> 0) also acts on sampling only: jumps draw from p(x1 | x_t)^(1/T), renormalised;
    T < 1 trades diversity for fewer draws of unlikely classes (T = 1: the exact path).
    """

    def __init__(self, source: str = "mask", exponent: float = 1.0, stochasticity: float = 0.0,
                 temperature: float = 1.0) -> None:
        if source not in ("mask", "uniform"):
            raise ValueError(f"discrete path source must be 'mask' or 'uniform', got {source!r}")
        if stochasticity < 0 or (stochasticity > 0 and source != "mask"):
            raise ValueError(f"discrete path stochasticity must be >= 0 and needs the mask source, "
                             f"got {stochasticity} with source {source!r}")
        self.source_kind = source
        self.exponent = float(exponent)
        self.stochasticity = float(stochasticity)
        if not temperature > 0:
            raise ValueError(f"discrete path temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

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

        With stochasticity eta, unmasked tokens move to the mask at rate eta and masked ones unmask at
        the extra rate eta kappa / (1 - kappa) (detailed balance of p_t(. | x1); Campbell et al. 2024,
        eq. 6 for kappa = t); no token is masked again on a step that ends at t = 1.
        """
        k, dk = self.kappa(t)
        shape = (-1, *([1] * x_t.dim()))
        last = torch.zeros_like(k, dtype=torch.bool)
        if step is not None and step > 0:
            k_next, _ = self.kappa((t + step).clamp_max(1.0))
            coef = (k_next - k) / ((1.0 - k).clamp_min(1e-12) * step)
            last = k_next >= 1.0
        else:
            coef = dk / (1.0 - k).clamp_min(1e-6)
        logits = pred if pred.dtype == torch.float64 else pred.float()
        p = torch.softmax(logits / self.temperature if self.temperature != 1.0 else logits, dim=-1)
        if self.source_kind == "mask":
            p = F.pad(p, (0, 1))  # the mask token is never a target
        onehot = F.one_hot(x_t.long(), p.shape[-1]).to(p.dtype)
        rate = coef.reshape(shape) * (p - onehot)
        if self.stochasticity > 0:
            eta = self.stochasticity
            masked = onehot[..., -1:]
            unmask = (eta * k / (1.0 - k).clamp_min(1e-6)).reshape(shape) * masked * (p - onehot)
            remask = (eta * (~last).to(p.dtype)).reshape(shape) * (1.0 - masked) * (F.one_hot(
                torch.full_like(x_t.long(), p.shape[-1] - 1), p.shape[-1]).to(p.dtype) - onehot)
            rate = rate + unmask + remask
        return rate
