"""fmkit.CFMObjective is the CFM loss of Lipman et al. 2022 (eq. 23): checked against the loss written
out by hand on the same draws (masked MSE per field, cross-entropy for a categorical field), with its
per-field weights, condition dropout to the null class, a given x0, and the Objective protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fmkit
from fmkit import AffinePath, CondOTScheduler, DiscretePath, GaussianSource, IndependentCoupling, StatePath, TensorModel
from fmkit.flow.couplings import Coupling
from fmkit.flow.objectives import CFMObjective, Objective


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(3, 2)

    def forward(self, x, t):
        return self.f(torch.cat([x, t[:, None]], 1))


class Recorder(nn.Module):
    """v = a * x_t per field (a learnable scalar) that keeps the ``cond`` it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))
        self.conds: list = []

    def forward(self, x_t, t, cond=None):
        self.conds.append(cond)
        return {k: self.a * v for k, v in x_t.items() if k in ("x", "y")}


def test_the_loss_is_the_masked_mse_to_the_conditional_velocity_on_a_tiny_example():
    """Two examples of 3 points in 1-D, the second's last point padding: x0, t and the model fixed, so
    the loss is the mean over real points of (a x_t - (x1 - x0))^2, averaged over the two examples."""
    x1 = torch.tensor([[[1.0], [2.0], [3.0]], [[-1.0], [0.0], [9.0]]])
    x0 = torch.tensor([[[0.0], [1.0], [-1.0]], [[1.0], [1.0], [5.0]]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    t = torch.tensor([0.5, 0.25])
    obj = CFMObjective(AffinePath(CondOTScheduler()), time=lambda n, device: t)
    model = Recorder()
    total, per_field = obj(model, {"x": x1, "mask": mask}, x0={"x": x0, "mask": mask})
    # x_t = x0 + t (x1 - x0); u_t = x1 - x0; model: 0.5 x_t
    # example 1: x_t = [.5, 1.5, 1], u = [1, 1, 4], errors [-.75, -.25, -3.5] -> (.5625 + .0625 + 12.25) / 3
    # example 2: x_t = [.5, .75, -], u = [-2, -1, -], errors [2.25, 1.375]   -> (5.0625 + 1.890625) / 2
    by_hand = ((0.5625 + 0.0625 + 12.25) / 3 + (5.0625 + 1.890625) / 2) / 2
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    assert set(per_field) == {"x"} and per_field["x"].item() == pytest.approx(by_hand, rel=1e-6)
    total.backward()
    assert model.a.grad is not None and model.a.grad != 0  # the loss reaches the weights


def test_the_loss_is_the_mse_to_the_conditional_velocity_of_a_network():
    torch.manual_seed(0)
    net, path = Net(), AffinePath(CondOTScheduler())
    x1 = torch.randn(64, 2) + 3
    x0, t = torch.randn(64, 2), torch.rand(64)
    total, per_field = fmkit.CFMObjective(path, time=lambda n, device: t)(TensorModel(net), {"x": x1}, x0={"x": x0})
    ps = path.sample(x0, x1, t)
    by_hand = (net(ps.x_t, t) - ps.dx_t).pow(2).mean()
    torch.testing.assert_close(total, by_hand, rtol=1e-6, atol=1e-7)
    assert set(per_field) == {"x"}


def test_it_draws_x0_and_t_itself_and_weighs_fields():
    net, path = Net(), AffinePath(CondOTScheduler())
    x1 = {"x": torch.randn(32, 2)}
    torch.manual_seed(1)
    a, _ = CFMObjective(path, GaussianSource(), IndependentCoupling())(TensorModel(net), x1)
    torch.manual_seed(1)  # x0 ~ N(0, I) then t ~ U(0, 1): the same draws, by hand
    x0, t = torch.randn(32, 2), torch.rand(32)
    ps = path.sample(x0, x1["x"], t)
    torch.testing.assert_close(a, (net(ps.x_t, t) - ps.dx_t).pow(2).mean(), rtol=1e-6, atol=1e-7)
    torch.manual_seed(1)
    b, _ = CFMObjective(path, weights={"x": 0.25})(TensorModel(net), x1)
    torch.testing.assert_close(b, 0.25 * a)


def test_the_total_is_the_weighted_sum_of_the_fields():
    torch.manual_seed(0)
    x1 = {"x": torch.randn(8, 3), "y": torch.randn(8, 5) * 4}
    x0 = {"x": torch.randn(8, 3), "y": torch.randn(8, 5)}
    t = torch.rand(8)
    obj = CFMObjective(AffinePath(CondOTScheduler()), time=lambda n, device: t, weights={"x": 2.0, "y": 0.0})
    total, per_field = obj(Recorder(), x1, x0=x0)
    assert per_field["y"] > 0  # a field of weight 0 is still reported
    torch.testing.assert_close(total, 2.0 * per_field["x"])
    unit, parts = CFMObjective(AffinePath(CondOTScheduler()), time=lambda n, device: t)(Recorder(), x1, x0=x0)
    torch.testing.assert_close(unit, parts["x"] + parts["y"])


def test_condition_dropout_replaces_labels_by_the_null_class_only():
    torch.manual_seed(0)
    cond = torch.randint(0, 10, (4000,))
    x1 = {"x": torch.randn(4000, 2), "cond": cond}
    model = Recorder()
    CFMObjective(AffinePath(CondOTScheduler()), cond_dropout=0.3, null_class=10)(model, x1)
    seen = model.conds[-1]
    dropped = seen == 10
    assert torch.equal(seen[~dropped], cond[~dropped])  # kept labels are unchanged
    assert 0.27 < dropped.float().mean().item() < 0.33
    CFMObjective(AffinePath(CondOTScheduler()), cond_dropout=1.0, null_class=10)(model, x1)
    assert (model.conds[-1] == 10).all()
    CFMObjective(AffinePath(CondOTScheduler()))(model, x1)
    assert model.conds[-1] is cond  # no dropout: the labels as given


def test_a_given_x0_is_used_as_is_and_the_coupling_is_not_asked():
    class Refuses(Coupling):
        def pair(self, x0, x1, cond=None):
            raise AssertionError("the coupling was asked although x0 was given")

    torch.manual_seed(0)
    x1, x0, t = torch.randn(16, 2), torch.randn(16, 2), torch.rand(16)
    obj = CFMObjective(AffinePath(CondOTScheduler()), coupling=Refuses(), time=lambda n, device: t)
    total, _ = obj(Recorder(), {"x": x1}, x0={"x": x0})
    torch.testing.assert_close(total, (0.5 * (x0 + t[:, None] * (x1 - x0)) - (x1 - x0)).pow(2).mean())


def test_a_categorical_field_gets_the_masked_cross_entropy_of_its_logits():
    """A discrete field's loss is the cross-entropy of the model's logits against x1's classes, over the
    real positions; the continuous field beside it keeps its MSE."""
    torch.manual_seed(0)
    b, n, k = 6, 5, 4
    x1 = {"pos": torch.randn(b, n, 2), "atoms": torch.randint(0, k, (b, n)), "mask": torch.rand(b, n) > 0.3}
    x1["mask"][:, 0] = True
    logits = torch.randn(b, n, k)

    class Model(nn.Module):
        def forward(self, x_t, t, cond=None):
            return {"pos": torch.zeros_like(x_t["pos"]), "atoms": logits}

    path = StatePath(AffinePath(CondOTScheduler()), {"atoms": DiscretePath("mask")})
    source = fmkit.StateSource(GaussianSource(), {"atoms": fmkit.CategoricalSource(k, "mask")})
    _, per_field = CFMObjective(path, source)(Model(), x1)
    ce = F.cross_entropy(logits.reshape(-1, k), x1["atoms"].reshape(-1), reduction="none").reshape(b, n)
    m = x1["mask"].float()
    torch.testing.assert_close(per_field["atoms"], ((ce * m).sum(1) / m.sum(1)).mean())


def test_it_meets_the_objective_protocol():
    assert isinstance(CFMObjective(AffinePath(CondOTScheduler())), Objective)
    assert not isinstance(object(), Objective)
