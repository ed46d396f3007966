"""The math of fmkit.flow.solvers: orders of accuracy, adaptive tolerance, NFE accounting, trajectories,
reversibility, and the CTMC jump step for categorical fields."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from fmkit.errors import ModelError
from fmkit.flow.paths import DiscretePath
from fmkit.flow.solvers import ORDERS, AdaptiveSolver, FixedStepSolver
from scipy.linalg import expm

D = torch.float64
# rotation + decay: x(t) = expm(t A) x(0)
A = torch.tensor([[-0.5, -2.0], [2.0, -0.5]], dtype=D)
X0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -1.1]], dtype=D)
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def linear(x, t):
    return x @ A.T


def linear_exact(t1, t0=0.0):
    return X0 @ torch.as_tensor(expm((t1 - t0) * A.numpy())).T


def forced(x, t):
    """dx/dt = -x + sin t, non-autonomous: exposes wrong stage times c_s."""
    return -x + torch.sin(t)


def forced_exact(x0, t):
    return (x0 + 0.5) * math.exp(-t) + 0.5 * (math.sin(t) - math.cos(t))


def _slope(steps, errors):
    return np.polyfit(np.log(1.0 / np.asarray(steps, float)), np.log(np.asarray(errors)), 1)[0]


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_order_of_accuracy(method):
    steps = [8, 16, 32, 64]
    errs_lin, errs_forced = [], []
    x0f = X0.clone()
    for n in steps:
        solver = FixedStepSolver(method, n)
        sol = solver.solve(linear, X0, 0.0, 1.0)
        errs_lin.append((sol.x - linear_exact(1.0)).abs().max().item())
        sol = solver.solve(forced, x0f, 0.0, 2.0)
        errs_forced.append((sol.x - forced_exact(x0f, 2.0)).abs().max().item())
    for errs in (errs_lin, errs_forced):
        slope = _slope(steps, errs)
        assert abs(slope - ORDERS[method]) < 0.3, (method, slope, errs)
        assert all(e2 < e1 for e1, e2 in itertools.pairwise(errs))


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_nfe_is_steps_times_stages(method):
    calls = []

    def f(x, t):
        calls.append(float(t))
        return linear(x, t)

    for n in (1, 7, 20):
        calls.clear()
        sol = FixedStepSolver(method, n).solve(f, X0)
        assert sol.nfe == n * STAGES[method] == len(calls)
    # stage times of one step are t + c_s h
    calls.clear()
    FixedStepSolver(method, 1).solve(f, X0, 0.0, 0.5)
    expect = {"euler": [0.0], "midpoint": [0.0, 0.25], "heun": [0.0, 0.5], "rk4": [0.0, 0.25, 0.25, 0.5]}
    assert calls == pytest.approx(expect[method])


def test_explicit_grid_is_used():
    calls = []

    def f(x, t):
        calls.append(float(t))
        return linear(x, t)

    sol = FixedStepSolver("euler", grid=[0.0, 0.1, 0.5, 1.0]).solve(f, X0, 0.0, 2.0, trajectory=True)
    assert calls == pytest.approx([0.0, 0.2, 1.0])
    assert sol.times.tolist() == pytest.approx([0.0, 0.2, 1.0, 2.0])


def test_trajectory_bare_tensors_and_states():
    n = 50
    sol = FixedStepSolver("rk4", n).solve(linear, X0, 0.0, 1.0, trajectory=True)
    assert isinstance(sol.x, torch.Tensor) and sol.x.dtype == D
    assert len(sol.trajectory) == n + 1 and all(isinstance(s, torch.Tensor) for s in sol.trajectory)
    torch.testing.assert_close(sol.times, torch.linspace(0, 1, n + 1, dtype=D))
    assert torch.equal(sol.trajectory[0], X0) and torch.equal(sol.trajectory[-1], sol.x)
    for tk, xk in zip(sol.times.tolist(), sol.trajectory):
        torch.testing.assert_close(xk, linear_exact(tk), rtol=0, atol=1e-7)
    # no trajectory unless asked
    sol = FixedStepSolver("rk4", n).solve(linear, X0)
    assert sol.trajectory == [] and sol.times is None
    # a state of two fields, each with its own dynamics, integrated together
    sol = FixedStepSolver("rk4", n).solve(lambda s, t: {"a": linear(s["a"], t), "b": forced(s["b"], t)},
                                          {"a": X0, "b": X0[:, :1]}, 0.0, 1.0)
    assert isinstance(sol.x, dict) and set(sol.x) == {"a", "b"}
    torch.testing.assert_close(sol.x["a"], linear_exact(1.0), rtol=0, atol=1e-7)
    torch.testing.assert_close(sol.x["b"], forced_exact(X0[:, :1], 1.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("method", ["midpoint", "rk4"])
def test_backward_integration_inverts_forward(method):
    fw = FixedStepSolver(method, 200).solve(forced, X0, 0.0, 1.0)
    bw = FixedStepSolver(method, 200).solve(forced, fw.x, 1.0, 0.0)
    tol = 1e-9 if method == "rk4" else 1e-4
    torch.testing.assert_close(bw.x, X0, rtol=0, atol=tol)
    # and backwards alone follows the exact solution back in time
    x1 = forced_exact(X0, 1.0)
    bw = FixedStepSolver("rk4", 100).solve(forced, x1, 1.0, 0.0)
    torch.testing.assert_close(bw.x, X0, rtol=0, atol=1e-8)
    ad = AdaptiveSolver("dopri5", rtol=1e-10, atol=1e-10).solve(forced, x1, 1.0, 0.0)
    torch.testing.assert_close(ad.x, X0, rtol=0, atol=1e-8)


def test_dopri5_meets_tolerance_and_nfe_grows_as_rtol_shrinks():
    exact = linear_exact(3.0)
    nfes = []
    for rtol in (1e-3, 1e-6, 1e-9):
        sol = AdaptiveSolver("dopri5", rtol=rtol, atol=rtol * 1e-2).solve(linear, X0, 0.0, 3.0)
        err = (sol.x - exact).abs().max().item()
        # the tolerance is local (per step, relative to the state then); the decaying solution is at most
        # max|X0| along the way, and a factor of 10 covers the accumulation over the steps
        bound = 10 * (rtol * X0.abs().max().item() + rtol * 1e-2)
        assert err <= bound, (rtol, err, bound)
        assert err > bound * 1e-6  # the solve is genuinely tolerance-limited, not exact by luck
        nfes.append(sol.nfe)
    assert nfes[0] < nfes[1] < nfes[2], nfes
    assert nfes[0] >= 6  # at least one dopri5 step (6 fresh stages) was taken and counted


def test_adaptive_nfe_counts_every_call_and_trajectory():
    calls = []

    def f(x, t):
        calls.append(1)
        return forced(x, t)

    sol = AdaptiveSolver("dopri5", rtol=1e-8, atol=1e-8, eval_points=5).solve(f, X0, 0.0, 2.0, trajectory=True)
    assert sol.nfe == len(calls)
    assert len(sol.trajectory) == 5
    for tk, xk in zip(sol.times.tolist(), sol.trajectory):
        torch.testing.assert_close(xk, forced_exact(X0, tk), rtol=0, atol=1e-6)


def test_adaptive_solver_refuses_categorical_fields():
    from fmkit.errors import FmkitError

    state = {"x": torch.randn(4, 2, dtype=D), "atoms": torch.zeros(4, 3, dtype=torch.long)}
    with pytest.raises(FmkitError, match=r"continuous fields only.*\['atoms'\] are categorical") as err:
        AdaptiveSolver().solve(lambda s, t: s, state)
    assert "fixed-step solver" in err.value.fix


@pytest.mark.parametrize("method", ["midpoint", "heun", "rk4"])
def test_categorical_fields_jump_with_the_rate_at_the_step_start(method):
    """Every method moves class indices by a CTMC Euler jump with the rate at (x_t, t): the stages at
    later times, which see the classes held at the step's start, must not enter. The rate below is
    toward class 0 at the grid times and toward class 2 anywhere else, so any later stage's rate would
    show up as 2s; the result must be Euler's, draw for draw."""
    steps = 5
    grid = torch.linspace(0, 1, steps + 1, dtype=D)

    def velocity(s, t):
        on_grid = bool(torch.isclose(grid, t.to(D), atol=1e-9).any())
        rate = torch.zeros(*s["atoms"].shape, 3, dtype=D)
        rate[..., 0 if on_grid else 2] = 50.0
        return {"x": -s["x"], "atoms": rate}

    state = {"x": torch.randn(64, 2, dtype=D), "atoms": torch.ones(64, 7, dtype=torch.long)}
    torch.manual_seed(0)
    ref = FixedStepSolver("euler", steps).solve(velocity, state).x["atoms"]
    torch.manual_seed(0)
    got = FixedStepSolver(method, steps).solve(velocity, state).x["atoms"]
    assert torch.equal(got, ref)
    assert (ref == 0).all() and not (got == 2).any()


