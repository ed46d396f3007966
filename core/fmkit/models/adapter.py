"""Adapter: a network on bare tensors, ``net(x, t)`` or ``net(x, t, cond)``, as an fmkit model."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from fmkit.state import State


class TensorModel(nn.Module):
    """Wraps ``net(x [B,...], t [B]) -> v [B,...]`` into the state contract on field ``field``."""

    def __init__(self, net: nn.Module, field: str = "x") -> None:
        super().__init__()
        self.net, self.field = net, field
        params = inspect.signature(net.forward).parameters
        self._takes_cond = len(params) >= 3 or "cond" in params

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None) -> State:
        x = x_t[self.field]
        out = self.net(x, t, cond) if self._takes_cond else self.net(x, t)
        return {self.field: out}
