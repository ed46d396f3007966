"""The math of fmkit.flow.likelihood: the instantaneous change of variables against a flow with a
closed-form density, Hutchinson's estimator against the exact divergence, bits/dim and masks.

A linear field v(x, t) = A x carries x0 ~ N(0, I) to x_t = expm(tA) x0, so p_1 = N(0, M M^T) with
M = expm(A): a closed-form density for every check below.
"""

from __future__ import annotations

import math

import pytest
import torch
from fmkit.flow.likelihood import divergence_exact, divergence_hutchinson, log_likelihood
from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver
from fmkit.flow.sources import GaussianSource, StateSource
from scipy.linalg import expm

D = torch.float64
A3 = torch.tensor([[-0.4, 1.2, 0.3], [-0.5, 0.2, 0.8], [0.6, -0.1, -0.3]], dtype=D)
TIGHT = AdaptiveSolver("dopri5", rtol=1e-10, atol=1e-10)
SRC = StateSource(GaussianSource())


def linear_field(A):
    def v(s, t):
        return {"x": s["x"] @ A.T}

    return v


def analytic_logp(x, A):
    """log N(x; 0, M M^T), M = expm(A), for x [..., d]."""
    M = torch.as_tensor(expm(A.numpy()))
    dist = torch.distributions.MultivariateNormal(torch.zeros(A.shape[0], dtype=D), covariance_matrix=M @ M.T)
    return dist.log_prob(x)


def test_exact_divergence_matches_analytic_density():
    x1 = torch.randn(16, 3, dtype=D) * 1.5
    res = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT, estimator="exact")
    expect = analytic_logp(x1, A3)
    torch.testing.assert_close(res.log_prob, expect, rtol=0, atol=1e-3)
    assert (res.log_prob - expect).abs().max().item() < 1e-7  # in fact much tighter
    # the flow's source point is the pre-image x0 = expm(-A) x1
    torch.testing.assert_close(res.x0["x"], x1 @ torch.as_tensor(expm(-A3.numpy())).T, rtol=0, atol=1e-8)
    # change of variables: log p1 = log p0(x0) - tr(A) (the log-det of expm(A) is tr A)
    torch.testing.assert_close(res.log_prob, SRC.log_prob(res.x0) - torch.trace(A3), rtol=0, atol=1e-8)
    assert res.nfe > 0


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_a_field_that_ignores_x_has_zero_divergence(estimator):
    """v(x, t) = c(t) moves every point alike: log p1(x1) = log p0(x1 - int c). autograd used to refuse
    the output (no grad_fn)."""
    x1 = torch.randn(6, 2, dtype=D)
    res = log_likelihood(lambda x, t: torch.ones_like(x) * t, x1, GaussianSource(), TIGHT, estimator=estimator)
    torch.testing.assert_close(res.x0, x1 - 0.5, rtol=0, atol=1e-8)  # int_0^1 t dt = 1/2
    torch.testing.assert_close(res.log_prob, SRC.log_prob({"x": x1 - 0.5}), rtol=0, atol=1e-8)


def test_bare_tensors_give_the_same_likelihood():
    """A bare x1, a tensor velocity and a per-field source (no StateSource) give the same answer."""
    x1 = torch.randn(8, 3, dtype=D)
    ref = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT)
    bare = log_likelihood(lambda x, t: x @ A3.T, x1, GaussianSource(), TIGHT)
    torch.testing.assert_close(bare.log_prob, ref.log_prob, rtol=0, atol=0)
    assert isinstance(bare.x0, torch.Tensor)
    torch.testing.assert_close(bare.x0, ref.x0["x"], rtol=0, atol=0)


def test_exact_divergence_with_time_dependent_nonlinear_field():
    """A field with a known Jacobian trace: v(x, t) = t tanh(x) W, div = t sum_i W_ii sech^2(x_i)."""
    W = torch.tensor([[0.5, -1.0], [0.3, 0.2]], dtype=D)
    x = torch.randn(5, 2, dtype=D).requires_grad_(True)
    t = torch.tensor(0.7, dtype=D)
    out = {"x": t * torch.tanh(x) @ W}
    div = divergence_exact(out, {"x": x})
    expect = t * (torch.diagonal(W)[None] / torch.cosh(x.detach()) ** 2).sum(1)
    torch.testing.assert_close(div, expect)


