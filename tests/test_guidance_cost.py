"""Classifier-free guidance has one entry point (``fmkit.flow.guidance.with_guidance``) on every sampling
route, and at scale 1 (the plain conditional model, e.g. ``recipes/images_cifar10.yaml``) a sample costs
the model calls of an unguided one; any other scale runs both branches, as one batch of 2B."""

from __future__ import annotations

from types import SimpleNamespace

import fmkit
import pytest
import torch
from fmkit import MLP
from fmkit.flow.guidance import ClassifierFreeGuidance, with_guidance
from fmkit.flow.paths import AffinePath, CondOTScheduler, StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import FixedStepSolver
from fmkit.flow.sources import GaussianSource, StateSource
from torch import nn

K = 3  # condition classes: labels 0..2, the null class is 3
STEPS = 4


class Counting(nn.Module):
    """A conditional model that records the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP(2, hidden=16, depth=1, time_dim=8, num_classes=K)
        self.rows: list[int] = []

    def forward(self, x_t, t, cond=None):
        self.rows.append(t.shape[0])
        return self.net(x_t, t, cond)


def sample_with(scale: float | None, n: int = 10) -> list[int]:
    """The rows of each model call when ``n`` conditional samples are drawn at guidance ``scale``."""
    model = Counting()
    template = {"x": torch.zeros(n, 2), "cond": torch.arange(n) % K}
    generate(with_guidance(model, scale, K), StatePath(AffinePath(CondOTScheduler())), StateSource(GaussianSource()),
             FixedStepSolver("euler", STEPS), template)
    return model.rows


def test_at_scale_one_a_sample_costs_what_an_unguided_one_does():
    unguided = sample_with(None)
    assert unguided == [10] * STEPS
    assert sample_with(1.0) == unguided  # the same calls, of the same size
    assert sample_with(2.0) == [20] * STEPS  # both branches: the count above can tell the difference


def test_the_entry_point_returns_the_conditional_model_itself_at_scale_one():
    model = Counting()
    assert with_guidance(model, None, K) is model and with_guidance(model, 1.0, K) is model
    assert isinstance(with_guidance(model, 0.0, K), ClassifierFreeGuidance)
    with pytest.raises(ValueError, match="null class"):  # no unconditional branch to mix with
        with_guidance(model, 2.0, None)
    # the wrapper built directly does not pay for the second branch at scale 1 either, and gives v_cond
    x, t, cond = {"x": torch.randn(5, 2)}, torch.rand(5), torch.arange(5) % K
    out = ClassifierFreeGuidance(model, 1.0, K)(x, t, cond)["x"]
    assert model.rows == [5]
    torch.testing.assert_close(out, model.net(x, t, cond)["x"])


def trainer_rows(scale: float | None, chunk: int = 1000) -> list[int]:
    model = Counting()
    ds = fmkit.TensorDataset({"x": torch.randn(64, 2), "cond": torch.arange(64) % K}, num_cond_classes=K)
    tr = fmkit.Trainer(model, ds, solver=FixedStepSolver("euler", STEPS),
                       options=dict(steps=1, batch_size=16, device="cpu", progress=False, ema_decay=None),
                       eval_options=dict(guidance_scale=scale, chunk_size=chunk))
    tr.sample(10)
    return model.rows


def test_the_trainers_evaluation_samples_through_the_same_entry_point():
    assert trainer_rows(1.0) == trainer_rows(None) == [10] * STEPS
    assert trainer_rows(2.0) == [20] * STEPS
    assert trainer_rows(None, chunk=4) == [4] * STEPS + [4] * STEPS + [2] * STEPS  # eval.chunk_size per solver call


def test_sample_evaluate_and_reflow_take_the_same_entry_point():
    """``fmkit sample``/``evaluate`` and ``fmkit reflow`` guide through ``fmkit.app.inference.guided``, which
    hands ``--guidance`` or the recipe's eval.guidance_scale to ``with_guidance``."""
    from fmkit.app.inference import guided
    from fmkit.errors import FmkitError

    model = Counting()
    rec = SimpleNamespace(eval=SimpleNamespace(guidance_scale=1.0))
    assert guided(model, rec, K) == (model, 1.0)  # the recipe's scale 1: the model itself, reported as guided
    g, scale = guided(model, rec, K, 3.0)
    assert isinstance(g, ClassifierFreeGuidance) and g.scale == scale == 3.0 and g.null_class == K
    with pytest.raises(FmkitError, match="--guidance needs a conditional dataset"):
        guided(model, rec, None, 2.0)
    with pytest.raises(FmkitError, match="eval.guidance_scale needs a conditional dataset"):
        guided(model, rec, None)
