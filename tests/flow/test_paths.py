"""The math of fmkit.flow.paths: schedulers, affine paths and their parameterisations, the discrete
mixture path and its CTMC rates, and the composition of per-field paths into a state path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fmkit.errors import ModelError
from fmkit.flow.paths import (
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    DiscretePath,
    PathSample,
    PolynomialScheduler,
    ProbPath,
    StatePath,
    VPScheduler,
)

D = torch.float64

SCHEDULERS = {
    "condot": lambda: CondOTScheduler(0.0),
    "condot_sigma_min": lambda: CondOTScheduler(0.1),
    "vp": lambda: VPScheduler(0.1, 20.0),
    "vp_other": lambda: VPScheduler(0.5, 5.0),
    "cosine": lambda: CosineScheduler(),
    "poly2": lambda: PolynomialScheduler(2.0),
    "poly3.5": lambda: PolynomialScheduler(3.5),
}
# interior times: VP's sigma has a sqrt singularity at t=1, polynomial's derivative at t=0 for n<1
T_INNER = torch.linspace(0.02, 0.98, 49, dtype=D)


# ---------------------------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_derivatives_match_central_differences(name):
    sch = SCHEDULERS[name]()
    h = 1e-6
    _, _, da, ds = sch(T_INNER)
    ap, sp, _, _ = sch(T_INNER + h)
    am, sm, _, _ = sch(T_INNER - h)
    torch.testing.assert_close(da, (ap - am) / (2 * h), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ds, (sp - sm) / (2 * h), rtol=1e-6, atol=1e-7)


def test_condot_boundaries_and_sigma_min():
    a, s, da, ds = CondOTScheduler(0.0)(torch.tensor([0.0, 1.0], dtype=D))
    assert a.tolist() == [0.0, 1.0] and s.tolist() == [1.0, 0.0]
    assert da.tolist() == [1.0, 1.0] and ds.tolist() == [-1.0, -1.0]
    # Lipman et al. 2022 eq. 20: mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t
    a, s, _, ds = CondOTScheduler(0.1)(torch.tensor([0.0, 0.3, 1.0], dtype=D))
    torch.testing.assert_close(a, torch.tensor([0.0, 0.3, 1.0], dtype=D))
    torch.testing.assert_close(s, torch.tensor([1.0, 1.0 - 0.9 * 0.3, 0.1], dtype=D))
    torch.testing.assert_close(ds, torch.full((3,), -0.9, dtype=D))


def test_vp_matches_lipman_eq19_and_preserves_variance():
    bmin, bmax = 0.1, 20.0
    sch = VPScheduler(bmin, bmax)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=D)
    a, s, _, _ = sch(t)

    def T(u):  # integral of beta(s) = bmin + s (bmax - bmin) from 0 to u
        return bmin * u + 0.5 * (bmax - bmin) * u * u

    expect_a = torch.tensor([math.exp(-0.5 * T(1 - v)) for v in t.tolist()], dtype=D)
    torch.testing.assert_close(a, expect_a, rtol=1e-12, atol=0)
    # alpha_1 = 1 (data), sigma_1 = 0 (no noise left); alpha_0 = exp(-T(1)/2) ~ 0.0066 (nearly pure noise)
    assert a[-1].item() == 1.0 and s[-1].item() < 1e-5
    assert a[0].item() < 0.01 and s[0].item() > 0.9999
    ti = T_INNER
    a, s, _, _ = sch(ti)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(ti), rtol=0, atol=1e-12)


def test_cosine_and_polynomial_boundaries():
    t01 = torch.tensor([0.0, 1.0], dtype=D)
    a, s, _, _ = CosineScheduler()(t01)
    torch.testing.assert_close(a, torch.tensor([0.0, 1.0], dtype=D), rtol=0, atol=1e-15)
    torch.testing.assert_close(s, torch.tensor([1.0, 0.0], dtype=D), rtol=0, atol=1e-15)
    a, s, _, _ = CosineScheduler()(T_INNER)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(T_INNER), rtol=0, atol=1e-14)
    for n in (1.0, 2.0, 3.5):
        a, s, _, _ = PolynomialScheduler(n)(t01)
        assert a.tolist() == [0.0, 1.0] and s.tolist() == [1.0, 0.0]
        a, s, _, _ = PolynomialScheduler(n)(torch.tensor([0.5], dtype=D))
        assert a.item() == pytest.approx(0.5**n) and s.item() == pytest.approx(1 - 0.5**n)


# ---------------------------------------------------------------------------------------------
# Affine path
# ---------------------------------------------------------------------------------------------
def _pair(b=6, shape=(3, 2)):
    return torch.randn(b, *shape, dtype=D), torch.randn(b, *shape, dtype=D)


def test_condot_path_endpoints_are_x0_and_x1():
    path = AffinePath(CondOTScheduler(0.0))
    x0, x1 = _pair()
    b = x0.shape[0]
    assert torch.equal(path.sample(x0, x1, torch.zeros(b, dtype=D)).x_t, x0)
    assert torch.equal(path.sample(x0, x1, torch.ones(b, dtype=D)).x_t, x1)
    ps = path.sample(x0, x1, torch.rand(b, dtype=D))
    torch.testing.assert_close(ps.dx_t, x1 - x0)  # the rectified-flow target, constant in t
    # with sigma_min, x_1 keeps sigma_min of the noise
    ps = AffinePath(CondOTScheduler(0.1)).sample(x0, x1, torch.ones(b, dtype=D))
    torch.testing.assert_close(ps.x_t, x1 + 0.1 * x0)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_affine_sample_velocity_is_time_derivative_of_x_t(name):
    path = AffinePath(SCHEDULERS[name]())
    x0, x1 = _pair()
    t = torch.linspace(0.05, 0.95, x0.shape[0], dtype=D)
    h = 1e-6
    ps = path.sample(x0, x1, t)
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(ps.dx_t, fd, rtol=1e-6, atol=1e-7)
    # x_t really is alpha_t x1 + sigma_t x0, t broadcast over every non-batch dim
    a, s, _, _ = path.scheduler(t)
    torch.testing.assert_close(ps.x_t, a[:, None, None] * x1 + s[:, None, None] * x0)
    assert torch.equal(ps.t, t)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_parameterisation_conversions_recover_ground_truth(name):
    path = AffinePath(SCHEDULERS[name]())
    x0, x1 = _pair(b=8)
    t = torch.linspace(0.05, 0.95, 8, dtype=D)
    ps = path.sample(x0, x1, t)
    xt, v = ps.x_t, ps.dx_t
    tol = {"rtol": 1e-10, "atol": 1e-10}
    # ground truth: the conditional velocity determines x1 and the noise x0 given x_t
    torch.testing.assert_close(path.velocity_to_x1(v, xt, t), x1, **tol)
    torch.testing.assert_close(path.velocity_to_epsilon(v, xt, t), x0, **tol)
    torch.testing.assert_close(path.x1_to_velocity(x1, xt, t), v, **tol)
    torch.testing.assert_close(path.epsilon_to_velocity(x0, xt, t), v, **tol)
    torch.testing.assert_close(path.x1_to_epsilon(x1, xt, t), x0, **tol)
    torch.testing.assert_close(path.epsilon_to_x1(x0, xt, t), x1, **tol)
    # round trips of arbitrary predictions (not on the path's ground truth)
    w = torch.randn_like(v)
    torch.testing.assert_close(path.x1_to_velocity(path.velocity_to_x1(w, xt, t), xt, t), w, **tol)
    torch.testing.assert_close(path.epsilon_to_velocity(path.velocity_to_epsilon(w, xt, t), xt, t), w, **tol)
    torch.testing.assert_close(path.epsilon_to_x1(path.x1_to_epsilon(w, xt, t), xt, t), w, **tol)
    # velocity -> x1 -> epsilon -> velocity closes the triangle
    tri = path.epsilon_to_velocity(path.x1_to_epsilon(path.velocity_to_x1(w, xt, t), xt, t), xt, t)
    torch.testing.assert_close(tri, w, **tol)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_condot_fast_path_is_the_scheduler_formula(sigma_min):
    """AffinePath's two-op CondOT sample equals alpha_t x1 + sigma_t x0 from the scheduler, also
    with mixed dtypes (which take the general formula)."""
    path = AffinePath(CondOTScheduler(sigma_min))
    x0, x1 = _pair(b=16)
    t = torch.rand(16, dtype=D)
    a, s, da, ds = path.coefficients(t, x1)
    ps = path.sample(x0, x1, t)
    torch.testing.assert_close(ps.x_t, a * x1 + s * x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ps.dx_t, da * x1 + ds * x0, rtol=1e-12, atol=1e-12)
    mixed = path.sample(x0.float(), x1, t)
    assert mixed.x_t.dtype == D
    torch.testing.assert_close(mixed.x_t, ps.x_t, rtol=0, atol=1e-6)


def test_affine_loss_is_masked_mse():
    path = AffinePath(CondOTScheduler())
    x0, x1 = _pair(b=3, shape=(4, 2))
    t = torch.rand(3, dtype=D)
    ps = path.sample(x0, x1, t)
    pred = torch.randn_like(x1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    loss = path.loss(pred, ps, x1, mask)
    for i, n in enumerate([4, 2, 1]):
        expect = ((pred[i, :n] - ps.dx_t[i, :n]) ** 2).mean()
        assert loss[i].item() == pytest.approx(expect.item(), rel=1e-6)
    assert path.loss(ps.dx_t, ps, x1, mask).abs().max().item() == 0.0
    # the trainer's scalar (fast path without a mask) is the batch mean of the per-example losses
    for m in (None, mask):
        torch.testing.assert_close(path.batch_loss(pred, ps, x1, m), path.loss(pred, ps, x1, m).mean())


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_x1_prediction_regresses_x1_and_integrates_the_velocity_it_implies(name):
    """With ``prediction="x1"`` the loss is the masked MSE to x1, and feeding the true x1 gives back
    the conditional velocity dx_t at every interior time: the solver sees the same field."""
    path = AffinePath(SCHEDULERS[name](), prediction="x1")
    x0, x1 = _pair(b=T_INNER.numel(), shape=(4, 3))
    ps = path.sample(x0, x1, T_INNER)
    torch.testing.assert_close(path.velocity(x1, ps.x_t, T_INNER), ps.dx_t, rtol=1e-9, atol=1e-9)
    pred = torch.randn_like(x1)
    mask = torch.ones(x1.shape[:2], dtype=torch.bool)
    mask[1, 2:] = False
    loss = path.loss(pred, ps, x1, mask)
    torch.testing.assert_close(loss[1], ((pred[1, :2] - x1[1, :2]) ** 2).mean().float())
    torch.testing.assert_close(loss[0], ((pred[0] - x1[0]) ** 2).mean().float())
    torch.testing.assert_close(path.batch_loss(pred, ps, x1, None), ((pred - x1) ** 2).mean().float())


def test_x1_prediction_velocity_is_finite_at_t_equal_one():
    """Heun, RK4 and dopri5 evaluate the field at t = 1, where sigma_1 = 0 for CondOT; the velocity
    there stays finite and, where x_t is the prediction itself, is alpha'_1 x1^ (no noise term)."""
    path = AffinePath(CondOTScheduler(0.0), prediction="x1")
    x1 = torch.randn(5, 3, dtype=D)
    ones = torch.ones(5, dtype=D)
    torch.testing.assert_close(path.velocity(x1, x1, ones), x1)
    assert torch.isfinite(path.velocity(x1, x1 + 1e-3, ones)).all()


