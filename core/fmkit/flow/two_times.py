"""Models with two times: the average velocity u(x, r, t) that MeanFlow trains and samples with.

The contract (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): a model meets it when
its ``forward(x_t, t, cond=None, *, r=None)`` takes a keyword ``r`` ([B], the other end of a time
interval) and returns

    u(x_t, r, t) = 1 / (r - t) * integral_t^r v(x_s, s) ds      (MeanFlow eq. 3),

the average velocity that carries x_t at time t to x_r = x_t + (r - t) u (fmkit's times run from the
source, t = 0, to the data, t = 1, so a sampling jump has r > t). Two rules keep plain flow matching
unchanged:

- ``r=None`` is the instantaneous velocity v(x_t, t), computed exactly as a model without ``r`` does;
- ``r = t`` gives the same output as ``r=None``: u(x, t, t) = v(x, t) (MeanFlow eq. 3 at r -> t).

:class:`IntervalEmbedding` is the building block that keeps both: an embedding of h = r - t that is
exactly zero at h = 0, added to a model's time embedding. :func:`takes_r` says whether a model's
forward has the keyword; ``fmkit.testing.check_two_time_model`` checks the rules.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fmkit.errors import ModelError


def takes_r(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` (a model, its forward, or any callable) accepts the keyword ``r``."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any((p.name == "r" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD for p in params)


def require_r(model: Callable[..., object], who: str) -> None:
    """Refuse (a :class:`ModelError`) a model whose forward has no keyword ``r``, naming ``who`` needs it."""
    if not takes_r(model):
        name = type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", "the model")
        raise ModelError(f"{who} calls the model as model(x_t, t, cond, r=r) for the average velocity u(x_t, r, t), "
                         f"and {name}.forward takes no keyword r", where="model",
                         fix="give its forward a keyword `r=None` (an embedding of r - t added to the time "
                             "embedding, zero at r = t: fmkit.plugin.IntervalEmbedding; docs/plugins.md, "
                             "'Models with two times'); the built-in mlp takes `two_times: true`")


class IntervalEmbedding(nn.Module):
    """``h = r - t`` [B] -> [B, dim]: g(phi(h)) - g(phi(0)), where phi are sinusoidal features of h and g a
    SiLU MLP; exactly zero where h = 0 (so r = t is the plain model), differentiable in h elsewhere.

    ``max_freq`` (radians per unit time) is the top frequency of phi: 1 to ``max_freq`` geometrically.
    A moderate one (20) matters: MeanFlow's target holds d/dt of the network, and its gradient steps
    turn unstable for time features of high frequency (on Gaussian -> Gaussian, 200 diverged).
    """

    def __init__(self, dim: int, features: int = 64, max_freq: float = 20.0) -> None:
        super().__init__()
        half = max(features // 2, 1)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), half)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        h = h.reshape(-1)
        a = h.to(self.freqs.dtype)[:, None] * self.freqs[None]
        # phi(h) - phi(0) = [sin(w h), cos(w h) - 1]: the MLP of phi(0) is subtracted below
        feats = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
        zero = torch.cat([torch.zeros_like(self.freqs), torch.ones_like(self.freqs)])[None]
        emb = self.mlp(feats) - self.mlp(zero)
        # exactly zero at h = 0 (not to round-off): u(x, t, t) is bit for bit the model without r
        return torch.where((h == 0)[:, None], torch.zeros((), dtype=emb.dtype, device=emb.device), emb)
