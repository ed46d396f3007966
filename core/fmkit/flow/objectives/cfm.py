"""The conditional flow matching loss as one object: :class:`CFMObjective`.

Lipman et al. 2022, eq. 23, with x0 and x1 paired by a coupling pi (Tong et al. 2023):
L = E_{t, (x0, x1) ~ pi} || v_theta(x_t, t, c) - u_t(x_t | x0, x1) ||^2; optionally self-conditioned
(the model also reads its own x1 estimate: :mod:`fmkit.flow.self_conditioning`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fmkit.errors import ModelError
from fmkit.flow.couplings import Coupling, IndependentCoupling, draw_and_pair
from fmkit.flow.guidance import drop_condition
from fmkit.flow.objectives.base import ModelFn, TimeSampler, uniform_time
from fmkit.flow.paths import ProbPath, StatePath
from fmkit.flow.self_conditioning import require_self_cond, self_conditioned, x1_estimate
from fmkit.flow.sources import GaussianSource, Source, StateSource
from fmkit.flow.state import State, fields


class CFMObjective:
    """CFM loss of a batch: x0 ~ p_0, (x0, x1) ~ pi, t ~ p(t), x_t and u_t on the path, then
    sum_f w_f * masked MSE(v_theta(x_t, t, c)_f, u_t,f) (cross-entropy for a categorical field).

    Built once per training; ``objective(model, x1, x0=None) -> (total, per_field)`` per micro-step
    (the :class:`~fmkit.flow.objectives.Objective` protocol).

    Args:
        path: the probability path (one per-field path, used for every field, or a composed StatePath).
        source: p_0 (default N(0, I)); a per-field source or a composed StateSource.
        coupling: how x0 and x1 are paired (default independent).
        time: ``time(B, device) -> t`` [B] in [0, 1] (default uniform).
        cond_dropout: probability that a class label becomes ``null_class`` (classifier-free guidance
            training, Ho & Salimans 2022).
        null_class: the label meaning "no condition" (the data's number of classes).
        weights: per-field loss weights w_f (1 for fields not named).
        self_condition: probability that a batch is self-conditioned: a first model call without gradient
            gives the x1 estimate that the second reads as ``self_cond`` (Chen et al. 2022); 0: never,
            and the model is called without the keyword.
    """

    def __init__(self, path: ProbPath | StatePath, source: Source | StateSource | None = None,
                 coupling: Coupling | None = None, *, time: TimeSampler | None = None, cond_dropout: float = 0.0,
                 null_class: int = 0, weights: Mapping[str, float] | None = None,
                 self_condition: float = 0.0) -> None:
        if not 0.0 <= self_condition <= 1.0:
            raise ValueError(f"self_condition is a probability in [0, 1], got {self_condition}")
        self.self_condition = float(self_condition)
        self.path = path if isinstance(path, StatePath) else StatePath(path)
        source = source or GaussianSource()
        self.source = source if isinstance(source, StateSource) else StateSource(source)
        self.coupling = coupling or IndependentCoupling()
        self.time = time or uniform_time
        self.cond_dropout, self.null_class = float(cond_dropout), int(null_class)
        self.weights = {k: float(w) for k, w in (weights or {}).items() if w != 1.0}  # 1.0: no multiply

    def training_module(self, model: nn.Module) -> nn.Module:
        """``model`` itself, once it agrees with ``self_condition``: a self-conditioned model needs a probability
        above 0 (else sampling would feed it estimates it never learnt to read), and a probability above 0
        needs a self-conditioned model."""
        if self.self_condition > 0.0:
            require_self_cond(model, f"objective.self_condition {self.self_condition:g}")
        elif self_conditioned(model):
            raise ModelError(f"{type(model).__name__} is self-conditioned (it reads its previous x1 estimate, which "
                             "sampling feeds it), and objective.self_condition is 0, so training never shows it one",
                             where="objective.self_condition",
                             fix="set objective.self_condition (SemlaFlow's 0.5), or build the model without "
                                 "self-conditioning")
        return model

    def __call__(self, model: ModelFn, x1: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total (a scalar) and each field's batch-mean loss, for data ``x1`` ([B, ...]
        per field); ``x0``: its source sample when drawn and paired already, else drawn here."""
        if x0 is None:
            x0, x1 = draw_and_pair(self.source, self.coupling, x1)    # x0 ~ p_0, (x0, x1) ~ pi
        first = next(iter(fields(x1).values()))
        t = self.time(first.shape[0], first.device)                    # t ~ p(t)
        ps = self.path.sample(x0, x1, t)                               # x_t ~ p_t(. | x0, x1), u_t = dx_t
        cond = drop_condition(x1.get("cond"), self.cond_dropout, self.null_class)
        x_t = {k: v for k, v in ps.x_t.items() if k != "cond"}        # masks ride along; cond goes apart
        if self.self_condition > 0.0:                                  # the model reads x1^ (or zeros: None)
            sc = None
            if float(torch.rand(())) < self.self_condition:
                with torch.no_grad():
                    sc = x1_estimate(self.path, model(x_t, t, cond, self_cond=None), x_t, t)
            pred = model(x_t, t, cond, self_cond=sc)                   # v_theta(x_t, t, c, x1^)
        else:
            pred = model(x_t, t, cond)                                 # v_theta(x_t, t, c)
        per_field = self.path.losses(pred, ps, x1, reduce=True)       # masked MSE to u_t (CE: categorical)
        total: Tensor | None = None
        for k, loss in per_field.items():  # sum_f w_f * loss_f, no multiply for a weight of 1
            weighted = self.weights[k] * loss if k in self.weights else loss
            total = weighted if total is None else total + weighted
        return total, per_field  # type: ignore[return-value]
