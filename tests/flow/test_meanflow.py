"""MeanFlow (Geng et al. 2025) in fmkit: what its objective computes and what it learns.

- the JVP target u_tgt = v - (t - r) (v d_z u + d_t u) equals the same expression with the total
  derivative taken by central finite differences along the trajectory (float64, a small net);
- with r = t for every example and no adaptive weight, the objective is the CFM loss (value and
  gradients), masked multi-field states and per-field weights included;
- for Gaussian -> Gaussian (independent coupling, CondOT path) the average velocity is known in closed
  form, and a short training recovers it, one-step samples included;
- the jump solver, the two-time contract of the MLP, and what is refused (categorical fields, x1
  prediction, a model without r, guidance without condition dropout).
"""

from __future__ import annotations

import math

import fmkit
import pytest
import torch
from fmkit.errors import FmkitError, ModelError, TrainingError
from fmkit.flow.objectives import AverageVelocityJVP, CFMObjective, MeanFlowObjective
from fmkit.flow.paths import AffinePath, CondOTScheduler, DiscretePath, StatePath
from fmkit.flow.solvers import MeanFlowSolver
from fmkit.flow.two_times import IntervalEmbedding
from torch import nn


def condot(prediction: str = "velocity") -> AffinePath:
    return AffinePath(CondOTScheduler(), prediction)


def test_the_jvp_target_equals_a_finite_difference_derivative_along_the_trajectory():
    torch.manual_seed(0)
    net = fmkit.MLP(3, hidden=32, depth=2, time_dim=16, two_times=True).double()
    b = 6
    z, v = torch.randn(b, 3, dtype=torch.float64), torch.randn(b, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.6, b, dtype=torch.float64)
    r = t + torch.linspace(0.05, 0.35, b, dtype=torch.float64)
    obj = MeanFlowObjective(condot())
    u, target = obj.prediction_and_target(AverageVelocityJVP(net), {"x": z}, t, r, None, {"x": v})
    with torch.no_grad():
        assert torch.equal(u["x"], net({"x": z}, t, r=r)["x"])  # the prediction is the model's output

        def along(h: float) -> torch.Tensor:  # u at (z + h v, r, t + h): the point moved along dz/dt = v
            return net({"x": z + h * v}, t + h, r=r)["x"]

        h = 1e-6  # central differences in float64: truncation ~h^2 |u'''|, rounding ~1e-16 / h
        dudt = (along(h) - along(-h)) / (2 * h)
        expected = v - (t - r)[:, None] * dudt
        held = (net({"x": z}, t + h, r=r)["x"] - net({"x": z}, t - h, r=r)["x"]) / (2 * h)  # z held still
    torch.testing.assert_close(target["x"], expected, rtol=1e-6, atol=1e-7)
    assert not target["x"].requires_grad  # the stop-gradient
    # the z-term v d_z u matters on this net: a JVP that dropped it would fail the comparison above
    assert ((t - r)[:, None] * (dudt - held)).abs().max() > 1e-3


