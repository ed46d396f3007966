"""Training-time distributions over t in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def sample_time(n: int, kind: str = "uniform", *, mean: float = 0.0, std: float = 1.0, alpha: float = 1.0,
                beta: float = 1.0, device: torch.device | str = "cpu", eps: float = 0.0,
                grid: Sequence[float] | None = None) -> Tensor:
    """``n`` times in [eps, 1 - eps] (t = 1 is data).

    - ``uniform``: U(0, 1) (Lipman et al. 2022).
    - ``logit_normal``: sigmoid(N(mean, std^2)) (Esser et al. 2024, "Scaling Rectified Flow Transformers").
    - ``beta``: Beta(alpha, beta); alpha > beta puts more steps near the data, where fine detail (a
      molecule's bond lengths) is decided; Beta(1, 1) = uniform.
    - ``grid``: uniform over the given times ``grid`` (distillation: ``[0]`` trains the one-step map
      x0 -> x1 of stored pairs, Liu et al. 2022; ``[0, 0.5]`` a two-step student).

    Args:
        n: number of times (the batch size B).
        kind: "uniform", "logit_normal", "beta" or "grid".
        mean: ``logit_normal``'s location (of the normal before the sigmoid).
        std: ``logit_normal``'s scale.
        alpha: ``beta``'s first shape parameter.
        beta: ``beta``'s second shape parameter.
        device: where the times are drawn.
        eps: clamp to [eps, 1 - eps] (0: no clamp), away from endpoints where a path may be singular.
        grid: the times ``grid`` draws from, each in [0, 1].

    Returns:
        t [n] in [eps, 1 - eps].
    """
    if kind == "uniform":
        t = torch.rand(n, device=device)
    elif kind == "logit_normal":
        t = torch.sigmoid(torch.randn(n, device=device) * std + mean)
    elif kind == "beta":
        # parameters filled on the device (a copy from the host would wait for the GPU) and not re-checked
        # (the recipe validates them; torch's argument check reads them back to the host every call)
        a, b = (torch.full((), float(v), device=device) for v in (alpha, beta))
        t = torch.distributions.Beta(a, b, validate_args=False).sample((n,))
    elif kind == "grid":
        if not grid:
            raise ValueError("the grid time sampler needs a non-empty grid of times in [0, 1]")
        g = torch.as_tensor(list(grid), dtype=torch.float32, device=device)
        t = g[torch.randint(0, g.shape[0], (n,), device=device)] if g.shape[0] > 1 else g.expand(n).clone()
    else:
        raise ValueError(f"unknown time sampler {kind!r}; use 'uniform', 'logit_normal', 'beta' or 'grid'")
    if eps > 0:
        t = t.clamp(eps, 1.0 - eps)
    return t
