"""The conditional flow matching loss as one object: :class:`CFMObjective`.

Lipman et al. 2022, eq. 23, with x0 and x1 paired by a coupling pi (Tong et al. 2023):
L = E_{t, (x0, x1) ~ pi} || v_theta(x_t, t, c) - u_t(x_t | x0, x1) ||^2.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from fmkit.flow.couplings import Coupling, IndependentCoupling, draw_and_pair
from fmkit.flow.guidance import drop_condition
from fmkit.flow.objectives.base import ModelFn, TimeSampler, uniform_time
from fmkit.flow.paths import ProbPath, StatePath
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
    """

    def __init__(self, path: ProbPath | StatePath, source: Source | StateSource | None = None,
                 coupling: Coupling | None = None, *, time: TimeSampler | None = None, cond_dropout: float = 0.0,
                 null_class: int = 0, weights: Mapping[str, float] | None = None) -> None:
        self.path = path if isinstance(path, StatePath) else StatePath(path)
        source = source or GaussianSource()
        self.source = source if isinstance(source, StateSource) else StateSource(source)
        self.coupling = coupling or IndependentCoupling()
        self.time = time or uniform_time
        self.cond_dropout, self.null_class = float(cond_dropout), int(null_class)
        self.weights = {k: float(w) for k, w in (weights or {}).items() if w != 1.0}  # 1.0: no multiply

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
        pred = model(x_t, t, cond)                                     # v_theta(x_t, t, c)
        per_field = self.path.losses(pred, ps, x1, reduce=True)       # masked MSE to u_t (CE: categorical)
        total: Tensor | None = None
        for k, loss in per_field.items():  # sum_f w_f * loss_f, no multiply for a weight of 1
            weighted = self.weights[k] * loss if k in self.weights else loss
            total = weighted if total is None else total + weighted
        return total, per_field  # type: ignore[return-value]
