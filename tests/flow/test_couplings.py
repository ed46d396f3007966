"""The math of fmkit.flow.couplings: exact minibatch OT is the brute-force optimum, masks pair only alike
examples, Sinkhorn matches POT and tends to the exact optimum as epsilon shrinks, and every coupling
keeps the data side (with its cond and mask) in place."""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pytest
import torch
from fmkit.flow import couplings
from fmkit.flow.couplings import (
    ExactOTCoupling,
    IndependentCoupling,
    SinkhornCoupling,
    assignment,
    pairwise_cost,
    sinkhorn_plan,
)

D = torch.float64


def _cost(a, b):
    return ((a - b) ** 2).reshape(a.shape[0], -1).sum(1)


def _brute_force_min(C):
    n = C.shape[0]
    perms = np.array(list(itertools.permutations(range(n))))
    return C[perms, np.arange(n)].sum(1).min()


def _tagged(x0, x1, extra1=None):
    """States with an integer ``id`` field (ignored by the cost) that reveals the pairing."""
    n = x0.shape[0]
    s0 = {"x": x0, "id": torch.arange(n)}
    s1 = {"x": x1, "id": torch.arange(n), **(extra1 or {})}
    return s0, s1


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7])
def test_exact_ot_is_the_brute_force_optimum(n):
    for rep in range(3):
        x0, x1 = torch.randn(n, 2, 3, dtype=D), torch.randn(n, 2, 3, dtype=D) + rep
        s0, s1 = _tagged(x0, x1)
        C = pairwise_cost(s0, s1).numpy()
        np.testing.assert_allclose(C, ((x0.reshape(n, 1, -1) - x1.reshape(1, n, -1)) ** 2).sum(-1).numpy(),
                                   rtol=1e-12, atol=1e-12)
        r0, r1 = ExactOTCoupling().pair(s0, s1)
        assert r1 is s1
        assert sorted(r0["id"].tolist()) == list(range(n)), "exact OT re-orders x0: a permutation"
        torch.testing.assert_close(r0["x"], x0[r0["id"]])  # every field of x0 moves together
        total = _cost(r0["x"], x1).sum().item()
        assert total == pytest.approx(_brute_force_min(C), rel=1e-12)
        assert total <= _cost(x0, x1).sum().item() + 1e-12  # never worse than the independent pairing


def test_exact_ot_strictly_improves_a_bad_pairing():
    x1 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=D)
    x0 = x1[[2, 0, 1]] + 0.01  # each source point sits next to another target
    r0, r1 = ExactOTCoupling()(x0, x1)
    assert isinstance(r0, torch.Tensor) and r1 is x1  # bare tensors in, bare tensors out
    torch.testing.assert_close(r0, x1 + 0.01)


@pytest.mark.parametrize("n", [256, 300])
def test_large_batches_use_the_network_simplex_and_stay_optimal(n, monkeypatch):
    """From EMD_FROM rows the assignment is POT's emd: a permutation with scipy's optimal cost, on
    well-mixed data and on clustered data (the case where the two solvers' times diverge)."""
    g = torch.Generator().manual_seed(n)
    calls = []
    real_emd = ot.emd
    monkeypatch.setattr(ot, "emd", lambda *a, **k: calls.append(1) or real_emd(*a, **k))
    for spread in (1.0, 0.05):
        centres = torch.randn(8, 2, generator=g, dtype=D) * 5
        x0 = torch.randn(n, 2, generator=g, dtype=D)
        x1 = centres[torch.randint(0, 8, (n,), generator=g)] + spread * torch.randn(n, 2, generator=g, dtype=D)
        C = pairwise_cost({"x": x0}, {"x": x1}).numpy()
        perm = assignment(C)
        assert sorted(perm.tolist()) == list(range(n))
        assert C[perm, np.arange(n)].sum() == pytest.approx(_exact_value(C), rel=1e-12)
    assert len(calls) == 2, "emd is used from EMD_FROM rows on"


def test_assignment_falls_back_to_scipy_when_emd_fails(monkeypatch):
    """A plan that is not a permutation (or an emd warning) never reaches the user."""
    n = couplings.EMD_FROM
    C = pairwise_cost({"x": torch.randn(n, 2, dtype=D)}, {"x": torch.randn(n, 2, dtype=D)}).numpy()
    monkeypatch.setattr(ot, "emd", lambda a, b, M, **k: (np.full(M.shape, 1.0 / n**2), {"warning": None}))
    perm = assignment(C)
    assert sorted(perm.tolist()) == list(range(n))
    assert C[perm, np.arange(n)].sum() == pytest.approx(_exact_value(C), rel=1e-12)
    monkeypatch.setattr(ot, "emd", lambda a, b, M, **k: (np.eye(n) / n, {"warning": "numItermax reached"}))
    assert C[assignment(C), np.arange(n)].sum() == pytest.approx(_exact_value(C), rel=1e-12)


