"""Training-time distributions: each sampler's moments and quantiles against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from fmkit.flow.time_sampling import sample_time

N = 200_000  # standard error of a mean of U(0,1) draws: 0.29 / sqrt(N) = 6.5e-4


def draw(kind: str, **kw) -> torch.Tensor:
    torch.manual_seed(0)
    t = sample_time(N, kind, **kw)
    assert t.shape == (N,) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    return t


def test_uniform():
    t = draw("uniform")
    assert float(t.mean()) == pytest.approx(0.5, abs=3e-3)
    assert float((t < 0.25).float().mean()) == pytest.approx(0.25, abs=3e-3)


def test_logit_normal_median_is_sigmoid_of_the_mean():
    t = draw("logit_normal", mean=1.0, std=0.5)
    assert float(t.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=3e-3)


def test_beta_2_1_has_density_2t():
    t = draw("beta", alpha=2.0, beta=1.0)
    assert float(t.mean()) == pytest.approx(2 / 3, abs=3e-3)  # E = a / (a + b)
    assert float((t < 0.5).float().mean()) == pytest.approx(0.25, abs=3e-3)  # CDF t^2
    assert float((t > 0.9).float().mean()) == pytest.approx(0.19, abs=3e-3)


def test_eps_clamps_and_unknown_kind_is_refused():
    torch.manual_seed(0)
    t = sample_time(1000, "beta", alpha=5.0, beta=0.2, eps=1e-3)
    assert float(t.max()) <= 1 - 1e-3 + 1e-7 and float(t.max()) > 0.99  # float32 of 0.999; Beta(5, 0.2) piles up at 1
    with pytest.raises(ValueError, match="beta"):
        sample_time(4, "gamma")


def test_recipe_options():
    from fmkit.app.recipe import TrainerOptions
    from pydantic import ValidationError

    assert TrainerOptions(time_sampler="beta", time_alpha=2.0).time_beta == 1.0
    with pytest.raises(ValidationError):
        TrainerOptions(time_sampler="beta", time_alpha=0.0)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "beta"])
def test_no_value_is_read_back_to_the_host(monkeypatch, kind):
    """sample_time runs every training step: a tensor turned into a Python bool (as torch.distributions'
    argument checks do) would be a host-device sync per step on a GPU."""
    def no_read(self):
        raise AssertionError("a tensor was read back to the host")

    monkeypatch.setattr(torch.Tensor, "__bool__", no_read)
    assert sample_time(8, kind, alpha=2.0, beta=1.0).shape == (8,)