def test_hutchinson_probe_is_unbiased_for_a_fixed_jacobian():
    """Per probe, eps^T A eps; its mean is tr A and its variance is sum_{i<j} (A_ij + A_ji)^2 for
    Rademacher probes and 2 ||(A + A^T)/2||_F^2 for Gaussian ones."""
    n = 4000
    x = torch.randn(n, 3, dtype=D).requires_grad_(True)
    S = 0.5 * (A3 + A3.T)
    var_r = sum((A3[i, j] + A3[j, i]) ** 2 for i in range(3) for j in range(i + 1, 3)).item()
    var_g = 2 * (S**2).sum().item()
    for probes, var in ((torch.randint(0, 2, (n, 3)).to(D) * 2 - 1, var_r), (torch.randn(n, 3, dtype=D), var_g)):
        est = divergence_hutchinson({"x": x @ A3.T}, {"x": x}, {"x": probes})
        torch.testing.assert_close(est, ((probes @ A3.T) * probes).sum(1))
        se = math.sqrt(var / n)
        assert abs(est.mean().item() - torch.trace(A3).item()) < 4 * se
        assert est.var().item() == pytest.approx(var, rel=0.15)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_agrees_within_standard_error(probe):
    n = 1000
    x1 = torch.randn(n, 3, dtype=D)
    solver = FixedStepSolver("rk4", 12)  # same trajectory for both estimators: differences are probe noise
    exact = log_likelihood(linear_field(A3), {"x": x1}, SRC, solver, estimator="exact")
    hutch = log_likelihood(linear_field(A3), {"x": x1}, SRC, solver, estimator="hutchinson", probe=probe)
    diff = hutch.log_prob - exact.log_prob
    se = diff.std().item() / math.sqrt(n)
    assert se > 0 and diff.std().item() > 0.1, "each example must draw its own probe"
    assert abs(diff.mean().item()) < 4 * se, (diff.mean().item(), se)
    # and the exact solve itself is close to the analytic density already with rk4 x 12
    torch.testing.assert_close(exact.log_prob, analytic_logp(x1, A3), rtol=0, atol=1e-4)


def test_hutchinson_agrees_with_exact_on_a_nonlinear_network():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def v(s, t):
        x = s["x"]
        return {"x": net(torch.cat([x, t.expand(x.shape[0], 1)], 1))}

    n = 1000
    x1 = torch.randn(n, 2, dtype=D)
    solver = FixedStepSolver("midpoint", 8)
    exact = log_likelihood(v, {"x": x1}, SRC, solver, estimator="exact")
    for probe in ("rademacher", "gaussian"):
        hutch = log_likelihood(v, {"x": x1}, SRC, solver, estimator="hutchinson", probe=probe)
        diff = hutch.log_prob - exact.log_prob
        se = diff.std().item() / math.sqrt(n)
        assert se > 0 and abs(diff.mean().item()) < 4 * se, (probe, diff.mean().item(), se)


