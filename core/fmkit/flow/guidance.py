"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper, not a model feature.

Training drops the condition to a *null* value with probability p, so one network learns both
v(x, t | c) and v(x, t | null); sampling mixes them: v = v_null + w (v_c - v_null).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fmkit.flow.state import State


def drop_condition(cond: Tensor | None, p: float, null_value: int) -> Tensor | None:
    """Replace each class label by ``null_value`` with probability ``p`` (training side of CFG)."""
    if cond is None or p <= 0.0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device) < p
    return torch.where(drop.reshape(-1, *([1] * (cond.dim() - 1))), torch.full_like(cond, null_value), cond)


class ClassifierFreeGuidance(nn.Module):
    """``forward(x_t, t, cond)`` = v(x_t, t | null) + scale * (v(x_t, t | cond) - v(x_t, t | null)).

    ``scale = 1`` is the plain conditional model; ``scale = 0`` the unconditional one. Both
    branches run as one batch of 2B. The mix applies to every output as is: for a categorical field
    the model's outputs are logits, so guidance there gives p_c^w p_null^(1-w) / Z, a posterior
    renormalised over classes (not the unnormalised rate-level guidance of Nisonoff et al. 2024).
    """

    def __init__(self, model: nn.Module, scale: float, null_value: int) -> None:
        super().__init__()
        self.model, self.scale, self.null_value = model, float(scale), int(null_value)

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None) -> State:
        if cond is None:
            return self.model(x_t, t, None)
        both = {k: _twice(v) for k, v in x_t.items() if k != "cond"}
        c2 = torch.cat([cond, torch.full_like(cond, self.null_value)])
        out = self.model(both, torch.cat([t, t]), c2)
        b = t.shape[0]
        return {k: v[b:] + self.scale * (v[:b] - v[b:]) for k, v in out.items()}


def _twice(v: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """A batch entry stacked on itself (a mapping such as the per-field ``masks``, entry by entry)."""
    return {k: torch.cat([m, m]) for k, m in v.items()} if isinstance(v, Mapping) else torch.cat([v, v])


def with_guidance(model: nn.Module, scale: float | None, null_value: int | None) -> nn.Module:
    """``model`` under classifier-free guidance at ``scale``; ``model`` itself when no scale is set or
    the data has no null class (unconditional data)."""
    if scale is None or null_value is None:
        return model
    return ClassifierFreeGuidance(model, scale, null_value)
