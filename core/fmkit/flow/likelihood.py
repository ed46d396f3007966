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
from fmkit.flow.self_conditioning import refuse_likelihood
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
                   dequantization_offset: float | Tensor = 0.0) -> LikelihoodResult:
    """log p_1(x1) of the flow ``velocity`` (which sees a state without mask/cond, and a scalar t).

    ``x1`` may carry ``mask`` (padding excluded from the dims) and ``cond``. Bits per dim are
    ``(-log p + offset) / (D ln 2)`` with D the real dimensions of each example; ``estimator``
    "exact", "hutchinson" or "auto" (exact up to ``EXACT_MAX_DIMS`` dims per example); pass
    ``dequantization_offset = D log 256``-style corrections (nats, a number or one per example [B])
    yourself for discrete data, or use :func:`data_log_likelihood`.
    On bare tensors: ``x1`` a tensor, ``velocity(x, t) -> tensor``, ``source`` a per-field
    :class:`Source`; the result's ``x0`` is then a tensor too.

    Args:
        velocity: the field ``velocity(x, t)``, x a state of the continuous fields [B, ...], t a scalar.
        x1: the data points to score, a state (or a tensor) [B, ...], optionally with ``mask`` and ``cond``.
        source: the noise distribution p_0 whose log-density starts the change of variables.
        solver: integrates the augmented ODE backward from t = 1 to 0.
        estimator: the divergence: "exact", "hutchinson" or "auto".
        probe: Hutchinson's probe distribution, "rademacher" or "gaussian".
        dequantization_offset: nats added to -log p before bits/dim, a number or one per example [B].

    Returns:
        log p_1(x1) [B] (nats), bits per dim [B], the solver's NFE and x0 = the solve's end at t = 0.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown divergence estimator {estimator!r}; use one of {ESTIMATORS}")
    refuse_likelihood(velocity)
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


# -- what the likelihood of a data set means: declared by the data -----------------------------------
#: the key of ``DataInfo.meta`` by which a dataset declares how its likelihood is measured
LIKELIHOOD_META = "likelihood"


@dataclass(frozen=True)
class Dequantization:
    """Uniform dequantisation of data on a grid of ``levels`` values over ``[low, high]`` (8-bit images
    scaled to [-1, 1]: 256, -1, 1). Each value u is spread uniformly over its bin of width
    w = (high - low) / levels; then log P(u) >= E_U[log p(x)] + D log w (Jensen), so the NLL of the
    discrete data is bounded by -log p(x) - D log w, never below 0 (Theis et al. 2016; Ho et al. 2019)."""

    levels: int
    low: float
    high: float

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.levels

    def apply(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x`` (values in their bins, e.g. at the centres) spread uniformly over each bin."""
        k = torch.floor((x.double() - self.low) / self.width).clamp(0, self.levels - 1)
        u = torch.rand(x.shape, generator=generator).double().to(x.device)  # on the CPU: the same on every device
        return (self.low + (k + u) * self.width).to(x.dtype)

    @property
    def nats_per_dim(self) -> float:
        """What each dimension adds to the NLL: -log w."""
        return -math.log(self.width)

    def describe(self) -> str:
        return (f"uniform dequantisation of {self.levels} levels over [{self.low:g}, {self.high:g}] (1 draw; "
                f"+ln({self.levels}/{self.high - self.low:g}) nats per dim)")


def declared_likelihood(meta: dict, who: str) -> Dequantization | None:
    """What a dataset's ``info.meta["likelihood"]`` declares: ``"continuous"`` (the density of the data
    as it is: None) or ``{"dequantize": {"levels": L, "low": a, "high": b}}`` (discrete values on a grid:
    a :class:`Dequantization`). A dataset that declares neither is refused: a density evaluated at
    discrete values (8-bit pixels at their bin centres) grows without bound as a model fits them, and
    its bits/dim go negative."""
    from fmkit.errors import FmkitError

    decl = meta.get(LIKELIHOOD_META)
    fix = ("the dataset's plugin declares it in DataInfo.meta['likelihood']: 'continuous', or "
           "{'dequantize': {'levels': 256, 'low': -1.0, 'high': 1.0}} for values on a grid (docs/plugins.md)")
    if decl == "continuous":
        return None
    if isinstance(decl, dict) and isinstance(decl.get("dequantize"), dict):
        d = decl["dequantize"]
        try:
            levels, low, high = int(d["levels"]), float(d["low"]), float(d["high"])
        except (KeyError, TypeError, ValueError):
            levels, low, high = 0, 0.0, 0.0
        if levels >= 2 and math.isfinite(low) and math.isfinite(high) and high > low:
            return Dequantization(levels, low, high)
        raise FmkitError(f"{who} declares a dequantisation that is not one: {d!r}", where=f"{who}: info.meta",
                         fix="give levels >= 2 and finite low < high, e.g. {'levels': 256, 'low': -1.0, 'high': 1.0}")
    if decl is None:
        raise FmkitError(f"{who} does not declare what its log-likelihood is: the density of continuous data, or "
                         "of discrete values that need dequantisation (else bits/dim can come out negative)",
                         where=f"{who}: info.meta", fix=fix)
    raise FmkitError(f"{who} declares likelihood {decl!r}, which fmkit does not know", where=f"{who}: info.meta",
                     fix=fix)


def data_log_likelihood(velocity: Callable, x1: State, source: StateSource | Source, solver: Solver,
                        dequantization: Dequantization | None, *, estimator: str = "auto",
                        generator: torch.Generator | None = None) -> LikelihoodResult:
    """:func:`log_likelihood` of the data ``x1`` under the protocol its dataset declares: with a
    ``dequantization`` its continuous fields are dequantised (one draw from ``generator``) and the
    bits/dim include the -log(bin width) per dimension, so they bound the discrete data's NLL.

    Args:
        velocity: the field ``velocity(x, t)``, as for :func:`log_likelihood`.
        x1: the data batch, a state [B, ...] (``mask`` and ``cond`` allowed).
        source: the noise distribution p_0.
        solver: integrates the augmented ODE backward from t = 1 to 0.
        dequantization: the dataset's declared grid (:func:`declared_likelihood`); None: continuous data.
        estimator: the divergence: "exact", "hutchinson" or "auto".
        generator: the random stream of the dequantisation noise (None: the global one).

    Returns:
        As :func:`log_likelihood`: log p_1 [B] (nats, of the dequantised data), bits per dim [B] that
        bound the discrete data's NLL, NFE and x0.
    """
    if dequantization is None:
        return log_likelihood(velocity, x1, source, solver, estimator=estimator)
    x = dict(x1)
    mask = x1.get("mask")
    for n, v in fields(x1).items():
        if v.is_floating_point():
            x[n] = apply_mask(dequantization.apply(v, generator), mask)
    offset = sum(count_dims(v, mask) for v in fields(x1).values()) * dequantization.nats_per_dim  # [B]
    return log_likelihood(velocity, x, source, solver, estimator=estimator, dequantization_offset=offset)
