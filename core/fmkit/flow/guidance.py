"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper, not a model feature.

Training drops the condition to the *null class* with probability p, so one network learns both
v(x, t | c) and v(x, t | null); sampling mixes them: v = v_null + w (v_c - v_null).

The null class is one number, named ``null_class`` everywhere: the label K of a dataset with
K condition classes (labels 0..K-1; :attr:`fmkit.flow.data.DataInfo.null_class`).
:func:`with_guidance` is the one entry point every sampling route takes (the trainer's evaluation,
``fmkit sample`` / ``evaluate``, reflow pairs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.flow.guidance_input import GuidanceInput, takes_guidance
from fmkit.flow.state import State

#: how to give data a null class, for the errors of options that need one (cond_dropout, guidance_scale)
NULL_CLASS_FIX = ("if the data has class labels, declare K condition classes (DataInfo(num_cond_classes=K), "
                  "TensorDataset(data, num_cond_classes=K)): labels are 0..K-1 and the null label is K, so a "
                  "label embedding needs K + 1 rows")


def drop_condition(cond: Tensor | None, p: float, null_class: int) -> Tensor | None:
    """Replace each class label by ``null_class`` with probability ``p`` (training side of CFG)."""
    if cond is None or p <= 0.0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device) < p
    return torch.where(drop.reshape(-1, *([1] * (cond.dim() - 1))), torch.full_like(cond, null_class), cond)


class ClassifierFreeGuidance(nn.Module):
    """``forward(x_t, t, cond)`` = v(x_t, t | null) + scale * (v(x_t, t | cond) - v(x_t, t | null)).

    ``scale = 1`` is the plain conditional model, called once; ``scale = 0`` the unconditional one.
    Other scales run both branches as one batch of 2B. The mix applies to every output as is: for a
    categorical field the model's outputs are logits, so guidance there gives p_c^w p_null^(1-w) / Z,
    a posterior renormalised over classes (not the unnormalised rate-level guidance of Nisonoff et
    al. 2024).
    """

    def __init__(self, model: nn.Module, scale: float, null_class: int) -> None:
        super().__init__()
        self.model, self.scale, self.null_class = model, float(scale), int(null_class)

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, **kw: Any) -> State:
        """The guided output; keywords (a self-conditioned model's ``self_cond``) reach both branches."""
        if cond is None:
            return self.model(x_t, t, None, **kw)
        if self.scale == 1.0:  # v_null + 1 (v_c - v_null) = v_c: no second branch to pay for
            return self.model(x_t, t, cond, **kw)
        both = {k: _twice(v) for k, v in x_t.items() if k != "cond"}
        c2 = torch.cat([cond, torch.full_like(cond, self.null_class)])
        out = self.model(both, torch.cat([t, t]), c2, **{k: None if v is None else _twice(v) for k, v in kw.items()})
        b = t.shape[0]
        return {k: v[b:] + self.scale * (v[:b] - v[b:]) for k, v in out.items()}


def _twice(v: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """A batch entry stacked on itself (a mapping such as the per-field ``masks``, entry by entry)."""
    return {k: torch.cat([m, m]) for k, m in v.items()} if isinstance(v, Mapping) else torch.cat([v, v])


def with_guidance(model: nn.Module, scale: float | None, null_class: int | None) -> nn.Module:
    """The model whose field a sampler integrates: ``model`` under classifier-free guidance at ``scale``.

    ``model`` itself when ``scale`` is None (unguided) or 1 (the conditional field: one model call per
    velocity, as unguided); for a model that takes the scale as an input
    (:mod:`fmkit.flow.guidance_input`) a :class:`~fmkit.flow.guidance_input.GuidanceInput`, one call per
    velocity; a :class:`ClassifierFreeGuidance` otherwise. ``null_class``: the label of
    a dropped condition (``dataset.info.null_class``); a scale without one is refused (ValueError),
    since there is no unconditional branch to mix with.
    """
    if scale is None:
        return model
    if null_class is None:
        raise ValueError(f"guidance scale {scale} needs a null class: the data declares no condition classes")
    if float(scale) == 1.0:
        return model
    if takes_guidance(model):
        return GuidanceInput(model, scale)
    return ClassifierFreeGuidance(model, scale, null_class)
