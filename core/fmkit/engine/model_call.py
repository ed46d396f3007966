"""The model as the training step calls it: what the engine keeps around an objective's model call
(bf16 autocast, channels-last image fields), so that objectives in :mod:`fmkit.flow.objectives` stay
free of precision and memory-layout concerns."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fmkit.errors import ModelError
from fmkit.flow.state import State, fields, to_channels_last


class TrainingForward:
    """``forward(x_t, *args) -> model(x_t, *args)`` (``args``: times and ``cond``), with ``x_t``'s 4-D
    fields in channels-last order when ``channels_last``, the call in bf16 autocast on ``x_t``'s device
    when ``autocast``; a float dtype mismatch between data and weights is explained (a :class:`ModelError`)."""

    def __init__(self, model: nn.Module, *, autocast: bool = False, channels_last: bool = False) -> None:
        self.model, self.autocast, self.channels_last = model, autocast, channels_last

    def __call__(self, x_t: State, *args: Any, **kwargs: Any) -> State:
        if self.channels_last:  # x_t alone: the model's input; the loss's targets keep their layout
            x_t = to_channels_last(x_t)
        try:
            if self.autocast:
                device = next(iter(fields(x_t).values())).device
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return self.model(x_t, *args, **kwargs)
            return self.model(x_t, *args, **kwargs)  # a disabled autocast context still costs microseconds a step
        except RuntimeError as exc:
            explain_dtype_mismatch(self.model, x_t, exc)
            raise


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
