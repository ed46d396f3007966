"""Self-conditioning: the model reads its own previous estimate of the data x1 as an extra input.

Chen et al. 2022 ("Analog Bits", sec. 3.2), as the strongest molecule flows use it (SemlaFlow, Irwin et al.
2024; FlowMol3, Dunn & Koes 2025):

- training (``objective: {name: cfm, self_condition: p}``): with probability p a batch first runs the model
  without the input (no gradient), then again with that pass's x1 estimate; otherwise once without it;
- sampling: each velocity call hands the model the estimate of the call before it (none at the first).

The contract: a self-conditioned model has ``self_conditioned = True`` and a forward
``forward(x_t, t, cond=None, *, self_cond=None)``. ``self_cond`` is a state of the data fields
(:func:`x1_estimate`): a continuous field's x1 estimate [B, ...], a categorical field's p(x1 | x_t) over
its K classes [B, ..., K]. ``self_cond=None`` means "no estimate yet": the model reads zeros *through the
same layers*, so every parameter has a gradient at every step (DDP needs no search for unused ones).
A self-conditioned field depends on the sampler's history, so it has no exact log-likelihood
(:func:`refuse_likelihood`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmkit.errors import FmkitError, ModelError
from fmkit.flow.paths import AffinePath, DiscretePath, StatePath
from fmkit.flow.state import State, is_categorical

#: the attributes through which wrappers hold the model (guidance, DDP, torch.compile)
_INNER = ("model", "module", "_orig_mod")


def self_conditioned(model: object) -> bool:
    """Whether ``model`` (or the model a guidance / DDP / compile wrapper holds) is self-conditioned."""
    seen = 0
    while model is not None and seen < 8:
        if getattr(model, "self_conditioned", False) is True:
            return True
        model = next((getattr(model, a) for a in _INNER if isinstance(getattr(model, a, None), nn.Module)), None)
        seen += 1
    return False


def require_self_cond(model: nn.Module, who: str) -> None:
    """Refuse (a :class:`ModelError`) a model that does not read ``self_cond``, naming ``who`` needs it."""
    if not self_conditioned(model):
        raise ModelError(f"{who} trains the model with its own previous x1 estimate as an input "
                         f"(model(x_t, t, cond, self_cond=...)), and {type(model).__name__} is not self-conditioned "
                         "(no attribute self_conditioned = True)", where="model",
                         fix="build the model with self-conditioning (egnn_graph: `self_condition: true`), or "
                             "set objective.self_condition: 0")


def x1_estimate(path: StatePath, pred: State, x_t: State, t: Tensor) -> State:
    """The model's estimate of the data from its prediction ``pred`` at ``x_t``, ``t`` [B], detached:
    a continuous field's x1 [B, ...] (its path's prediction converted when it predicts the velocity), a
    categorical field's softmax over its K classes [B, ..., K] (float32)."""
    out: State = {}
    with torch.no_grad():
        for k, p in pred.items():
            if k not in x_t:
                continue
            field_path = path.for_field(k, x_t[k])
            if is_categorical(x_t[k]) or isinstance(field_path, DiscretePath):
                out[k] = p.float().softmax(-1)
            elif isinstance(field_path, AffinePath):
                out[k] = p.detach() if field_path.prediction == "x1" else \
                    field_path.velocity_to_x1(p.detach(), x_t[k], t).to(p.dtype)
            else:
                raise FmkitError(f"self-conditioning needs the x1 estimate of field {k!r}, and its path "
                                 f"{type(field_path).__name__} gives none", where="objective.self_condition",
                                 fix="use an affine path (condot, ...) or the discrete path for that field")
    return out


def refuse_likelihood(velocity: object) -> None:
    """Refuse an exact log-likelihood of a self-conditioned field (a model, or the ``velocity`` that
    :func:`fmkit.flow.sampling.model_velocity` made of one): it depends on the sampler's history, not on
    (x, t) alone, so the change-of-variables ODE has no meaning for it."""
    if getattr(velocity, "self_conditioned", False) is True or self_conditioned(velocity):
        raise FmkitError("a self-conditioned model's velocity depends on its previous estimate, not on (x, t) "
                         "alone, so it defines no ODE whose log-likelihood could be computed",
                         where="model (self-conditioned)",
                         fix="compute likelihoods of a model trained with objective.self_condition: 0")