def test_a_scheduler_that_breaks_its_contract_is_refused_when_the_path_is_built():
    from fmkit.errors import ContractError
    from fmkit.flow.paths import Scheduler

    class TwoValues(Scheduler):
        def __call__(self, t):
            return t, 1 - t

    with pytest.raises(ContractError, match="scheduler TwoValues returned 2 values"):
        AffinePath(TwoValues())


def test_a_path_declares_its_prediction_to_the_model_through_an_attribute():
    """Any continuous ProbPath (not only AffinePath) tells models what they predict by ``prediction``."""
    from fmkit import hookimpl
    from fmkit.app.recipe import load_recipe
    from fmkit.app.registry import Registry
    from fmkit.app.run import build_components

    class EndpointPath(ProbPath):  # a third-party path, not an AffinePath: it delegates to one
        prediction = "x1"

        def __init__(self):
            self.inner = AffinePath(CondOTScheduler(), prediction="x1")

        def sample(self, x0, x1, t):
            return self.inner.sample(x0, x1, t)

        def loss(self, pred, ps, x1, mask):
            return self.inner.loss(pred, ps, x1, mask)

        def velocity(self, pred, x_t, t):
            return self.inner.velocity(pred, x_t, t)

    class Plugin:
        @hookimpl
        def register_paths(self, register):
            register("endpoint", EndpointPath)

    reg = Registry.fresh(entry_points=False, plugins=[Plugin()])
    rec = load_recipe("recipes/toy_moons.yaml", ["path={name: endpoint}"], registry=reg)
    assert build_components(rec, reg, with_eval=False).model.residual


