"""Couplings: re-pair source and data samples within a minibatch.

A coupling takes ``(x0, x1)`` states (``mask`` and ``cond`` ride with x1) and returns them
re-paired. The data side x1 keeps its order (so its cond and mask stay aligned); x0 rows are
re-ordered. Minibatch OT-CFM: Tong et al. 2023 ("Improving and generalizing flow-based generative
models with minibatch optimal transport"); Pooladian et al. 2023.

The transport cost is the squared Euclidean distance over the continuous fields; with a mask,
only examples with identical masks may be paired (other pairs cost ``+inf`` in effect).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fmkit.errors import NonFiniteDataError
from fmkit.flow.state import (
    State,
    StateLike,
    apply_mask,
    as_state,
    check_same_fields,
    field_mask,
    fields,
    index,
    is_categorical,
    passengers,
    unwrap,
)

_BIG = 1e12


class Coupling(ABC):
    """``(x0, x1) -> (x0, x1)`` re-paired; bare tensors in, bare tensors out.

    ``host = True`` declares the pairing CPU work that needs nothing from the model (e.g. many small
    scipy assignments): the trainer then draws the noise and pairs it in the data pipeline, in
    DataLoader workers ahead of the step, so it overlaps the GPU (``trainer.pairing: auto``).
    """

    host: bool = False

    def __call__(self, x0: StateLike, x1: StateLike) -> tuple[StateLike, StateLike]:
        s0, bare = as_state(x0)
        s1, _ = as_state(x1)
        r0, r1 = self.pair(s0, s1)
        return unwrap(r0, bare), unwrap(r1, bare)

    @abstractmethod
    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        """Re-pair states (``mask``/``cond`` ride with x1)."""

    def draw(self, source: Any, x1: State) -> State:
        """The source sample x0 for the data batch ``x1``: a fresh draw from ``source`` (a
        StateSource); a coupling that keeps stored pairs (:class:`GivenCoupling`) takes it from x1."""
        return source.sample(x1)


class IndependentCoupling(Coupling):
    """The product coupling q(x0) q(x1): pairs stay as sampled (Lipman et al. 2022)."""

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        return x0, x1


class GivenCoupling(Coupling):
    """Keeps stored pairs (x0, x1) as they are: x0 is the batch's own ``"x0"`` entry (a pairs
    dataset, :mod:`fmkit.app.builtin.pairs`), not a source draw. What k-rectified flow and distillation train
    on (Liu et al. 2022, "Flow Straight and Fast"). Called on two states, it pairs them as given."""

    def draw(self, source: Any, x1: State) -> State:
        from fmkit.errors import DataError
        from fmkit.flow.state import X0

        stored = x1.get(X0)
        if not isinstance(stored, dict):
            raise DataError("the given coupling keeps stored (x0, x1) pairs, and this batch has none (no 'x0' "
                            "entry)", where="coupling: given",
                            fix="train on a pairs dataset (`data: {name: pairs, path: PAIRS}`, written by "
                                "`fmkit reflow RUN --out PAIRS`), or use another coupling")
        x0 = dict(stored)
        check_same_fields(x0, x1, "the stored pairs' x0 (coupling: given)")
        x0.update(passengers(x1))
        return x0

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        from fmkit.flow.state import X0

        return x0, ({k: v for k, v in x1.items() if k != X0} if X0 in x1 else x1)


def pairwise_cost(x0: State, x1: State) -> Tensor:
    """C[i, j] = ||x0_i - x1_j||^2 over continuous fields (masked entries ignored), float64 [B, B].

    Examples with different masks get a prohibitive cost so they are never paired.
    """
    mask = x1.get("mask")
    cost = None
    for k, v1 in fields(x1).items():
        if k not in x0 or x0[k].shape != v1.shape:
            got = tuple(x0[k].shape) if k in x0 else "nothing"
            raise ValueError(f"a coupling pairs equal batches: field {k!r} of x1 has shape {tuple(v1.shape)}, "
                             f"x0 has {got}")
        if is_categorical(v1):
            continue
        a = apply_mask(x0[k], field_mask(x1, k)).reshape(v1.shape[0], -1).double()
        b = apply_mask(v1, field_mask(x1, k)).reshape(v1.shape[0], -1).double()
        c = torch.cdist(a, b).pow(2)
        cost = c if cost is None else cost + c
    if cost is None:
        raise ValueError("an OT coupling needs at least one continuous field")
    if mask is not None:
        m = mask.reshape(mask.shape[0], -1)
        same = (m[:, None, :] == m[None, :, :]).all(-1)
        cost = torch.where(same, cost, torch.full_like(cost, _BIG))
    return cost


def require_finite(x0: State, x1: State, cost: Tensor | np.ndarray | None = None) -> None:
    """Raise :class:`NonFiniteDataError` naming the fields when ``cost`` (else the continuous fields)
    holds NaN/Inf: an assignment or Sinkhorn would fail with a bare numeric error, or pair at random.
    For a coupling's own use; a device tensor makes this one host sync."""
    if cost is None:
        finite = all(bool(torch.isfinite(v).all()) for s in (x0, x1) for v in fields(s).values()
                     if v.is_floating_point())
    elif isinstance(cost, np.ndarray):
        finite = bool(np.isfinite(cost).all())
    else:
        finite = bool(torch.isfinite(cost).all())
    if finite:
        return
    bad = [f"{side}.{k}" for side, s in (("x1", x1), ("x0", x0)) for k, v in fields(s).items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    raise NonFiniteDataError(f"the batch to pair holds NaN/Inf in {', '.join(bad) or 'its costs'}: "
                             f"an OT coupling needs finite data", fields=bad, where="coupling",
                             fix="clean the data (x1 is the data, x0 the source sample)")


EMD_FROM = 256  # batch size from which POT's network simplex replaces scipy's assignment (bench_ot.py)


def assignment(cost: np.ndarray) -> np.ndarray:
    """The exact min-cost assignment of a square cost: ``perm`` with column j paired to row ``perm[j]``.

    For equal uniform marginals this is exact OT (a vertex of the Birkhoff polytope is a permutation).
    Below ``EMD_FROM`` rows: scipy's Jonker-Volgenant; from there on POT's network simplex ``ot.emd``,
    whose time depends far less on the data (timings: bench/README.md, bench_ot.py). Any emd
    warning, or a plan that is not a permutation, falls back to scipy: the answer is always exact.
    """
    n = cost.shape[0]
    if n >= EMD_FROM:
        try:
            import ot
        except ImportError:  # POT is a dependency; a broken install still gets the exact answer
            ot = None
        if ot is not None:
            w = np.full(n, 1.0 / n)
            plan, log = ot.emd(w, w, cost, numItermax=max(100_000, 50 * n * n), log=True)
            perm = plan.argmax(axis=0)
            if log["warning"] is None and np.unique(perm).size == n:
                return perm
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(rows)
    perm[cols] = rows
    return perm


class ExactOTCoupling(Coupling):
    """Exact minibatch OT (Tong et al. 2023; Pooladian et al. 2023): for equal uniform marginals the
    optimal plan is a permutation, found by an exact assignment (:func:`assignment`)."""

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        cost = pairwise_cost(x0, x1).cpu().numpy()
        require_finite(x0, x1, cost)
        perm = assignment(cost)  # x1_j is paired with x0_perm[j]
        return index(x0, torch.as_tensor(perm, device=next(iter(fields(x1).values())).device)), x1


def sinkhorn_plan(cost: Tensor, epsilon: float, iters: int = 200, tol: float = 1e-6) -> Tensor:
    """Entropic OT plan between uniform marginals (Cuturi 2013), on ``cost``'s device.

    ``epsilon`` is relative: the cost matrix is divided by its mean before regularising, so the same
    value works whatever the data scale. Returns P [B, B] whose columns sum to 1/B exactly (the last
    update is the column scaling) and whose rows do to the tolerance reached, ``tol`` or wherever
    ``iters`` ended (a small ``epsilon`` needs more iterations to get there). The coupling
    draws from columns, so each data point is used once and the noise's marginal is near uniform.
    While exp(-C/epsilon) stays far from float64's underflow the scaling form runs (two mat-vecs per
    iteration); below that, the log-domain form (two logsumexps) — the same iterates either way.
    """
    if iters < 1:
        raise ValueError(f"sinkhorn needs at least one iteration, got iters={iters}")
    allowed = cost < _BIG  # where() rather than boolean indexing, which waits for a GPU to count the rows
    mean = torch.where(allowed, cost, 0).sum() / allowed.sum().clamp_min(1)
    c = (cost.double() / mean.clamp_min(1e-12)).clamp_max(1e6)
    if bool(torch.where(c < 1e6, c, 0).max() / epsilon < 600.0):  # K >= exp(-600) ~ 1e-261: u_i v_j <= 1e261
        plan = _sinkhorn_scaling(c, epsilon, iters, tol)
        if bool(torch.isfinite(plan).all()):
            return plan
    return _sinkhorn_log(c, epsilon, iters, tol)


def _sinkhorn_scaling(c: Tensor, epsilon: float, iters: int, tol: float) -> Tensor:
    n, m = c.shape
    k = torch.exp(-c / epsilon)
    a = torch.full((n,), 1.0 / n, dtype=c.dtype, device=c.device)
    b = torch.full((m,), 1.0 / m, dtype=c.dtype, device=c.device)
    v = torch.ones(m, dtype=c.dtype, device=c.device)
    for i in range(iters):
        u = a / (k @ v)
        v_new = b / (k.t() @ u)
        # same stopping rule as the log form: |g_new - g| = epsilon |log v_new - log v| < tol epsilon
        done = i % 10 == 9 and bool(torch.max(torch.abs(torch.log(v_new / v))) < tol)
        v = v_new
        if done:
            break
    return u[:, None] * k * v[None, :]


def _sinkhorn_log(c: Tensor, epsilon: float, iters: int, tol: float) -> Tensor:
    n, m = c.shape
    neg = -c / epsilon
    log_a = torch.full((n,), -np.log(n), dtype=c.dtype, device=c.device)
    log_b = torch.full((m,), -np.log(m), dtype=c.dtype, device=c.device)
    f = torch.zeros(n, dtype=c.dtype, device=c.device)  # potentials in units of epsilon
    g = torch.zeros(m, dtype=c.dtype, device=c.device)
    for i in range(iters):
        f = log_a - torch.logsumexp(g[None, :] + neg, dim=1)
        g_new = log_b - torch.logsumexp(f[:, None] + neg, dim=0)
        done = i % 10 == 9 and bool(torch.max(torch.abs(g_new - g)) < tol)
        g = g_new
        if done:
            break
    return torch.exp(f[:, None] + g[None, :] + neg)


class SinkhornCoupling(Coupling):
    """Entropic OT coupling: each x1_j draws its partner x0_i from the plan's column P[:, j]."""

    def __init__(self, epsilon: float = 0.05, iters: int = 200) -> None:
        if not (np.isfinite(epsilon) and epsilon > 0):  # epsilon <= 0 maximises the cost or divides by 0
            raise ValueError(f"sinkhorn epsilon must be a finite number > 0, got {epsilon}")
        if iters < 1:
            raise ValueError(f"sinkhorn needs at least one iteration, got iters={iters}")
        self.epsilon, self.iters = float(epsilon), int(iters)

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        cost = pairwise_cost(x0, x1)
        require_finite(x0, x1, cost)
        plan = sinkhorn_plan(cost, self.epsilon, self.iters)
        cols = plan.t().float()
        idx = torch.multinomial(cols / cols.sum(1, keepdim=True), 1).squeeze(1)
        return index(x0, idx), x1


def draw_and_pair(source: Any, coupling: Coupling, x1: State) -> tuple[State, State]:
    """x0 ~ ``source`` (a StateSource, which checks its samples' shapes) for the batch ``x1`` — or
    the coupling's own x0 (``Coupling.draw``: stored pairs) — re-paired by ``coupling``, whose
    outputs are checked to keep the data's fields and shapes."""
    x0 = coupling.draw(source, x1)
    p0, p1 = coupling.pair(x0, x1)
    if p0 is not x0:  # the independent coupling hands its inputs back: nothing to check
        check_same_fields(p0, x1, f"the coupling ({type(coupling).__name__}), its x0")
    if p1 is not x1:
        check_same_fields(p1, x1, f"the coupling ({type(coupling).__name__}), its x1")
        if not _checked(coupling):  # on its first batch: the rows compared on the host once, not every step
            check_x1_together(p1, x1, f"the coupling ({type(coupling).__name__})")
    return p0, p1


_CHECKED: weakref.WeakSet = weakref.WeakSet()


def _checked(coupling: Coupling) -> bool:
    """Whether ``coupling``'s x1 was checked already (this call marks it)."""
    try:
        if coupling in _CHECKED:
            return True
        _CHECKED.add(coupling)
    except TypeError:  # not weakly referable (__slots__): checked every time
        pass
    return False


def _entries(state: State) -> dict[str, Tensor]:
    """Every batch tensor of a state, nested masks included (``masks.bonds``)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if isinstance(v, Tensor) and v.dim() >= 1:
            out[k] = v
        elif isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, Tensor) and vv.dim() >= 1})
    return out


def _rows(v: Tensor) -> list[tuple]:
    """The rows of ``v`` as tuples of floats (NaN as a number: NaN != NaN would fail any comparison)."""
    flat = torch.nan_to_num(v.detach().reshape(v.shape[0], -1).double().cpu(), nan=-1.25e300)
    return [tuple(r) for r in flat.tolist()]


def check_x1_together(p1: State, x1: State, who: str) -> None:
    """A :class:`ContractError` unless ``p1`` is ``x1`` with one permutation of its rows (none at all
    included) applied to every entry, its ``mask`` and ``cond`` too: a coupling that reorders the data
    but not its labels would train on wrong labels without a word (docs/plugins.md)."""
    from fmkit.errors import ContractError

    from fmkit.flow.state import X0

    given = {k: v for k, v in _entries(x1).items() if k.split(".")[0] != X0}  # stored pairs' x0: taken out
    got = _entries(p1)
    fix = "keep x1 as it was given and re-order x0 only (or apply one permutation to every entry of x1)"
    for k in given:
        if k not in got or got[k].shape != given[k].shape:
            raise ContractError(f"{who} dropped or reshaped x1's {k!r}", where=who, fix=fix)
        if sorted(_rows(got[k])) != sorted(_rows(given[k])):
            raise ContractError(f"{who} changed the values of x1's {k!r} (its rows are not the given ones)",
                                where=who, fix=fix)
    flowing = fields(x1)
    keys = [k for k in given if k in flowing] + [k for k in given if k not in flowing]  # the data's first
    if len(keys) < 2:
        return
    cols = {k: (_rows(given[k]), _rows(got[k])) for k in keys}
    first = keys[0]
    for k in keys[1:]:
        if sorted(zip(cols[first][0], cols[k][0])) != sorted(zip(cols[first][1], cols[k][1])):
            raise ContractError(f"{who} re-ordered x1 but not its {k!r} with it: {k!r} no longer belongs to the "
                                f"rows of {first!r} (wrong labels or masks for the data)", where=who, fix=fix)
