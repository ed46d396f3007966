"""The likelihood of data as its dataset declares it: continuous data as it is, values on a
grid (8-bit pixels) dequantised, anything undeclared refused. Checked against the closed form of a
flow whose density is known: the straight-line map z -> (1 - t + t s) z + t m carries N(0, 1) to
N(m, s^2) per dimension, so the dequantised NLL of a grid value c is, in expectation over the uniform
noise U in its bin of width w,  0.5 log(2 pi s^2) + ((c - m)^2 + w^2 / 12) / (2 s^2) - log w  nats.

Scoring 8-bit images at their bin centres instead is meaningless: a density at discrete points grows
without bound as the model fits them, down to negative bits/dim.
"""

from __future__ import annotations

import math

import pytest
import torch
from fmkit import AdaptiveSolver, GaussianSource
from fmkit.errors import FmkitError
from fmkit.flow.likelihood import Dequantization, data_log_likelihood, declared_likelihood, log_likelihood


def gaussian_flow(m: float, s: float):
    """The velocity of x_t = (1 - t + t s) z + t m (z ~ N(0, I)): at t = 1 the density is N(m, s^2 I)."""

    def velocity(x: dict, t: torch.Tensor) -> dict:
        a = 1 - t + t * s
        z = (x["x"] - t * m) / a
        return {"x": (s - 1) * z + m}

    return velocity


def closed_form_bpd(c: torch.Tensor, m: float, s: float, w: float) -> torch.Tensor:
    """Expected dequantised bits/dim of grid values ``c`` [N, D] under N(m, s^2), per example."""
    nats = 0.5 * math.log(2 * math.pi * s * s) + ((c.double() - m) ** 2 + w * w / 12) / (2 * s * s) - math.log(w)
    return nats.mean(1) / math.log(2.0)


SOLVER = AdaptiveSolver("dopri5", rtol=1e-6, atol=1e-6)


def test_dequantised_bits_per_dim_match_the_closed_form():
    deq = Dequantization(levels=4, low=-1.0, high=1.0)  # centres -0.75, -0.25, 0.25, 0.75; w = 0.5
    g = torch.Generator().manual_seed(0)
    c = -0.75 + 0.5 * torch.randint(0, 4, (4000, 2), generator=g).double()
    m, s = 0.1, 0.5
    res = data_log_likelihood(gaussian_flow(m, s), {"x": c}, GaussianSource(), SOLVER, deq, estimator="exact",
                              generator=torch.Generator().manual_seed(1))
    want = closed_form_bpd(c, m, s, deq.width).mean().item()
    assert abs(res.bits_per_dim.mean().item() - want) < 0.03, (res.bits_per_dim.mean().item(), want)


def test_a_sharp_model_at_the_bin_centres_is_never_below_zero_bits():
    """A model concentrated on one bin centre (s = 0.02): its density there is huge, so the undequantised
    protocol gives negative bits/dim; dequantised, their expectation over the noise bounds -log2 P(u) >= 0,
    and the mean over examples matches the closed form."""
    deq = Dequantization(levels=4, low=-1.0, high=1.0)
    c = torch.full((500, 2), 0.25, dtype=torch.float64)
    m, s = 0.25, 0.02
    flow = gaussian_flow(m, s)
    old = log_likelihood(flow, {"x": c}, GaussianSource(), SOLVER, estimator="exact")
    assert old.bits_per_dim.mean().item() < -3  # what the old protocol printed: no bits/dim can be negative
    new = data_log_likelihood(flow, {"x": c}, GaussianSource(), SOLVER, deq, estimator="exact",
                              generator=torch.Generator().manual_seed(2))
    assert new.bits_per_dim.mean().item() > 0  # (one draw of one example may dip below: the bound is in expectation)
    want = closed_form_bpd(c, m, s, deq.width).mean().item()
    assert abs(new.bits_per_dim.mean().item() - want) / want < 0.1, (new.bits_per_dim.mean().item(), want)


def test_continuous_data_is_scored_as_it_is():
    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = data_log_likelihood(gaussian_flow(0.0, 1.0), {"x": x}, GaussianSource(), SOLVER, None, estimator="exact")
    exact = (-0.5 * x.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(res.log_prob.double(), exact, atol=1e-4, rtol=0)


def test_datasets_declare_their_likelihood_or_are_refused():
    assert declared_likelihood({"likelihood": "continuous"}, "dataset 'a'") is None
    deq = declared_likelihood({"likelihood": {"dequantize": {"levels": 256, "low": -1.0, "high": 1.0}}}, "d")
    assert deq == Dequantization(256, -1.0, 1.0) and deq.nats_per_dim == pytest.approx(math.log(128.0))
    with pytest.raises(FmkitError) as e:
        declared_likelihood({}, "dataset 'grid'")
    assert "dataset 'grid' does not declare what its log-likelihood is" in e.value.what
    assert "DataInfo.meta['likelihood']" in e.value.fix
    for bad in ({"dequantize": {"levels": 1, "low": 0, "high": 1}}, {"dequantize": {"levels": 4}}):
        with pytest.raises(FmkitError, match="declares a dequantisation that is not one"):
            declared_likelihood({"likelihood": bad}, "d")
    with pytest.raises(FmkitError, match="which fmkit does not know"):
        declared_likelihood({"likelihood": "discrete"}, "d")