def test_affine_path_rejects_unknown_prediction():
    with pytest.raises(ValueError, match="velocity.*x1.*'noise'"):
        AffinePath(CondOTScheduler(), prediction="noise")


# ---------------------------------------------------------------------------------------------
# Discrete mixture path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_discrete_path_hits_x1_with_probability_kappa(exponent):
    path = DiscretePath("mask", exponent)
    K, N = 5, 20_000
    ts = torch.tensor([0.1, 0.4, 0.7, 0.9])
    x1 = torch.randint(0, K, (len(ts), N))
    x0 = torch.full_like(x1, K)  # the mask token
    ps = path.sample(x0, x1, ts)
    assert ps.dx_t is None and torch.equal(ps.t, ts)
    hit = ps.x_t == x1
    assert torch.all(hit | (ps.x_t == x0)), "x_t must be either x1 or x0"
    kappa = ts.double() ** exponent
    frac = hit.double().mean(1)
    se = torch.sqrt(kappa * (1 - kappa) / N)
    assert torch.all((frac - kappa).abs() < 4 * se), (frac, kappa)


def _rate_matrix(path, logits, t, n_states):
    """Q[z, y] = u_t(y | x_t = z), one row per possible current state z."""
    z = torch.arange(n_states)
    return path.velocity(logits.expand(n_states, -1), z, torch.full((n_states,), t, dtype=D)).double()


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_discrete_rates_are_a_valid_generator(source):
    K = 6
    path = DiscretePath(source, 1.5)
    n_states = K + 1 if source == "mask" else K
    B, N = 4, 50
    logits = torch.randn(B, N, K, dtype=D) * 3
    x_t = torch.randint(0, n_states, (B, N))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=D)
    rate = path.velocity(logits, x_t, t)
    assert rate.shape == (B, N, n_states)
    # (the rate is computed in float32: softmax round-off times kappa'/(1-kappa) <= ~10)
    torch.testing.assert_close(rate.sum(-1), torch.zeros(B, N, dtype=rate.dtype), rtol=0, atol=2e-5)
    off = ~F.one_hot(x_t, n_states).bool()
    assert (rate[off] >= 0).all(), "off-diagonal rates must be non-negative"
    assert (rate[~off] <= 0).all()
    # hand computation: kappa'/(1-kappa) * (softmax - onehot), kappa = t^1.5
    coef = 1.5 * t**0.5 / (1 - t**1.5)
    p = torch.softmax(logits, -1)
    if source == "mask":
        p = F.pad(p, (0, 1))
        assert (rate[..., K][x_t != K] == 0).all(), "no rate may point to the mask token"
    expect = coef[:, None, None] * (p - F.one_hot(x_t, n_states).to(D))
    torch.testing.assert_close(rate.double(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("t", [0.2, 0.55, 0.8])
def test_discrete_rates_with_true_posterior_generate_the_mixture_path(source, t):
    """Kolmogorov forward equation d p_t/dt = p_t Q_t: fed the exact posterior p(x1 | x_t), the rates
    move the marginal exactly along the mixture path p_t = kappa_t q + (1 - kappa_t) p_0."""
    K, expo = 4, 2.0
    path = DiscretePath(source, expo)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)  # data distribution over x1
    kap, dkap = t**expo, expo * t ** (expo - 1)
    n = K + 1 if source == "mask" else K
    p0 = F.one_hot(torch.tensor(K), n).to(D) if source == "mask" else torch.full((n,), 1.0 / K, dtype=D)
    qn = F.pad(q, (0, n - K))
    pt = kap * qn + (1 - kap) * p0
    joint = q[None, :] * (kap * torch.eye(n, K, dtype=D) + (1 - kap) * p0[:, None])  # P(x_t=z, x1=y)
    torch.testing.assert_close(joint.sum(1), pt)
    post = joint / joint.sum(1, keepdim=True)
    rows = []
    for z in range(n):
        logit = torch.log(post[z].clamp_min(1e-300))
        rows.append(path.velocity(logit[None], torch.tensor([z]), torch.tensor([t], dtype=D))[0].double())
    Q = torch.stack(rows)
    torch.testing.assert_close(pt @ Q, dkap * (qn - p0), rtol=1e-5, atol=1e-6)


def test_discrete_cross_entropy_equals_hand_computation():
    path = DiscretePath("mask")
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], [[0.0, 1.0, 3.0], [1.0, -2.0, 0.0]]])
    x1 = torch.tensor([[0, 2], [1, 0]])
    mask = torch.tensor([[True, True], [True, False]])
    ps = PathSample(torch.tensor([0.3, 0.6]), torch.full_like(x1, 3), None)

    def nll(lg, y):
        return -(lg[y] - math.log(sum(math.exp(v) for v in lg.tolist())))

    loss = path.loss(logits, ps, x1, mask)
    e0 = (nll(logits[0, 0], 0) + nll(logits[0, 1], 2)) / 2
    e1 = nll(logits[1, 0], 1)  # the padded second token does not count
    torch.testing.assert_close(loss, torch.tensor([e0, e1], dtype=loss.dtype))
    assert e1 == pytest.approx(-(1.0 - math.log(1 + math.e + math.e**3)))


