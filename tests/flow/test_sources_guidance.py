"""The math of fmkit.flow.sources, the toy sources, and classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch
from fmkit.app.builtin.mlp import MLP
from fmkit.app.builtin.toy import ToySource, eight_gaussians_log_prob
from fmkit.flow.guidance import ClassifierFreeGuidance, drop_condition
from fmkit.flow.sources import CategoricalSource, GaussianSource, StateSource

D = torch.float64


# ---------------------------------------------------------------------------------------------
# Gaussian and categorical sources
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("std", [1.0, 0.7, 2.5])
def test_gaussian_log_prob_equals_normal_over_real_entries(std):
    B, N = 5, 6
    mask = torch.rand(B, N) < 0.6
    mask[:, 0] = True
    x = torch.randn(B, N, 3, dtype=D) * 2
    src = GaussianSource(std)
    ref = torch.distributions.Normal(torch.zeros((), dtype=D), torch.tensor(std, dtype=D)).log_prob(x)
    torch.testing.assert_close(src.log_prob(x, mask), (ref * mask[..., None]).sum((1, 2)))
    torch.testing.assert_close(src.log_prob(x), ref.sum((1, 2)))
    # values at padded entries are irrelevant
    x2 = x.clone()
    x2[~mask] = 123.0
    torch.testing.assert_close(src.log_prob(x2, mask), src.log_prob(x, mask))


def test_gaussian_samples_have_std_and_zero_padding():
    std = 0.7
    B, N = 400, 10
    mask = torch.rand(B, N) < 0.5
    like = torch.zeros(B, N, 3, dtype=D)
    x = GaussianSource(std).sample(like, mask)
    assert x.dtype == D and x.shape == like.shape
    assert (x[~mask] == 0).all()
    real = x[mask]
    n = real.numel()
    assert abs(real.mean().item()) < 4 * std / math.sqrt(n)
    assert real.std().item() == pytest.approx(std, rel=4 * math.sqrt(0.5 / n))
    # an integer template gives floats
    assert GaussianSource().sample(torch.zeros(4, 2, dtype=torch.long)).is_floating_point()


def test_categorical_source_mask_and_uniform():
    K, B, N = 5, 300, 8
    mask = torch.rand(B, N) < 0.7
    like = torch.zeros(B, N, dtype=torch.long)
    m = CategoricalSource(K, "mask").sample(like, mask)
    assert (m[mask] == K).all() and (m[~mask] == 0).all()
    u = CategoricalSource(K, "uniform").sample(like, mask)
    assert u.dtype == torch.long and (u[~mask] == 0).all()
    real = u[mask]
    assert real.min() >= 0 and real.max() < K
    n = real.numel()
    freq = torch.bincount(real, minlength=K).double() / n
    se = math.sqrt((1 / K) * (1 - 1 / K) / n)
    assert ((freq - 1 / K).abs() < 4 * se).all(), freq
    with pytest.raises(ValueError, match="uniform.*mask"):
        CategoricalSource(K, "gaussian")


def test_state_source_composes_fields_and_copies_mask_and_cond():
    B, N, K = 4, 5, 3
    mask = torch.rand(B, N) < 0.5
    cond = torch.arange(B)
    like = {"pos": torch.zeros(B, N, 3, dtype=D), "atoms": torch.zeros(B, N, dtype=torch.long), "mask": mask,
            "cond": cond}
    src = StateSource(GaussianSource(0.5), {"atoms": CategoricalSource(K, "mask")})
    x0 = src.sample(like)
    assert x0["mask"] is mask and x0["cond"] is cond
    assert (x0["atoms"][mask] == K).all() and (x0["pos"][~mask] == 0).all()
    # log-density sums the continuous fields' densities
    s = StateSource(GaussianSource(0.5))
    st = {"a": torch.randn(B, N, dtype=D), "b": torch.randn(B, 2, dtype=D)}
    expect = GaussianSource(0.5).log_prob(st["a"]) + GaussianSource(0.5).log_prob(st["b"])
    torch.testing.assert_close(s.log_prob(st), expect)


# ---------------------------------------------------------------------------------------------
# Toy sources with closed-form densities
# ---------------------------------------------------------------------------------------------
def test_eight_gaussians_density_integrates_to_one_and_matches_the_mixture():
    src = ToySource("eight_gaussians")
    h = 0.04
    g = torch.arange(-8.0, 8.0, h, dtype=D) + h / 2
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    logp = src.log_prob(pts)
    assert (torch.exp(logp).sum() * h * h).item() == pytest.approx(1.0, abs=1e-3)
    # direct mixture: (1/8) sum_k N(x; 5 (cos 2 pi k/8, sin 2 pi k/8), 0.5^2 I)
    x = torch.randn(50, 2, dtype=D) * 4
    direct = torch.zeros(50, dtype=D)
    for k in range(8):
        c = torch.tensor([5 * math.cos(2 * math.pi * k / 8), 5 * math.sin(2 * math.pi * k / 8)], dtype=D)
        comp = torch.distributions.MultivariateNormal(c, covariance_matrix=0.25 * torch.eye(2, dtype=D))
        direct = direct + comp.log_prob(x).exp() / 8
    torch.testing.assert_close(src.log_prob(x), direct.log())
    # other radius and std, via the options
    torch.testing.assert_close(ToySource("eight_gaussians", radius=2.0, std=0.3).log_prob(x),
                               eight_gaussians_log_prob(x, 2.0, 0.3))
    assert eight_gaussians_log_prob(x, 2.0, 0.3).sub(src.log_prob(x)).abs().max() > 1.0


def test_eight_gaussians_samples_follow_the_density():
    src = ToySource("eight_gaussians")
    x = src.sample(torch.zeros(20000, 2, dtype=D))
    assert x.dtype == D
    n = x.shape[0]
    assert x.mean(0).abs().max().item() < 4 * math.sqrt(12.75 / n)  # Var x_i = 25/2 + 0.25
    r2 = (x**2).sum(1)
    assert r2.mean().item() == pytest.approx(25.0 + 2 * 0.25, abs=4 * r2.std().item() / math.sqrt(n))
    # every sample is near one of the 8 centres
    ang = torch.arange(8, dtype=D) * (2 * math.pi / 8)
    c = 5 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    d = torch.cdist(x, c).min(1).values
    assert (d < 0.5 * 5.5).all()


def test_gaussian_toy_source_log_prob():
    mean, cov = [1.0, -2.0], [[2.0, 0.6], [0.6, 0.5]]
    src = ToySource("gaussian", mean=mean, cov=cov)
    x = torch.randn(10, 2, dtype=D)
    diff = x - torch.tensor(mean, dtype=D)
    C = torch.tensor(cov, dtype=D)
    quad = (diff @ torch.linalg.inv(C) * diff).sum(1)
    expect = -0.5 * quad - 0.5 * torch.logdet(C) - math.log(2 * math.pi)
    torch.testing.assert_close(src.log_prob(x), expect)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------
def _cond_model():
    torch.manual_seed(1)
    return MLP(2, hidden=16, depth=2, time_dim=8, num_classes=3).double()


def test_guidance_scale_zero_one_and_linearity():
    model = _cond_model()
    B = 6
    x = {"x": torch.randn(B, 2, dtype=D)}
    t = torch.rand(B, dtype=D)
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    null = torch.full((B,), 3)
    v_c = model(x, t, cond)["x"]
    v_u = model(x, t, null)["x"]
    assert (v_c - v_u).abs().max() > 1e-3  # the condition matters, so the checks below can fail
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, 3)(x, t, cond)["x"], v_u)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, 3)(x, t, cond)["x"], v_c)
    for w in (-1.0, 0.5, 2.5, 7.0):
        torch.testing.assert_close(ClassifierFreeGuidance(model, w, 3)(x, t, cond)["x"], v_u + w * (v_c - v_u))
    # without a condition the wrapper is the model itself (its null branch)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 3.0, 3)(x, t, None)["x"], v_u)


def test_guidance_carries_extra_fields_and_mask():
    calls = []

    class Echo(torch.nn.Module):
        def forward(self, x_t, t, cond):
            calls.append({k: v.shape[0] for k, v in x_t.items()})
            return {"x": x_t["x"] * (1.0 + cond[:, None].to(x_t["x"].dtype)) * x_t["mask"][:, None]}

    B = 4
    x = {"x": torch.randn(B, 3, dtype=D), "mask": torch.tensor([1, 1, 0, 1]).bool()}
    cond = torch.tensor([1, 2, 3, 4])
    out = ClassifierFreeGuidance(Echo(), 2.0, 0)(x, torch.rand(B), cond)["x"]
    assert calls == [{"x": 2 * B, "mask": 2 * B}]  # both branches in one batch
    v_u, v_c = x["x"] * x["mask"][:, None], x["x"] * (1 + cond[:, None]) * x["mask"][:, None]
    torch.testing.assert_close(out, v_u + 2.0 * (v_c - v_u))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_drop_condition_drops_at_rate_p(p):
    n = 20000
    cond = torch.randint(0, 10, (n,))
    out = drop_condition(cond, p, 10)
    dropped = out == 10
    assert torch.equal(out[~dropped], cond[~dropped])
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), rate
    # multi-dimensional conditions (e.g. property vectors) are dropped whole, per example
    c2 = torch.randint(0, 5, (n, 3))
    o2 = drop_condition(c2, p, -1)
    row_dropped = (o2 == -1).all(1)
    assert torch.equal((o2 == -1).any(1), row_dropped)
    assert abs(row_dropped.double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_drop_condition_edge_cases():
    cond = torch.arange(100)
    assert drop_condition(cond, 0.0, 7) is cond
    assert drop_condition(None, 0.5, 7) is None
    assert (drop_condition(cond, 1.0, 7) == 7).all()


def test_state_source_takes_its_arguments_in_state_paths_order_and_the_old_one():
    per = {"atoms": CategoricalSource(3, "mask")}
    new, old = StateSource(GaussianSource(0.5), per), StateSource(per, GaussianSource(0.5))
    for s in (new, old):
        assert s.default.std == 0.5 and s.for_field("atoms") is per["atoms"]
    assert StateSource().default.std == 1.0 and StateSource(None, per).for_field("x").std == 1.0