@pytest.mark.parametrize("solver", [FixedStepSolver("euler", 4), FixedStepSolver("rk4", 4), AdaptiveSolver()])
def test_velocity_of_the_wrong_shape_is_refused(solver):
    """A [B,1] velocity for a [B,2] state would broadcast into every coordinate without an error."""
    x0 = torch.randn(5, 2, dtype=D)
    with pytest.raises(ModelError, match=r"velocity function's output for field 'x' has shape \(5, 1\)"):
        solver.solve(lambda x, t: x[:, :1], x0)
    with pytest.raises(ModelError, match="no output for field 'y'"):
        solver.solve(lambda s, t: {"x": s["x"]}, {"x": x0, "y": x0.clone()})


def test_a_solver_subclass_gets_the_same_checks():
    """The shape check wraps the velocity before ``_solve``: a third-party solver gets it too, and a
    ``_solve`` that returns something other than a Solution is named."""
    from fmkit.errors import ContractError
    from fmkit.flow.solvers import Solution, Solver

    class Heun3(Solver):  # a third-party method: two Euler half-steps
        def _solve(self, velocity, x0, t0, t1, *, trajectory):
            x, h = dict(x0), (t1 - t0) / 2
            for k in range(2):
                v = velocity(x, torch.tensor(t0 + k * h, dtype=D))
                x = {n: x[n] + h * v[n] for n in x}
            return Solution(x, 2)

    with pytest.raises(ModelError, match=r"output for field 'x' has shape \(5, 1\)"):
        Heun3().solve(lambda x, t: x[:, :1], torch.randn(5, 2, dtype=D))
    assert Heun3().solve(lambda x, t: -x, torch.ones(3, 2, dtype=D)).x.shape == (3, 2)

    class Broken(Solver):
        def _solve(self, velocity, x0, t0, t1, *, trajectory):
            return dict(x0)

    with pytest.raises(ContractError, match="Broken._solve returned a dict, not a Solution"):
        Broken().solve(lambda x, t: -x, torch.ones(3, 2, dtype=D))