def test_discrete_path_rejects_unknown_source():
    with pytest.raises(ValueError, match="mask.*uniform"):
        DiscretePath("gaussian")


# ---------------------------------------------------------------------------------------------
# State path
# ---------------------------------------------------------------------------------------------
def test_state_path_composes_per_field_paths():
    aff = AffinePath(CosineScheduler())
    disc = DiscretePath("mask")
    sp = StatePath(aff, {"atoms": disc})
    B, N, K = 5, 7, 4
    mask = torch.rand(B, N) < 0.7
    cond = torch.arange(B)
    x1 = {"pos": torch.randn(B, N, 3, dtype=D), "atoms": torch.randint(0, K, (B, N)), "mask": mask, "cond": cond}
    x0 = {"pos": torch.randn(B, N, 3, dtype=D), "atoms": torch.full((B, N), K), "mask": mask, "cond": cond}
    t = torch.rand(B, dtype=D)
    ps = sp.sample(x0, x1, t)
    a, s, da, ds = aff.scheduler(t)
    torch.testing.assert_close(ps.x_t["pos"], a[:, None, None] * x1["pos"] + s[:, None, None] * x0["pos"])
    torch.testing.assert_close(ps.dx_t["pos"], da[:, None, None] * x1["pos"] + ds[:, None, None] * x0["pos"])
    assert ps.dx_t["atoms"] is None
    assert torch.all((ps.x_t["atoms"] == x1["atoms"]) | (ps.x_t["atoms"] == K))
    assert ps.x_t["mask"] is mask and ps.x_t["cond"] is cond
    assert set(ps.dx_t) == {"pos", "atoms"}
    # losses dispatch per field: MSE on the affine field, CE on the categorical one
    pred = {"pos": ps.dx_t["pos"].clone(), "atoms": torch.randn(B, N, K, dtype=D)}
    losses = sp.losses(pred, ps, x1)
    assert losses["pos"].abs().max().item() == 0.0
    torch.testing.assert_close(losses["atoms"], disc.loss(pred["atoms"], ps, x1["atoms"], mask))
    # velocities dispatch per field too
    vel = sp.velocity(pred, ps.x_t, t)
    assert torch.equal(vel["pos"], pred["pos"])
    assert vel["atoms"].shape == (B, N, K + 1)
    with pytest.raises(ModelError, match="no output for field 'atoms'"):
        sp.losses({"pos": pred["pos"]}, ps, x1)


