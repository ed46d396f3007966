"""What every training objective is: built once from the flow's parts, called per micro-step.

An objective (the CFM loss; MeanFlow's average-velocity loss beside it) owns the recipe of one
loss: it draws what it needs (source sample, pairing, times), calls the model and returns the total
to minimise with each field's part. It knows nothing of devices, precision or memory layout: the
engine hands it the model as a callable that applies those (``fmkit.engine.model_call``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from fmkit.flow.state import State

#: ``time(n, device) -> t`` of shape [n] in [0, 1] (see :mod:`fmkit.flow.time_sampling`)
TimeSampler = Callable[[int, torch.device], Tensor]

#: the model as an objective calls it: ``model(x_t, t, cond) -> prediction`` (a state of the same
#: fields: velocities, or logits for a categorical field)
ModelFn = Callable[..., State]


@runtime_checkable
class Objective(Protocol):
    """A training loss built once (paths, source, coupling, times, weights) and called per micro-step.

    ``objective(model, x1, x0=None) -> (total, per_field)``: ``x1`` a batch of data (a state on the
    training device, masks and ``cond`` beside its fields); ``x0`` its source sample when it was drawn
    and paired already (a data pipeline pairing ahead of the step); ``total`` the scalar to minimise,
    ``per_field`` each field's mean loss (scalars, for logging).

    Optionally ``objective.training_module(model) -> nn.Module``: the module the engine puts under DDP
    and ``torch.compile`` in the model's place (same parameters), for an objective whose model call is
    more than a forward, e.g. MeanFlow's JVP, which must run inside DDP's forward for the gradients to
    be synchronised. Without it the engine wraps the model itself.

    Optionally ``objective.two_times = True``: it calls the model with the second time ``r``
    (:mod:`fmkit.flow.two_times`). Without it, a model with an r-embedding leaves that embedding's
    parameters without gradients, which the engine tells DDP to expect.
    """

    def __call__(self, model: ModelFn, x1: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]: ...


def uniform_time(n: int, device: torch.device) -> Tensor:
    """t ~ U(0, 1), shape [n] (Lipman et al. 2022)."""
    return torch.rand(n, device=device)