class TwoFields(nn.Module):
    """u(x, r, t) on two masked fields of a point set: ``pos`` [B, N, 3] and ``spin`` [B, N, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.interval = IntervalEmbedding(8)
        self.time = nn.Linear(1, 8)
        self.net = nn.Linear(5 + 8, 5)

    def forward(self, x_t, t, cond=None, *, r=None):
        e = self.time(t[:, None])
        if r is not None:
            e = e + self.interval(r - t)
        h = torch.cat([x_t["pos"], x_t["spin"], e[:, None].expand(-1, x_t["pos"].shape[1], -1)], -1)
        out = self.net(h) * x_t["mask"][..., None]
        return {"pos": out[..., :3], "spin": out[..., 3:]}


@pytest.mark.parametrize("case", ["mlp", "masked_fields"])
def test_with_r_equal_to_t_everywhere_the_objective_is_the_cfm_loss(case):
    torch.manual_seed(1)
    b = 16
    if case == "mlp":
        model = fmkit.MLP(2, hidden=32, depth=2, time_dim=16, two_times=True)
        x1 = {"x": torch.randn(b, 2)}
        weights = None
    else:
        model = TwoFields()
        mask = torch.arange(5)[None] < torch.randint(2, 6, (b,))[:, None]
        x1 = {"pos": torch.randn(b, 5, 3) * mask[..., None], "spin": torch.randn(b, 5, 2) * mask[..., None],
              "mask": mask}
        weights = {"spin": 0.3}
    x0 = {k: torch.randn_like(v) * (x1["mask"][..., None] if "mask" in x1 else 1) for k, v in x1.items() if k != "mask"}
    times = torch.rand(b)
    fixed = lambda n, device: times  # noqa: E731 - both objectives see the same t (MeanFlow: t = r = min of two)
    cfm = CFMObjective(condot(), time=fixed, weights=weights)
    mf = MeanFlowObjective(condot(), time=fixed, equal_fraction=1.0, adaptive_p=0.0, weights=weights)
    results = []
    for obj in (cfm, mf):
        model.zero_grad()
        loss, per_field = obj(model, x1, x0)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((loss, per_field, grads))
    (l_cfm, f_cfm, g_cfm), (l_mf, f_mf, g_mf) = results
    torch.testing.assert_close(l_mf, l_cfm, rtol=1e-6, atol=0)
    for k in f_cfm:
        torch.testing.assert_close(f_mf[k], f_cfm[k], rtol=1e-6, atol=0)
    assert set(g_mf) >= set(g_cfm)
    for k in g_cfm:
        torch.testing.assert_close(g_mf[k], g_cfm[k], rtol=1e-5, atol=1e-7)
    # and it is not the CFM loss once some r differ from t (the comparison above can fail)
    model.zero_grad()
    other = MeanFlowObjective(condot(), time=lambda n, d: torch.rand(n), equal_fraction=0.0, adaptive_p=0.0,
                              weights=weights)
    assert not torch.allclose(other(model, x1, x0)[0], l_cfm, rtol=1e-3)


def test_the_times_are_ordered_and_a_fraction_has_r_equal_t():
    torch.manual_seed(0)
    obj = MeanFlowObjective(condot(), equal_fraction=0.75)
    t, r = obj.times(20000, torch.device("cpu"))
    assert (r >= t).all() and t.min() >= 0 and r.max() <= 1
    equal = (r == t).float().mean().item()
    assert abs(equal - 0.75) < 0.015, equal
    # t and r are the min and max of two uniform draws: E[t] = 1/3, E[r] = 2/3 where they differ
    assert abs(t[r != t].mean().item() - 1 / 3) < 0.02 and abs(r[r != t].mean().item() - 2 / 3) < 0.02


# ---- Gaussian -> Gaussian: the average velocity in closed form --------------------------------------
MU, SIGMA = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])


def exact_u(x: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """u(x, r, t) for x0 ~ N(0, I), x1 ~ N(MU, diag SIGMA^2), independent coupling, x_s = s x1 + (1 - s) x0.

    x_s ~ N(s MU, s_s^2) with s_s^2 = s^2 SIGMA^2 + (1 - s)^2, and the flow is X_s(x0) = s MU + s_s x0, so
    x at time t came from x0 = (x - t MU) / s_t and reaches X_r: u = (X_r - x) / (r - t)."""
    def s(tt: torch.Tensor) -> torch.Tensor:
        return (tt[:, None] ** 2 * SIGMA**2 + (1 - tt[:, None]) ** 2).sqrt()

    x0 = (x - t[:, None] * MU) / s(t)
    return (r[:, None] * MU + s(r) * x0 - x) / (r - t)[:, None]


class AffineInX(nn.Module):
    """u(x, r, t) = a(t, r) * x + b(t, r): the class the Gaussian's average velocity belongs to (per
    dimension), so that a short training can reach it; (t, r) through sinusoids and an IntervalEmbedding."""

    def __init__(self, d: int = 2, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, 3, 8)))
        self.time, self.interval = nn.Linear(16, width), IntervalEmbedding(width)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2 * d))

    def forward(self, x_t, t, cond=None, *, r=None):
        a = t[:, None] * self.freqs
        e = self.time(torch.cat([a.sin(), a.cos()], -1))
        if r is not None:
            e = e + self.interval(r - t)
        scale, shift = self.head(e).chunk(2, -1)
        return {"x": scale * x_t["x"] + shift}


def test_training_recovers_the_known_average_velocity_of_a_gaussian_to_gaussian_flow():
    """3000 steps of the Trainer with objective meanflow (conditional velocities, independent coupling,
    plain squared error). Tolerances: RMS error of u per (t, r) pair (the one-step (0, 1) included)
    below 0.08, one-step samples' mean and std within 0.07 of MU and SIGMA (measured: at most 0.041
    and 0.035). A model that ignored r (the instantaneous velocity) would be off by more than 0.5 at
    (0, 1); a bootstrapped target that missed its fixed point, by the 0.1-0.2 a shorter training left."""
    torch.manual_seed(0)
    data = MU + SIGMA * torch.randn(50_000, 2)
    model = AffineInX()
    opts = fmkit.TrainerOptions(steps=3000, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=None,
                                progress=False, device="cpu", cpu_threads=1, checkpoint_every=10**6)
    tr = fmkit.Trainer(model, fmkit.TensorDataset(data), options=opts, seed=0,
                       objective={"name": "meanflow", "equal_fraction": 0.5, "adaptive_p": 0.0})
    tr.fit()
    model.eval()
    g = torch.Generator().manual_seed(1)
    pairs = [(0.0, 1.0), (0.0, 0.5), (0.3, 0.9), (0.5, 1.0), (0.2, 0.2)]
    errs, instant = {}, {}
    with torch.no_grad():
        for t0, r0 in pairs:
            t, r = torch.full((2000,), t0), torch.full((2000,), r0)
            x = t[:, None] * MU + (t[:, None] ** 2 * SIGMA**2 + (1 - t[:, None]) ** 2).sqrt() * torch.randn(
                2000, 2, generator=g)  # x ~ p_t
            want = exact_u(x, r, t) if r0 > t0 else exact_u(x, t + 1e-4, t)  # r = t: the limit, v(x, t)
            errs[(t0, r0)] = ((model({"x": x}, t, r=r)["x"] - want) ** 2).mean().sqrt().item()
            instant[(t0, r0)] = ((model({"x": x}, t)["x"] - want) ** 2).mean().sqrt().item()
        samples = tr.sample(4000, solver=MeanFlowSolver(1))["x"]
    assert max(errs.values()) < 0.08, f"RMS error of u per (t, r): {errs}"
    assert instant[(0.0, 1.0)] > 0.5, "at (0, 1) the average velocity is far from the instantaneous one"
    assert (samples.mean(0) - MU).abs().max() < 0.07, samples.mean(0)
    assert (samples.std(0) - SIGMA).abs().max() < 0.07, samples.std(0)


# ---- the jump, the contract, the refusals ---------------------------------------------------------
def test_the_meanflow_solver_jumps_with_the_average_velocity_over_its_grid():
    calls = []

    def u(x, t, r):
        calls.append((float(t), float(r)))
        return 2.0 * torch.ones_like(x) * (r - t)  # any function of (t, r): the jump is x + (r - t) u

    x0 = torch.zeros(3, 2)
    sol = MeanFlowSolver(2).solve(u, x0)
    assert sol.nfe == 2 and calls == [(0.0, 0.5), (0.5, 1.0)]
    assert torch.allclose(sol.x, torch.full((3, 2), 2 * (0.5**2) * 2))
    with pytest.raises(FmkitError, match="continuous fields only"):
        MeanFlowSolver(1).solve(lambda x, t, r: x, {"tok": torch.zeros(2, 3, dtype=torch.long)})


def test_the_mlp_meets_the_two_time_contract_and_a_one_time_mlp_says_how_to_get_one():
    from fmkit.testing import check_model, check_two_time_model

    ds = fmkit.TensorDataset(torch.randn(16, 2))
    two = fmkit.MLP(2, hidden=16, depth=1, time_dim=8, two_times=True)
    check_model(two, ds)
    check_two_time_model(two, ds)
    one = fmkit.MLP(2, hidden=16, depth=1, time_dim=8)
    with pytest.raises(ModelError, match="two_times"):
        one({"x": torch.randn(2, 2)}, torch.rand(2), r=torch.rand(2))

    class IgnoresR(nn.Module):
        def forward(self, x_t, t, cond=None, r=None):
            return {"x": x_t["x"] * t[:, None]}

    with pytest.raises(AssertionError, match="ignores its second time"):
        check_two_time_model(IgnoresR(), ds)


def test_a_one_time_model_is_refused_before_training():
    class OneTime(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x_t, t, cond=None):
            return {"x": self.lin(torch.cat([x_t["x"], t[:, None]], -1))}

    with pytest.raises(ModelError, match="takes no keyword r"):
        fmkit.Trainer(OneTime(), fmkit.TensorDataset(torch.randn(64, 2)),
                      options={"steps": 1, "batch_size": 8, "device": "cpu"}, objective={"name": "meanflow"})


def test_what_meanflow_does_not_train_is_refused_with_a_fix():
    with pytest.raises(FmkitError, match="predicts 'x1'") as e:
        MeanFlowObjective(condot("x1"))
    assert "prediction" in e.value.fix
    with pytest.raises(FmkitError, match="affine path; path.fields.tok is a DiscretePath"):
        MeanFlowObjective(StatePath(condot(), {"tok": DiscretePath()}))
    obj = MeanFlowObjective(condot())
    with pytest.raises(ModelError, match=r"continuous fields only; field\(s\) \['tok'\]") as e:
        obj(fmkit.MLP(2, two_times=True), {"x": torch.randn(4, 2), "tok": torch.zeros(4, 3, dtype=torch.long)})
    assert "objective: {name: cfm}" in e.value.fix
    with pytest.raises(TrainingError, match="trainer.cond_dropout is 0"):
        MeanFlowObjective(condot(), guidance_scale=2.0)


def test_the_guided_target_mixes_the_unconditional_average_velocity_as_eq_21():
    """omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null) where the label was kept, v
    where it was dropped; the null branch at r = t, without gradient."""
    torch.manual_seed(0)

    class Shift(nn.Module):  # u = label-dependent constant; d/dt u = 0, so u_tgt = v~ exactly
        def forward(self, x_t, t, cond=None, *, r=None):
            return {"x": torch.zeros_like(x_t["x"]) + cond.float()[:, None]}

    obj = MeanFlowObjective(condot(), guidance_scale=3.0, guidance_mix=0.5, cond_dropout=0.5, null_class=7)
    cond = torch.tensor([1, 2, 3, 4])
    cond_in = torch.tensor([1, 7, 3, 7])  # examples 1 and 3 dropped
    v = {"x": torch.ones(4, 2)}
    wrapped = AverageVelocityJVP(Shift())
    got = obj.guided_velocity(wrapped, {"x": torch.zeros(4, 2)}, torch.rand(4), cond, cond_in, v)["x"]
    kept = 3.0 * 1 + 0.5 * cond.float() + (1 - 3.0 - 0.5) * 7
    want = torch.where(torch.tensor([True, False, True, False])[:, None], kept[:, None].expand(4, 2), v["x"])
    torch.testing.assert_close(got, want)


def test_interval_embedding_is_zero_at_h_zero_and_smooth_elsewhere():
    emb = IntervalEmbedding(8)
    h = torch.tensor([0.0, 1e-3, 0.5, 0.0])
    out = emb(h)
    assert torch.equal(out[0], torch.zeros(8)) and torch.equal(out[3], torch.zeros(8))
    assert out[1].abs().max() < 0.1 * out[2].abs().max() and out[2].abs().max() > 0
    assert math.isfinite(float(out.sum()))


def test_sampling_guidance_on_a_jump_is_refused_with_the_training_time_alternative():
    from fmkit.flow.guidance import ClassifierFreeGuidance
    from fmkit.flow.sampling import model_velocity

    guided = ClassifierFreeGuidance(fmkit.MLP(2, num_classes=3, two_times=True), 2.0, 3)
    v = model_velocity(guided, StatePath(condot()), None, torch.tensor([0, 1]))
    with pytest.raises(FmkitError, match="does not apply to a MeanFlow jump") as e:
        MeanFlowSolver(1).solve(v, {"x": torch.randn(2, 2)})
    assert "objective.guidance_scale" in e.value.fix
    v({"x": torch.randn(2, 2)}, torch.tensor(0.5))  # the guided ODE of the instantaneous velocity still runs


def test_only_the_examples_with_r_above_t_take_the_jvp(monkeypatch):
    """A batch mixing r = t and r > t: the JVP runs on the r > t rows only, and the outputs, the total
    derivative on those rows and the weights' gradients equal one JVP of the whole batch; dudt is 0 at r = t."""
    torch.manual_seed(0)
    net = fmkit.MLP(3, hidden=32, depth=2, time_dim=16, two_times=True).double()
    b = 8
    z, v = torch.randn(b, 3, dtype=torch.float64), torch.randn(b, 3, dtype=torch.float64)
    t = torch.rand(b, dtype=torch.float64) * 0.6
    r = t.clone()
    r[::3] += 0.3  # rows 0, 3, 6 jump
    wrapped = AverageVelocityJVP(net)
    sizes = []
    jvp = torch.func.jvp
    monkeypatch.setattr(torch.func, "jvp", lambda f, p, tg: sizes.append(p[1].shape[0]) or jvp(f, p, tg))
    u, dudt = wrapped({"x": z}, t, None, r=r, tangent={"x": v})
    assert sizes == [3]
    (u["x"] ** 2).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    u_all, dudt_all = wrapped._jvp({"x": z}, t, None, r, {"x": v})
    (u_all["x"] ** 2).sum().backward()
    torch.testing.assert_close(u["x"], u_all["x"], rtol=1e-12, atol=1e-12)
    moving = r != t
    torch.testing.assert_close(dudt["x"][moving], dudt_all["x"][moving], rtol=1e-12, atol=1e-12)
    assert (dudt["x"][~moving] == 0).all()
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