def test_model_outputs_of_the_wrong_shape_or_kind_are_refused():
    """A model output that would broadcast against the target (MSE of [B,1] vs [B,3] trains without
    an error and samples garbage) is refused by training and sampling alike, naming the field."""
    sp = StatePath(AffinePath(CondOTScheduler()), {"atoms": DiscretePath("mask")})
    B, N, K = 4, 5, 3
    x1 = {"pos": torch.randn(B, N, 3), "atoms": torch.randint(0, K, (B, N)), "mask": torch.ones(B, N, dtype=torch.bool)}
    x0 = {"pos": torch.randn(B, N, 3), "atoms": torch.full((B, N), K)}
    ps = sp.sample(x0, x1, torch.rand(B))
    good = {"pos": torch.randn(B, N, 3), "atoms": torch.randn(B, N, K)}
    sp.losses(good, ps, x1)
    sp.velocity(good, ps.x_t, torch.rand(B))
    bad = [({"pos": torch.randn(B, N, 1), "atoms": good["atoms"]}, r"'pos' has shape \(4, 5, 1\).*\(4, 5, 3\)"),
           ({"pos": torch.randn(1, N, 3), "atoms": good["atoms"]}, r"'pos' has shape \(1, 5, 3\)"),
           ({"pos": good["pos"], "atoms": torch.randn(B, K)}, r"'atoms' has shape \(4, 3\).*num_classes"),
           ({"pos": good["pos"].numpy(), "atoms": good["atoms"]}, r"'pos' has shape ndarray"),
           (torch.randn(B, N, 3), r"returned a Tensor, not a dict")]
    for pred, match in bad:
        with pytest.raises(ModelError, match=match):
            sp.losses(pred, ps, x1)
        with pytest.raises(ModelError, match=match):
            sp.velocity(pred, ps.x_t, torch.rand(B))


