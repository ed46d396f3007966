"""A coupling: 1-D optimal transport along a random projection."""

import torch
from fmkit.plugin import Coupling, State


class SlicedCoupling(Coupling):
    """Sorts x0 and x1 along a random unit direction and pairs them in that order."""

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        a, b = x0["x"].flatten(1), x1["x"].flatten(1)
        d = torch.randn(a.shape[1], device=a.device, dtype=a.dtype)
        i0, i1 = torch.argsort(a @ d), torch.argsort(b @ d)
        inv = torch.empty_like(i1)
        inv[i1] = torch.arange(len(i1), device=i1.device)
        order = i0[inv]  # x0 row paired with each x1 row
        return {k: v[order] if k == "x" else v for k, v in x0.items()}, x1