def test_exact_ot_with_masks_pairs_only_same_masks():
    n, N = 12, 4
    patterns = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    mask = patterns[torch.arange(n) % 3]
    x1 = torch.randn(n, N, 2, dtype=D) * mask[..., None]
    x0 = torch.randn(n, N, 2, dtype=D) * mask[..., None]
    cond = torch.arange(n) * 10
    s0 = {"x": x0, "id": torch.arange(n), "mask": mask, "cond": cond}
    s1 = {"x": x1, "id": torch.arange(n), "mask": mask, "cond": cond}
    # a pairing that crosses masks would be far cheaper, so the constraint must bind
    s0["x"] = x0 * 0.01
    s1["x"] = x1 * 0.01
    s1["x"][mask.sum(1) == 2] += 5.0 * mask[mask.sum(1) == 2][..., None]
    r0, r1 = ExactOTCoupling().pair(s0, s1)
    assert r1 is s1
    src = r0["id"]
    assert torch.equal(mask[src], mask), "a data example must be paired with a source of its own mask"
    assert torch.equal(r0["mask"], mask)
    # within each mask group the pairing is the brute-force optimum
    total = _cost(r0["x"] * mask[..., None], s1["x"]).sum().item()
    C = pairwise_cost(s0, s1).numpy()
    best = 0.0
    for p in patterns:
        g = np.where((mask == p).all(1).numpy())[0]
        best += _brute_force_min(C[np.ix_(g, g)])
    assert total == pytest.approx(best, rel=1e-10)


def test_independent_coupling_is_the_identity():
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    r0, r1 = IndependentCoupling()(x0, x1)
    assert r0 is x0 and r1 is x1


# ---------------------------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------------------------
def _normalised(n=16, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, d, generator=g, dtype=D), torch.randn(n, d, generator=g, dtype=D) + 1.0
    cost = pairwise_cost({"x": x0}, {"x": x1})
    return cost, cost / cost.mean()


@pytest.mark.parametrize("eps", [1.0, 0.1, 0.05])
def test_sinkhorn_plan_matches_pot(eps):
    cost, c = _normalised()
    n = c.shape[0]
    P = sinkhorn_plan(cost, eps, iters=5000, tol=1e-13)
    a = np.full(n, 1.0 / n)
    Q = ot.bregman.sinkhorn_log(a, a, c.numpy(), reg=eps, numItermax=20000, stopThr=1e-14)
    np.testing.assert_allclose(P.numpy(), Q, rtol=0, atol=1e-5 / n)
    # uniform marginals
    torch.testing.assert_close(P.sum(0), torch.full((n,), 1.0 / n, dtype=D), rtol=0, atol=1e-9)
    torch.testing.assert_close(P.sum(1), torch.full((n,), 1.0 / n, dtype=D), rtol=0, atol=1e-8)
    assert (P >= 0).all()


@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_sinkhorn_scaling_and_log_forms_give_the_same_plan(eps):
    """The fast scaling form (mat-vecs) and the log-domain form are the same iterates; where
    exp(-C/eps) would underflow (tiny eps) the log form takes over and still matches POT."""
    _, c = _normalised(n=40, seed=3)
    P1 = couplings._sinkhorn_scaling(c, eps, 500, 1e-12)
    P2 = couplings._sinkhorn_log(c, eps, 500, 1e-12)
    torch.testing.assert_close(P1, P2, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="at least one iteration"):
        sinkhorn_plan(c, eps, iters=0)
    eps = float(c.max()) / 620  # just beyond the scaling form's range (C/eps < 600): the log form
    n = c.shape[0]
    P = sinkhorn_plan(c, eps, iters=3000, tol=1e-10)
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P.sum(0), torch.full((n,), 1.0 / n, dtype=D), rtol=0, atol=1e-9)
    # rows converge slowly at tiny epsilon: within 0.1% of their mass after 3000 iterations
    torch.testing.assert_close(P.sum(1), torch.full((n,), 1.0 / n, dtype=D), rtol=0, atol=1e-3 / n)
    exact = _exact_value(c.numpy()) / n
    assert exact - 1e-9 <= (P * c).sum().item() < 1.02 * exact  # nearly the exact optimum