def test_solver_argument_validation():
    with pytest.raises(ValueError, match="unknown fixed-step method"):
        FixedStepSolver("rk5")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FixedStepSolver("euler", 0)
    with pytest.raises(ValueError, match="unknown adaptive method"):
        AdaptiveSolver("rk4")


# ---------------------------------------------------------------------------------------------
# Categorical fields: CTMC jumps
# ---------------------------------------------------------------------------------------------
def test_certain_jump_reaches_target_class():
    K, target = 5, 3
    x = torch.zeros(64, 4, dtype=torch.long)

    def rate(s, t):  # rate (1/h) (e_target - e_x): one Euler step of size h jumps with probability 1
        xc = s["c"]
        u = torch.nn.functional.one_hot(torch.full_like(xc, target), K) - torch.nn.functional.one_hot(xc, K)
        return {"c": u.to(D) * 4.0, "x": torch.zeros_like(s["x"])}

    for method in ("euler", "heun", "rk4"):
        sol = FixedStepSolver(method, 4).solve(rate, {"c": x, "x": torch.zeros(64, 2, dtype=D)}, 0.0, 1.0)
        assert sol.x["c"].dtype == torch.long
        assert (sol.x["c"] == target).all(), method


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_mask_path_unmasking_follows_kappa(method):
    """With the exact posterior (a point mass on the true token) a CTMC Euler step of size h unmasks
    each token with probability h kappa'/(1-kappa)(t), which every method takes for categorical fields
    (the rate at the step's start). This makes the fraction unmasked at grid time t exactly kappa_t = t
    in expectation; all tokens end on their target at t=1, and a token only ever moves from the mask
    to its target."""
    K, B, N, steps = 7, 8, 500, 10
    path = DiscretePath("mask", 1.0)
    target = torch.randint(0, K, (B, N))
    logits = torch.nn.functional.one_hot(target, K).to(D) * 60.0

    def velocity(s, t):
        return {"c": path.velocity(logits, s["c"], t.reshape(1).expand(B))}

    sol = FixedStepSolver(method, steps).solve(velocity, {"c": torch.full((B, N), K)}, trajectory=True)
    h, masked = 1.0 / steps, 1.0
    for k, (tk, xk) in enumerate(zip(sol.times.tolist(), sol.trajectory)):
        xk = xk["c"]
        assert torch.all((xk == K) | (xk == target)), "a token may only go from mask to its target"
        frac = (xk == target).double().mean().item()
        expect = 1.0 - masked
        assert expect == pytest.approx(tk, abs=1e-6)
        se = math.sqrt(max(expect * (1 - expect), 1e-12) / (B * N))
        assert abs(frac - expect) < 4 * se + 1e-9, (tk, frac, expect)
        masked *= 1.0 - min(1.0, h / max(1.0 - k * h, 1e-6))
    assert torch.equal(sol.x["c"], target)