def test_state_path_refuses_categorical_field_on_affine_path():
    sp = StatePath(AffinePath(CondOTScheduler()))
    x1 = {"x": torch.randn(3, 2), "atoms": torch.randint(0, 4, (3, 5))}
    x0 = {"x": torch.randn(3, 2), "atoms": torch.randint(0, 4, (3, 5))}
    with pytest.raises(ValueError, match=r"'atoms'.*class indices.*AffinePath.*discrete"):
        sp.sample(x0, x1, torch.rand(3))


@pytest.mark.parametrize("expo", [0.5, 2.0])
def test_discrete_step_averaged_rate_is_the_exact_transition_of_the_path(expo):
    """Given the solver's step h, the rate is averaged over [t, t+h]: one Euler jump leaves a masked
    token masked with probability (1 - kappa_{t+h}) / (1 - kappa_t), the path's own law."""
    from fmkit.flow.solvers import FixedStepSolver

    K, n = 3, 200_000
    path = DiscretePath("mask", expo)
    logits = torch.zeros(n, K, dtype=D)  # any posterior: only whether a token unmasks is counted

    def velocity(s, t, step=None):
        return {"c": path.velocity(logits, s["c"], t.expand(n), step)}

    torch.manual_seed(0)
    x = FixedStepSolver("euler", 1).solve(velocity, {"c": torch.full((n,), K)}, 0.3, 0.5).x["c"]
    stay = (1 - 0.5**expo) / (1 - 0.3**expo)
    assert abs((x == K).double().mean().item() - stay) < 0.005, ((x == K).double().mean().item(), stay)


