"""The conditional flow matching objective, one function of a batch.

Lipman et al. 2022, eq. 23 (Tong et al. 2023 for the coupling): ``x0 ~ p_0``, ``(x0, x1) <- coupling``,
``t ~ p(t)``, ``(x_t, u_t) <- path(x0, x1, t)``, ``loss = sum_f w_f * masked MSE(v_theta(x_t, t, c), u_t)``
(cross-entropy for categorical fields); the condition ``c`` is dropped to the null class with
probability ``cond_dropout`` for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from fmkit.errors import ModelError
from fmkit.flow.couplings import Coupling, draw_and_pair
from fmkit.flow.guidance import drop_condition
from fmkit.flow.paths import ProbPath, StatePath
from fmkit.flow.sources import Source, StateSource
from fmkit.flow.state import State, fields, to_channels_last

#: ``time(n, device) -> t`` of shape [n] in [0, 1]
TimeSampler = Callable[[int, torch.device], Tensor]


def cfm_loss(model: nn.Module, path: ProbPath | StatePath, source: Source | StateSource, coupling: Coupling,
             x1: State, *, x0: State | None = None, time: TimeSampler | None = None, cond_dropout: float = 0.0,
             null_cond: int = 0, loss_weights: Mapping[str, float] | None = None, autocast: bool = False,
             channels_last: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """CFM loss of one batch of data ``x1``: the weighted total and each field's mean.

    ``x1``: a state (``[B, ...]`` per field, masks and ``cond`` beside them) on the training device;
    ``x0``: its source sample when it was drawn and paired already (a data pipeline pairing ahead of
    the step), else drawn from ``source`` and paired by ``coupling`` here; ``time(B, device)``: the
    training times ``t`` ([B] in [0, 1], default uniform); ``model(x_t, t, cond)`` returns a
    velocity (logits for a categorical field) per field. ``autocast``: the model in bf16 on the data's
    device; ``channels_last``: x0, x1 (and so x_t) in NHWC memory order for a convolutional model.
    ``path``/``source`` may be per-field objects, used for every field.
    """
    path = path if isinstance(path, StatePath) else StatePath(path)
    source = source if isinstance(source, StateSource) else StateSource(source)
    if x0 is None:
        x0, x1 = draw_and_pair(source, coupling, x1)
    if channels_last:  # data, noise and OT's re-ordered rows come in NCHW order; x_t follows these
        x0, x1 = to_channels_last(x0), to_channels_last(x1)
    first = next(iter(fields(x1).values()))
    t = time(first.shape[0], first.device) if time is not None else torch.rand(first.shape[0], device=first.device)
    ps = path.sample(x0, x1, t)
    cond = drop_condition(x1.get("cond"), cond_dropout, null_cond)
    x_t = {k: v for k, v in ps.x_t.items() if k != "cond"}
    try:
        if autocast:
            with torch.autocast(first.device.type, dtype=torch.bfloat16):
                pred = model(x_t, t, cond)
        else:  # entering a disabled autocast context still costs a few microseconds per step
            pred = model(x_t, t, cond)
    except RuntimeError as exc:
        explain_dtype_mismatch(model, x_t, exc)
        raise
    per_field = path.losses(pred, ps, x1, reduce=True)
    w = loss_weights or {}
    total: Tensor | None = None
    for k, v in per_field.items():  # no 0 + 1.0 * v ops (and their backward) for the usual weights
        wv = v if w.get(k, 1.0) == 1.0 else w[k] * v
        total = wv if total is None else total + wv
    return total, per_field  # type: ignore[return-value]


def explain_dtype_mismatch(model: nn.Module, x_t: State, exc: RuntimeError) -> None:
    """After the model failed: if the data's float dtype differs from the weights' (float64 data from
    numpy and a float32 net, say), say so instead of torch's bare "mat1 and mat2" message."""
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    data = {k: v.dtype for k, v in fields(x_t).items() if v.is_floating_point() and v.dtype != weights}
    if weights is not None and data:
        raise ModelError(f"the model failed on data of dtype {data} with weights of dtype {weights}: {exc}",
                         where="data / model dtype",
                         fix=f"cast one to the other: the data (e.g. tensor.to({weights})) or the model "
                             f"(model.to({next(iter(data.values()))}))") from exc