def test_mask_path_stochasticity_keeps_the_marginals_and_revises_tokens():
    """Detailed-balance noise (Campbell et al. 2024): with the exact posterior, remasking at rate eta
    and the matching extra unmasking leave the fraction unmasked at grid time t equal to kappa_t = t
    in expectation (checked while no jump probability is clipped at 1); tokens do get masked again
    (none would with eta = 0), and every token ends on its target with none left masked at t = 1."""
    K, B, N, steps, eta = 5, 8, 500, 50, 4.0
    path = DiscretePath("mask", 1.0, stochasticity=eta)
    target = torch.randint(0, K, (B, N), generator=torch.Generator().manual_seed(0))
    logits = torch.nn.functional.one_hot(target, K).to(D) * 60.0

    def velocity(s, t, step=None):
        return {"c": path.velocity(logits, s["c"], t.reshape(1).expand(B), step=step)}

    torch.manual_seed(1)
    sol = FixedStepSolver("euler", steps).solve(velocity, {"c": torch.full((B, N), K)}, trajectory=True)
    h, remasked = 1.0 / steps, 0
    times = sol.times.tolist()
    for k in range(1, len(times)):
        tk, xk, prev = times[k], sol.trajectory[k]["c"], sol.trajectory[k - 1]["c"]
        assert torch.all((xk == K) | (xk == target))
        remasked += int(((prev != K) & (xk == K)).sum())
        t_prev = tk - h
        if h * (1 + eta * t_prev) / (1 - t_prev) <= 1.0:  # no unmasking probability clipped
            frac = (xk == target).double().mean().item()
            se = math.sqrt(max(tk * (1 - tk), 1e-12) / (B * N))
            assert abs(frac - tk) < 4 * se + 1e-9, (tk, frac)
    assert remasked > 100
    assert torch.equal(sol.x["c"], target)


def test_stochasticity_needs_the_mask_source():
    with pytest.raises(ValueError, match="mask source"):
        DiscretePath("uniform", 1.0, stochasticity=1.0)
    from fmkit.app.builtin.plugin import DiscreteOptions
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs source: mask"):
        DiscreteOptions(source="uniform", stochasticity=2.0)
    assert DiscreteOptions(source="mask", stochasticity=2.0).stochasticity == 2.0


def test_mask_path_temperature_sharpens_the_draws():
    """With a fixed posterior p = (0.6, 0.4) every token ends drawn from p^(1/T) renormalised:
    (0.6, 0.4) at T = 1, (0.692, 0.308) at T = 0.5."""
    B, N, steps = 4, 5000, 10
    logits = torch.log(torch.tensor([0.6, 0.4], dtype=D)).expand(B, N, 2)
    for temp, want in ((1.0, 0.6), (0.5, 0.36 / 0.52)):
        path = DiscretePath("mask", 1.0, temperature=temp)

        def velocity(s, t, step=None, path=path):
            return {"c": path.velocity(logits, s["c"], t.reshape(1).expand(B), step=step)}

        torch.manual_seed(0)
        x = FixedStepSolver("euler", steps).solve(velocity, {"c": torch.full((B, N), 2)}).x["c"]
        assert (x != 2).all()
        frac = (x == 0).double().mean().item()
        assert abs(frac - want) < 4 * math.sqrt(want * (1 - want) / (B * N)), (temp, frac, want)
    with pytest.raises(ValueError, match="temperature"):
        DiscretePath("mask", 1.0, temperature=0.0)