def test_discrete_step_averaged_rate_equals_the_instantaneous_one_for_linear_kappa():
    path = DiscretePath("mask", 1.0)
    logits, x = torch.randn(6, 4, dtype=D), torch.tensor([4, 0, 4, 2, 4, 1])
    t = torch.linspace(0.0, 0.9, 6, dtype=D)
    torch.testing.assert_close(path.velocity(logits, x, t, 0.1), path.velocity(logits, x, t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("expo", [0.5, 2.0])
def test_discrete_path_with_a_polynomial_schedule_samples_data_classes_only(expo):
    """With a fixed posterior q and a polynomial schedule, every token ends as a class drawn from q:
    the rate stays finite at t = 0 (exponent 0.5: it used to fail on the first step) and the last jump
    unmasks with probability 1 (exponent 2: it used to leave tokens masked)."""
    from fmkit.flow.sampling import generate
    from fmkit.flow.solvers import FixedStepSolver
    from fmkit.flow.sources import CategoricalSource, StateSource

    K = 4
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def model(s, t, cond=None):
        return {"c": q.log().expand(*s["c"].shape, K)}

    torch.manual_seed(0)
    x = generate(model, StatePath(DiscretePath("mask", expo)), StateSource(None, {"c": CategoricalSource(K, "mask")}),
                 FixedStepSolver("euler", 20), {"c": torch.zeros(20_000, 4, dtype=torch.long)}).x["c"]
    assert int(x.max()) < K  # no mask token left
    freq = torch.bincount(x.flatten(), minlength=K).float() / x.numel()
    assert (freq - q).abs().max() < 0.01, freq


def test_state_path_hands_the_step_to_any_path_whose_velocity_takes_it():
    """Any path whose velocity takes ``step`` gets it, not DiscretePath alone: a plugin's own ProbPath
    with ``velocity(..., step=None)`` gets the solver's step; AffinePath, without it, is called as before."""
    from fmkit.flow.paths import ProbPath

    class Recording(ProbPath):  # a third-party path, no relation to DiscretePath
        seen: object = "never called"

        def sample(self, x0, x1, t):
            raise NotImplementedError

        def loss(self, pred, ps, x1, mask):
            raise NotImplementedError

        def velocity(self, pred, x_t, t, step=None):
            self.seen = step
            return pred

    rec = Recording()
    sp = StatePath(AffinePath(CondOTScheduler()), {"y": rec})
    x_t = {"x": torch.randn(3, 2), "y": torch.randn(3, 4)}
    pred = {"x": torch.randn(3, 2), "y": torch.randn(3, 4)}
    out = sp.velocity(pred, x_t, torch.full((3,), 0.5), step=0.25)
    assert rec.seen == 0.25 and out["x"].shape == (3, 2)
    sp.velocity(pred, x_t, torch.full((3,), 0.5))
    assert rec.seen is None
