"""Exact log-likelihood of a flow by the instantaneous change of variables.

d/dt log p_t(x_t) = -div v_t(x_t) (Chen et al. 2018, "Neural ODEs", thm. 1), so integrating the
augmented ODE (x, L), dL/dt = div v, backwards from data (t=1) to source (t=0) gives
log p_1(x1) = log p_0(x0) + L(0). The divergence is exact (one autograd pass per dimension, for
small dims) or Hutchinson's estimator E[eps^T J eps] with a fixed probe per solve (Grathwohl et al.
2019, FFJORD).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmkit.errors import ModelError
from fmkit.flow.solvers import CheckedVelocity, Solver
from fmkit.flow.sources import Source, StateSource
from fmkit.flow.state import DEFAULT_FIELD, State, StateLike, apply_mask, as_state, count_dims, fields, is_categorical

_L = "__logdet__"
ESTIMATORS = ("auto", "exact", "hutchinson")
EXACT_MAX_DIMS = 32
"""``estimator="auto"``: the exact divergence (one backward pass per dimension) up to this many
dimensions per example, Hutchinson's one-pass estimate above (a QM9 molecule has up to 87 position
dims: the exact form made one adaptive solve take over half an hour on a CPU)."""


@dataclass
class LikelihoodResult:
    """log p_1(x1) per example [B], its NLL in bits per dimension [B], and the solve's NFE."""

    log_prob: Tensor
    bits_per_dim: Tensor
    nfe: int
    x0: StateLike


def divergence_exact(out: dict[str, Tensor], x: dict[str, Tensor]) -> Tensor:
    """sum_i d out_i / d x_i over every dimension of every field, [B] (D backward passes)."""
    names = list(x)
    b = x[names[0]].shape[0]
    div = torch.zeros(b, dtype=x[names[0]].dtype, device=x[names[0]].device)
    for n in names:
        if not out[n].requires_grad:  # the field does not depend on x (e.g. v(t) only): no divergence
            continue
        o = out[n].reshape(b, -1)
        for i in range(o.shape[1]):
            g = torch.autograd.grad(o[:, i].sum(), x[n], retain_graph=True, create_graph=False, allow_unused=True)[0]
            if g is not None:
                div = div + g.reshape(b, -1)[:, i]
    return div


def divergence_hutchinson(out: dict[str, Tensor], x: dict[str, Tensor], probes: dict[str, Tensor]) -> Tensor:
    """eps^T (d out / d x) eps with the given probes, [B] (one vector-Jacobian product)."""
    names = list(x)
    b = x[names[0]].shape[0]
    div = torch.zeros(b, dtype=x[names[0]].dtype, device=x[names[0]].device)
    dot = sum((out[n] * probes[n]).sum() for n in names)
    if not dot.requires_grad:  # the field does not depend on x: no divergence
        return div
    grads = torch.autograd.grad(dot, [x[n] for n in names], create_graph=False, allow_unused=True)
    for g, n in zip(grads, names):
        if g is not None:
            div = div + (g * probes[n]).reshape(b, -1).sum(1)
    return div


def make_probes(like: dict[str, Tensor], kind: str, mask: Tensor | None) -> dict[str, Tensor]:
    if kind == "rademacher":
        p = {n: torch.randint(0, 2, v.shape, device=v.device).to(v.dtype) * 2 - 1 for n, v in like.items()}
    elif kind == "gaussian":
        p = {n: torch.randn_like(v) for n, v in like.items()}
    else:
        raise ValueError(f"unknown probe {kind!r}; use 'rademacher' or 'gaussian'")
    return {n: apply_mask(v, mask) for n, v in p.items()}


def log_likelihood(velocity: Callable, x1: StateLike, source: StateSource | Source, solver: Solver, *,
                   estimator: str = "exact", probe: str = "rademacher",
                   dequantization_offset: float = 0.0) -> LikelihoodResult:
    """log p_1(x1) of the flow ``velocity`` (which sees a state without mask/cond, and a scalar t).

    ``x1`` may carry ``mask`` (padding excluded from the dims) and ``cond``. Bits per dim are
    ``(-log p + offset) / (D ln 2)`` with D the real dimensions of each example; ``estimator``
    "exact", "hutchinson" or "auto" (exact up to ``EXACT_MAX_DIMS`` dims per example); pass
    ``dequantization_offset = D log 256``-style corrections yourself for discrete data.
    On bare tensors: ``x1`` a tensor, ``velocity(x, t) -> tensor``, ``source`` a per-field
    :class:`Source`; the result's ``x0`` is then a tensor too.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown divergence estimator {estimator!r}; use one of {ESTIMATORS}")
    x1, bare = as_state(x1)
    if bare:
        fn = velocity

        def velocity(x: State, t: Tensor) -> State:  # noqa: F811 - adapt a tensor field
            try:
                out = fn(x[DEFAULT_FIELD], t)
            except (TypeError, IndexError, KeyError) as exc:  # e.g. s["x"] on a tensor: a velocity of states
                raise ModelError(
                    f"x1 is a bare tensor, so the velocity is called as velocity(x: Tensor, t); it failed with "
                    f"{type(exc).__name__}: {exc}", where="velocity function",
                    fix=f"if it takes and returns states, pass x1 as a state ({{{DEFAULT_FIELD!r}: x1}})") from exc
            if not isinstance(out, Tensor):
                raise ModelError(
                    f"x1 is a bare tensor, so the velocity function must return a tensor; it returned a "
                    f"{type(out).__name__}", where="velocity output",
                    fix=f"return a tensor, or pass x1 as a state ({{{DEFAULT_FIELD!r}: x1}}) to a velocity of states")
            return {DEFAULT_FIELD: out}

    velocity = CheckedVelocity(velocity)  # before the masking below could broadcast a wrong shape away
    if not isinstance(source, StateSource):
        source = StateSource(source)
    mask = x1.get("mask")
    xf = fields(x1)
    for n, v in xf.items():
        if is_categorical(v):
            raise ValueError(f"field {n!r} is categorical: log-likelihood covers continuous fields only")
    if estimator == "auto":
        estimator = "exact" if sum(v[0].numel() for v in xf.values()) <= EXACT_MAX_DIMS else "hutchinson"
    probes = make_probes(xf, probe, mask) if estimator == "hutchinson" else None

    def augmented(state: State, t: Tensor) -> State:
        with torch.enable_grad():
            x = {n: state[n].detach().requires_grad_(True) for n in xf}
            out = velocity(x, t)
            out = {n: apply_mask(out[n], mask) for n in xf}  # padded dims: no motion, no divergence
            div = divergence_exact(out, x) if probes is None else divergence_hutchinson(out, x, probes)
        res = {n: out[n].detach() for n in xf}
        res[_L] = div.detach()
        return res

    b = next(iter(xf.values())).shape[0]
    start = dict(xf)
    start[_L] = torch.zeros(b, dtype=next(iter(xf.values())).dtype, device=next(iter(xf.values())).device)
    sol = solver.solve(augmented, start, 1.0, 0.0)
    x0 = {n: sol.x[n] for n in xf}
    if mask is not None:
        x0["mask"] = mask
    logp = source.log_prob(x0) + sol.x[_L]
    dims = sum(count_dims(v, mask) for v in xf.values()).to(logp.dtype)
    bpd = (-logp + dequantization_offset) / (dims * math.log(2.0))
    return LikelihoodResult(logp, bpd, sol.nfe, x0[DEFAULT_FIELD] if bare else x0)