def test_bits_per_dim_formula():
    x1 = torch.randn(8, 3, dtype=D)
    res = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT)
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (3 * math.log(2)))
    off = 3 * math.log(256.0)
    res2 = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT, dequantization_offset=off)
    torch.testing.assert_close(res2.bits_per_dim, (-res.log_prob + off) / (3 * math.log(2)))
    # the NLL in bits/dim of N(0, I) data under the identity flow is the Gaussian entropy rate
    z = torch.zeros_like(A3)
    res0 = log_likelihood(linear_field(z), {"x": torch.zeros(1, 3, dtype=D)}, SRC, TIGHT)
    assert res0.bits_per_dim.item() == pytest.approx(0.5 * math.log2(2 * math.pi))


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_masked_fields_count_only_real_dims(estimator):
    """A padded set of 2-D particles, each moved by the same linear field (which, like any field that
    ignores the mask, is non-zero in its Jacobian at padded entries): the density is a product over the
    real particles only, and bits/dim divide by 2 x (number of real particles). A's off-diagonal part is
    antisymmetric, so Rademacher probes give eps^T A eps = tr A exactly and Hutchinson is exact too."""
    A2 = torch.tensor([[-0.3, 0.9], [-0.9, 0.1]], dtype=D)
    B, N = 6, 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0]],
                        dtype=torch.bool)
    pos = torch.randn(B, N, 2, dtype=D) * mask[..., None]
    x1 = {"pos": pos, "mask": mask}
    res = log_likelihood(lambda s, t: {"pos": s["pos"] @ A2.T}, x1, SRC, TIGHT, estimator=estimator,
                         probe="rademacher")
    expect = (analytic_logp(pos, A2) * mask).sum(1)
    torch.testing.assert_close(res.log_prob, expect, rtol=0, atol=1e-6)
    dims = 2 * mask.sum(1).to(D)
    torch.testing.assert_close(res.bits_per_dim, -res.log_prob / (dims * math.log(2)))
    assert torch.equal(res.x0["mask"], mask)


def test_likelihood_rejects_categorical_fields_and_unknown_estimators():
    with pytest.raises(ValueError, match="categorical"):
        log_likelihood(lambda s, t: s, {"x": torch.zeros(2, 3, dtype=torch.long)}, SRC, TIGHT)
    with pytest.raises(ValueError, match="estimator"):
        log_likelihood(lambda s, t: s, {"x": torch.zeros(2, 3)}, SRC, TIGHT, estimator="skilling")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(lambda s, t: s, {"x": torch.zeros(2, 3)}, SRC, TIGHT, estimator="hutchinson", probe="x")


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # torch, on s["x"] with a tensor s
def test_a_velocity_of_the_wrong_kind_is_named():
    """A bare x1 with a velocity of states, or a state x1 with a velocity of tensors, or a wrong shape:
    a ModelError that says which, not a TypeError from inside the solve."""
    from fmkit.errors import ModelError

    x1 = torch.randn(4, 3, dtype=D)
    with pytest.raises(ModelError, match=r"bare tensor.*called as velocity\(x: Tensor, t\).*TypeError") as err:
        log_likelihood(linear_field(A3), x1, GaussianSource(), TIGHT)
    assert "pass x1 as a state" in str(err.value) and isinstance(err.value.__cause__, TypeError)
    with pytest.raises(ModelError, match="bare tensor.*returned a dict"):
        log_likelihood(lambda x, t: {"x": x @ A3.T}, x1, GaussianSource(), TIGHT)
    with pytest.raises(ModelError, match="returned a Tensor, not a dict"):
        log_likelihood(lambda s, t: s["x"], {"x": x1}, SRC, TIGHT)
    with pytest.raises(ModelError, match=r"shape \(4, 2\)"):
        log_likelihood(lambda x, t: x[:, :2], x1, GaussianSource(), TIGHT)


def test_auto_estimator_is_exact_for_small_dims_and_hutchinson_above(monkeypatch):
    """'auto' (the CLI's default): the exact divergence up to EXACT_MAX_DIMS dims per example, else
    Hutchinson's; each choice gives what that estimator gives by name."""
    import fmkit.flow.likelihood as lk

    x1 = torch.randn(8, 3, dtype=D)
    got = {}
    for limit, name in ((3, "exact"), (2, "hutchinson")):
        monkeypatch.setattr(lk, "EXACT_MAX_DIMS", limit)
        torch.manual_seed(0)
        got[name] = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT, estimator="auto").log_prob
        torch.manual_seed(0)
        named = log_likelihood(linear_field(A3), {"x": x1}, SRC, TIGHT, estimator=name)
        torch.testing.assert_close(got[name], named.log_prob, rtol=0, atol=0)
    torch.testing.assert_close(got["exact"], analytic_logp(x1, A3), rtol=0, atol=1e-6)
    assert (got["hutchinson"] - got["exact"]).abs().max() > 1e-3  # one probe per solve: a noisy estimate
