"""Adapter: a network on bare tensors, ``net(x, t)`` or ``net(x, t, cond)``, as an fmkit model."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

from torch import Tensor, nn

from fmkit.flow.state import State
from fmkit.flow.two_times import require_r


class TensorModel(nn.Module):
    """Wraps ``net(x [B,...], t [B]) -> v [B,...]`` into the state contract on field ``field``.

    ``net`` (a module or any callable) gets the condition when its signature has room for it: as
    ``cond=`` when it has a parameter named ``cond`` or ``**kwargs``; as the third positional
    argument when that parameter has no default or a default of None (``forward(x, t, labels=None)``),
    or with ``*args``. An unconditional ``forward(x, t, scale=1.0)`` is called as ``net(x, t)``, and
    is warned about once if the data does carry a condition. ``forward(..., r=r)`` (the average velocity of
    a model with two times, :mod:`fmkit.flow.two_times`) calls ``net(x, t, [cond,] r=r)``, for a ``net``
    with a keyword ``r``.
    """

    def __init__(self, net: nn.Module | Callable[..., Tensor], field: str = "x") -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"TensorModel wraps a network net(x, t[, cond]); got a {type(net).__name__}")
        self.net, self.field = net, field
        self._cond = cond_passing(net.forward if isinstance(net, nn.Module) else net)
        self._warned = False

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, *, r: Tensor | None = None) -> State:
        x = x_t[self.field]
        if r is not None:  # a model with two times (fmkit.flow.two_times): net(x, t, [cond,] r=r)
            require_r(self.net, "a two-time call (objective or solver meanflow)")
            out = self.net(x, t, cond, r=r) if self._cond == "positional" else \
                self.net(x, t, cond=cond, r=r) if self._cond == "keyword" else self.net(x, t, r=r)
        elif self._cond == "keyword":
            out = self.net(x, t, cond=cond)
        elif self._cond == "positional":
            out = self.net(x, t, cond)
        else:
            if cond is not None and not self._warned:
                self._warned = True
                warnings.warn("the data carries a condition but the network's signature net(x, t) has no place for "
                              "it: it trains unconditionally (give it a `cond` parameter to use the condition)",
                              stacklevel=2)
            out = self.net(x, t)
        return {self.field: out}


def cond_passing(fn: Callable[..., object]) -> str | None:
    """How ``fn(x, t, ...)`` takes the condition: ``"keyword"``, ``"positional"`` or None (not at all)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the two-argument form
        return None
    if any(p.name == "cond" and p.kind is not p.POSITIONAL_ONLY for p in params):
        return "keyword"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 and (positional[2].default is inspect.Parameter.empty or positional[2].default is None):
        return "positional"
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return "positional"
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return "keyword"
    return None
