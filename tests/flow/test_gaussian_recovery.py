"""End to end on a target with a closed form: N(0, I) -> N(m, C) in 2-D.

For the CondOT path with the independent coupling, (x1 - x0, x_t) is jointly Gaussian, so the
marginal velocity the CFM loss regresses on is linear:
    v*(x, t) = m + (t C - (1 - t) I) (t^2 C + (1 - t)^2 I)^{-1} (x - t m).
The real Trainer must learn it, and its samples must recover m and C, whether the network
regresses that velocity or the endpoint E[x1 | x_t] = x + (1 - t) v*(x, t) (``prediction: x1``).
"""

from __future__ import annotations

import pytest
import torch
from fmkit import EvalOptions, FixedStepSolver, Trainer, TrainerOptions
from fmkit.app.builtin.mlp import MLP
from fmkit.app.builtin.toy import ToyDataset
from fmkit.flow.paths import AffinePath, CondOTScheduler, StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.sources import GaussianSource, StateSource

D = torch.float64
MEAN, COV = [1.0, -0.5], [[1.5, 0.6], [0.6, 0.8]]
M, C, I2 = torch.tensor(MEAN, dtype=D), torch.tensor(COV, dtype=D), torch.eye(2, dtype=D)


def v_star(x, t):
    t = float(t)
    K = (t * C - (1 - t) * I2) @ torch.linalg.inv(t * t * C + (1 - t) ** 2 * I2)
    return M + (x - t * M) @ K.T


def test_marginal_velocity_transports_source_to_target_exactly():
    """The regression target is right: integrating v* maps N(0, I) onto N(m, C) exactly. As v* is
    affine in x, the flow map is x -> A x + b; read A and b off the solver and check A A^T = C, b = m."""
    pts = torch.cat([torch.zeros(1, 2, dtype=D), I2])
    sol = FixedStepSolver("rk4", 200).solve(v_star, pts, 0.0, 1.0)
    b = sol.x[0]
    A = (sol.x[1:] - b).T
    torch.testing.assert_close(b, M, rtol=0, atol=1e-8)
    torch.testing.assert_close(A @ A.T, C, rtol=0, atol=1e-8)

    # and through the library's generate(): a model returning v* yields samples of N(m, C)
    class Oracle(torch.nn.Module):
        def forward(self, x_t, t, cond=None):
            return {"x": v_star(x_t["x"], t[0])}

    x = generate(Oracle(), StatePath(AffinePath(CondOTScheduler())), StateSource(GaussianSource()),
                 FixedStepSolver("rk4", 50), {"x": torch.zeros(20000, 2, dtype=D)}).x["x"]
    assert (x.mean(0) - M).abs().max() < 0.05
    assert (torch.cov(x.T) - C).abs().max() < 0.06

    # an endpoint predictor E[x1 | x_t] on the x1-predicting path generates the same distribution
    class EndpointOracle(torch.nn.Module):
        def forward(self, x_t, t, cond=None):
            return {"x": x_t["x"] + (1 - t[0]) * v_star(x_t["x"], t[0])}

    x = generate(EndpointOracle(), StatePath(AffinePath(CondOTScheduler(), prediction="x1")),
                 StateSource(GaussianSource()), FixedStepSolver("rk4", 50),
                 {"x": torch.zeros(20000, 2, dtype=D)}).x["x"]
    assert (x.mean(0) - M).abs().max() < 0.05
    assert (torch.cov(x.T) - C).abs().max() < 0.06


@pytest.fixture(scope="module", params=["velocity", "x1"])
def trained(request):
    torch.manual_seed(0)
    ds = ToyDataset("gaussian", n=20000, seed=0, mean=MEAN, cov=COV)
    model = MLP(2, hidden=64, depth=2, time_dim=16)
    opts = TrainerOptions(steps=900, batch_size=256, lr=3e-3, warmup_steps=50, ema_decay=0.99, progress=False,
                          device="cpu", log_every=1000, checkpoint_every=10**6)
    trainer = Trainer(model, ds, path=AffinePath(CondOTScheduler(), prediction=request.param), options=opts,
                      eval_options=EvalOptions(num_samples=8000, batch_size=8000),
                      solver=FixedStepSolver("midpoint", 20), seed=0)
    return trainer.fit()


def test_trained_flow_recovers_target_mean_and_covariance(trained):
    trainer = trained
    x = trainer.sample(8000, seed=1)["x"].double()
    assert torch.isfinite(x).all()
    mean_err = (x.mean(0) - M).abs().max().item()
    cov_err = (torch.cov(x.T) - C).abs().max().item()
    print(f"mean error {mean_err:.3f}, covariance error {cov_err:.3f}")
    assert mean_err < 0.1, (x.mean(0), M)
    assert cov_err < 0.15, (torch.cov(x.T), C)
    # an untrained model of the same architecture does not pass these checks
    torch.manual_seed(0)
    raw = Trainer(MLP(2, hidden=64, depth=2, time_dim=16), trainer.dataset,
                  options=TrainerOptions(steps=1, device="cpu", progress=False),
                  solver=FixedStepSolver("midpoint", 20)).sample(2000, seed=1)["x"].double()
    assert (raw.mean(0) - M).abs().max() > 0.1 or (torch.cov(raw.T) - C).abs().max() > 0.15


def test_trained_velocity_matches_the_marginal_velocity(trained):
    trainer = trained
    net = trainer.ema.model
    for t in (0.25, 0.5, 0.75):
        L = torch.linalg.cholesky(t * t * C + (1 - t) ** 2 * I2)
        x = t * M + torch.randn(4000, 2, dtype=D) @ L.T  # x_t ~ p_t = N(t m, t^2 C + (1-t)^2 I)
        with torch.no_grad():
            tb = torch.full((4000,), t)
            v = trainer.path.velocity(net({"x": x.float()}, tb), {"x": x.float()}, tb)["x"].double()
        ref = v_star(x, t)
        rel = ((v - ref) ** 2).sum(1).mean().sqrt() / (ref**2).sum(1).mean().sqrt()
        print(f"t={t}: relative RMS velocity error {rel.item():.3f}")
        assert rel < 0.2, (t, rel.item())
