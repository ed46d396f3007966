"""Self-conditioning (Chen et al. 2022) in the core: what the CFM objective and the sampler hand the model.

- training with probability 1: a first call without gradient and without an estimate, then a call that
  reads that call's x1 estimate (a continuous field's x1 from the path's prediction, a categorical field's
  softmax); with probability 0 the model is called once, without the keyword;
- sampling: each velocity call reads the estimate of the call before it (none at the first), under
  classifier-free guidance too (both branches);
- what is refused: a self-conditioned model trained without self-conditioning and the reverse, and an
  exact log-likelihood of a self-conditioned field.
"""

from __future__ import annotations

import pytest
import torch
from fmkit.errors import FmkitError, ModelError
from fmkit.flow.guidance import ClassifierFreeGuidance
from fmkit.flow.likelihood import log_likelihood
from fmkit.flow.objectives import CFMObjective
from fmkit.flow.paths import AffinePath, CondOTScheduler, DiscretePath, StatePath
from fmkit.flow.sampling import model_velocity
from fmkit.flow.self_conditioning import self_conditioned, x1_estimate
from fmkit.flow.solvers import FixedStepSolver
from fmkit.flow.sources import GaussianSource
from torch import nn

K = 4


class Recorder(nn.Module):
    """A self-conditioned toy: v = w * x (+ the estimate's mean when given), logits from a linear map; records
    every call's self_cond and whether gradients were on."""

    self_conditioned = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.lin = nn.Linear(1, K)
        self.calls: list[tuple[dict | None, bool]] = []
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t, t, cond=None, *, self_cond=None):
        self.calls.append((None if self_cond is None else {k: v.clone() for k, v in self_cond.items()},
                           torch.is_grad_enabled()))
        self.inputs.append((x_t["x"].detach().clone(), t.detach().clone()))
        out = {"x": self.w * x_t["x"]}
        if self_cond is not None:
            out["x"] = out["x"] + self_cond["x"].mean()
        if "a" in x_t:
            out["a"] = self.lin(x_t["a"].float()[..., None]) * self.w
        return out


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x_t, t, cond=None):
        return {"x": self.w * x_t["x"]}


def paths() -> StatePath:
    return StatePath(AffinePath(CondOTScheduler()), {"a": DiscretePath("mask")})


def test_a_self_conditioned_batch_reads_the_first_passes_x1_estimate():
    torch.manual_seed(0)
    x1 = {"x": torch.randn(6, 3), "a": torch.randint(0, K, (6, 5))}
    model = Recorder()
    obj = CFMObjective(paths(), self_condition=1.0)
    assert obj.training_module(model) is model
    total, _ = obj(model, x1)
    total.backward()
    (first, grad_first), (second, grad_second) = model.calls
    assert first is None and not grad_first and grad_second
    # the estimate the second call read: x1^ = x_t + (1 - t) v with v = w x_t (CondOT, velocity prediction)
    (x_t, t), (x_t2, t2) = model.inputs
    assert torch.equal(x_t, x_t2) and torch.equal(t, t2)
    torch.testing.assert_close(second["x"], x_t + (1 - t)[:, None] * 0.5 * x_t)
    assert second["a"].shape == (6, 5, K)  # p(x1 | x_t) over the K classes
    torch.testing.assert_close(second["a"].sum(-1), torch.ones(6, 5))
    assert model.w.grad is not None and model.w.grad != 0


def test_the_x1_estimate_of_each_kind_of_field():
    t = torch.tensor([0.25, 0.5])
    x_t = {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "a": torch.tensor([[0, 1], [2, 3]])}
    logits = torch.randn(2, 2, K)
    pred = {"x": torch.tensor([[4.0, 4.0], [2.0, 0.0]]), "a": logits}
    est = x1_estimate(paths(), pred, x_t, t)
    torch.testing.assert_close(est["x"], x_t["x"] + (1 - t)[:, None] * pred["x"])  # x_t + (1 - t) v
    torch.testing.assert_close(est["a"], logits.softmax(-1))
    x1_path = StatePath(AffinePath(CondOTScheduler(), "x1"))
    assert torch.equal(x1_estimate(x1_path, {"x": pred["x"]}, {"x": x_t["x"]}, t)["x"], pred["x"])


def test_probability_zero_calls_the_model_once_without_the_keyword():
    obj = CFMObjective(StatePath(AffinePath(CondOTScheduler())))
    total, _ = obj(Plain(), {"x": torch.randn(4, 2)})  # Plain.forward takes no self_cond: it would fail
    assert torch.isfinite(total)


def test_model_and_objective_must_agree():
    with pytest.raises(ModelError, match="self_condition: true"):
        CFMObjective(paths(), self_condition=0.5).training_module(Plain())
    with pytest.raises(ModelError, match="objective.self_condition"):
        CFMObjective(paths()).training_module(Recorder())
    assert self_conditioned(ClassifierFreeGuidance(Recorder(), 2.0, 3)) and not self_conditioned(Plain())


def test_sampling_hands_each_call_the_previous_estimate():
    model = Recorder()
    path = StatePath(AffinePath(CondOTScheduler()))
    v = model_velocity(model, path, None, None)
    assert v.self_conditioned
    x = {"x": torch.randn(3, 2)}
    with torch.no_grad():
        FixedStepSolver("euler", 3).solve(v, x)
    calls = [c for c, _ in model.calls]
    assert calls[0] is None and len(calls) == 3
    # call 2 read x1^ of call 1: x_0 + (1 - 0) * v_1 with v_1 = w * x_0
    torch.testing.assert_close(calls[1]["x"], x["x"] + 0.5 * x["x"])
    assert not getattr(model_velocity(Plain(), path, None, None), "self_conditioned")


def test_guidance_hands_both_branches_the_estimate():
    model = Recorder()
    guided = ClassifierFreeGuidance(model, 2.0, null_class=3)
    sc = {"x": torch.randn(2, 2)}
    guided({"x": torch.randn(2, 2)}, torch.rand(2), torch.tensor([0, 1]), self_cond=sc)
    seen = model.calls[-1][0]
    assert torch.equal(seen["x"], torch.cat([sc["x"], sc["x"]]))


def test_no_exact_likelihood_of_a_self_conditioned_field():
    v = model_velocity(Recorder(), StatePath(AffinePath(CondOTScheduler())), None, None)
    with pytest.raises(FmkitError, match="self-conditioned"):
        log_likelihood(v, {"x": torch.randn(2, 2)}, GaussianSource(), FixedStepSolver("euler", 2))