def test_sinkhorn_is_scale_invariant():
    """epsilon is relative to the mean cost: scaling the data leaves the plan unchanged."""
    cost, _ = _normalised()
    torch.testing.assert_close(sinkhorn_plan(cost, 0.1, 2000), sinkhorn_plan(cost * 37.0, 0.1, 2000))


def test_sinkhorn_cost_decreases_to_the_exact_optimum():
    cost, c = _normalised(n=24, seed=1)
    n = c.shape[0]
    exact = _exact_value(c.numpy()) / n  # the OT value between the uniform empirical measures
    values = []
    for eps in (1.0, 0.1, 0.01):
        P = sinkhorn_plan(cost, eps, iters=3000, tol=1e-9)
        values.append((P * c).sum().item())
    assert all(v >= exact - 1e-9 for v in values), (values, exact)
    assert all(v2 < v1 for v1, v2 in itertools.pairwise(values)), values
    gaps = [v - exact for v in values]
    assert gaps[0] > 0.5 * exact  # strongly regularised: far from optimal
    assert gaps[-1] < 2e-2 * exact, (gaps, exact)


def _exact_value(C):
    from scipy.optimize import linear_sum_assignment

    r, col = linear_sum_assignment(C)
    return C[r, col].sum()


def test_sinkhorn_coupling_samples_partners_from_the_plan_columns():
    """4 source and 4 data points, each repeated r times: the batch's plan is the small plan spread
    over blocks, so each x1 of type b draws a partner of type a with probability n P[a, b]."""
    k, r = 4, 150
    x0, x1 = torch.randn(k, 2, dtype=D), torch.randn(k, 2, dtype=D)
    P = sinkhorn_plan(pairwise_cost({"x": x0}, {"x": x1}), 0.3, 1000)
    expect = (P / P.sum(0, keepdim=True)).T  # row b: distribution of the partner type of an x1 of type b
    assert (expect - (P / P.sum(1, keepdim=True))).abs().max() > 0.1  # columns differ from rows here
    typ = torch.arange(k).repeat_interleave(r)
    cond, mask = torch.arange(k * r), torch.ones(k * r, dtype=torch.bool)
    s1 = {"x": x1[typ], "cond": cond, "mask": mask}
    coupling = SinkhornCoupling(epsilon=0.3, iters=1000)
    counts = torch.zeros(k, k, dtype=D)
    calls = 8
    for _ in range(calls):
        s0 = {"x": x0[typ], "id": torch.arange(k * r), "cond": cond, "mask": mask}
        r0, r1 = coupling.pair(s0, s1)
        assert r1 is s1 and r1["cond"] is cond and r1["mask"] is mask
        torch.testing.assert_close(r0["x"], s0["x"][r0["id"]])  # x0 rows are whole rows of the source batch
        counts.index_put_((typ, typ[r0["id"]]), torch.ones(k * r, dtype=D), accumulate=True)
    draws = calls * r
    freq = counts / draws
    se = torch.sqrt(expect * (1 - expect) / draws)
    assert ((freq - expect).abs() <= 4 * se + 1e-3).all(), (freq, expect)


def test_sinkhorn_coupling_with_small_epsilon_is_the_exact_pairing_and_respects_masks():
    n, N = 9, 3
    patterns = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    mask = patterns[torch.arange(n) % 3]
    x0 = torch.randn(n, N, 2, dtype=D) * mask[..., None]
    x1 = torch.randn(n, N, 2, dtype=D) * mask[..., None] * 0.01  # crossing masks would be cheap
    s0 = {"x": x0, "id": torch.arange(n), "mask": mask}
    s1 = {"x": x1, "id": torch.arange(n), "mask": mask}
    for _ in range(20):
        r0, r1 = SinkhornCoupling(epsilon=0.05, iters=300).pair(s0, s1)
        assert torch.equal(mask[r0["id"]], mask)
        assert r1 is s1
    # far-apart clusters: the entropic plan concentrates on the optimal permutation
    x1 = torch.randn(6, 2, dtype=D) * 0.1 + torch.arange(6, dtype=D)[:, None] * 10
    x0 = x1[torch.randperm(6)] + 0.05 * torch.randn(6, 2, dtype=D)
    exact0, _ = ExactOTCoupling()(x0, x1)
    for _ in range(10):
        r0, _ = SinkhornCoupling(epsilon=0.01, iters=500)(x0, x1)
        assert torch.equal(r0, exact0)
