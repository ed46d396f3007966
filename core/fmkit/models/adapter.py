"""Adapter: a network on bare tensors, ``net(x, t)`` or ``net(x, t, cond)``, as an fmkit model."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor, nn

from fmkit.state import State


class TensorModel(nn.Module):
    """Wraps ``net(x [B,...], t [B]) -> v [B,...]`` into the state contract on field ``field``.

    ``net`` (a module or any callable) gets ``cond`` as its third argument when its signature has a
    parameter named ``cond``, a third positional parameter without a default, or ``*args``; an
    unconditional ``forward(x, t, scale=1.0)`` is called as ``net(x, t)``.
    """

    def __init__(self, net: nn.Module | Callable[..., Tensor], field: str = "x") -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"TensorModel wraps a network net(x, t[, cond]); got a {type(net).__name__}")
        self.net, self.field = net, field
        self._takes_cond = takes_cond(net.forward if isinstance(net, nn.Module) else net)

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None) -> State:
        x = x_t[self.field]
        out = self.net(x, t, cond) if self._takes_cond else self.net(x, t)
        return {self.field: out}


def takes_cond(fn: Callable[..., object]) -> bool:
    """Whether ``fn(x, t, ...)`` has a place for the condition (see :class:`TensorModel`)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return False
    if any(p.name == "cond" for p in params) or any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 and positional[2].default is inspect.Parameter.empty
