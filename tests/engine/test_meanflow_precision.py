"""MeanFlow's JVP on the engine's other paths: bf16 autocast and torch.compile both work (no refusal
is needed): the same step gives the fp32 eager loss and gradients, to bf16's precision or to round-off."""

from __future__ import annotations

import functools

import fmkit
import pytest
import torch


def _trainer(**options) -> fmkit.Trainer:
    torch.manual_seed(0)
    model = fmkit.MLP(2, hidden=32, depth=2, time_dim=16, two_times=True)
    opts = {"steps": 3, "batch_size": 32, "device": "cpu", "progress": False, "ema_decay": None, **options}
    return fmkit.Trainer(model, fmkit.TensorDataset(torch.randn(256, 2) * 2 + 1), options=opts, seed=0,
                         objective={"name": "meanflow", "adaptive_p": 0.0, "equal_fraction": 0.25})


def _step(tr: fmkit.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one fixed batch (fixed draws) and the flat gradient it gives."""
    torch.manual_seed(1)
    batch = {"x": torch.randn(32, 2) * 2 + 1}
    tr.optimizer.zero_grad()
    loss, _ = tr.loss(batch)
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.reshape(-1) for p in tr.model.parameters()])


def test_bf16_autocast_runs_the_jvp_and_stays_near_fp32():
    loss32, g32 = _step(_trainer(precision="fp32"))
    tr = _trainer(precision="bf16")
    loss16, g16 = _step(tr)
    assert torch.isfinite(loss16) and abs(loss16 - loss32) / loss32 < 0.03, (loss16, loss32)
    cosine = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cosine > 0.99, cosine
    assert (g16 - g32).abs().max() > 0  # bf16 did change the numbers: it ran in bf16
    tr.fit()  # and trains
    assert tr.step == 3


def test_torch_compile_traces_the_jvp(monkeypatch):
    """torch.compile with the aot_eager backend: dynamo and AOTAutograd trace the forward-mode JVP
    inside the module (what the default inductor backend also compiles, measured by hand to the same
    loss; its C++ build takes a minute or more on a CPU, too long for the suite)."""
    import fmkit.engine.setup as setup

    monkeypatch.setattr(setup.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    loss_e, g_e = _step(_trainer())
    tr = _trainer(compile=True)
    assert hasattr(tr.train_model, "_orig_mod")  # compiled
    loss_c, g_c = _step(tr)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)
    tr.fit()
    assert tr.step == 3


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_step_is_finite_over_a_few_steps(precision):
    tr = _trainer(precision=precision, steps=5)
    tr.fit()
    x = tr.sample(64, solver=fmkit.MeanFlowSolver(1))["x"]
    assert torch.isfinite(x).all()


def test_channels_last_stays_off_for_meanflow_and_is_refused_when_asked():
    """torch's forward-mode GroupNorm fails on channels-last tensors, so the objective says so: null
    resolves to off where it would be on (a CUDA conv model), true is refused before training."""
    from fmkit.engine.setup import use_channels_last
    from fmkit.errors import TrainingError
    from fmkit.flow.objectives import CFMObjective, MeanFlowObjective

    path = fmkit.AffinePath(fmkit.CondOTScheduler())
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    cuda = torch.device("cuda")  # only its type is read
    assert use_channels_last(conv, cuda, None, CFMObjective(path)) is True
    assert use_channels_last(conv, cuda, None, MeanFlowObjective(path)) is False
    with pytest.raises(TrainingError, match="cannot run on channels-last") as e:
        _trainer(channels_last=True)
    assert e.value.where == "trainer.channels_last"
