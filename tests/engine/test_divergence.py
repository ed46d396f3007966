"""A loss that leaps far above its running level without becoming NaN stops training at that step
(``trainer.divergence``), keeping the last checkpoint and naming a lower learning rate; the check
can be turned off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fmkit.engine import checkpoint as ck
from fmkit.errors import TrainingError
from reliability_helpers import TINY, clean_error, cli, isolate, squash
from torch import nn


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


class BlowsUp(nn.Module):
    """A working MLP whose output is multiplied by 1e8 from its ``at``-th forward call on: a loss that
    leaps by ~1e16 and stays finite."""

    def __init__(self, at: int) -> None:
        super().__init__()
        from fmkit.app.builtin.mlp import MLP
        from fmkit.app.builtin.toy import ToyDataset

        self.net = MLP.from_data(ToyDataset("moons", n=8).info, hidden=8, depth=1, time_dim=4)
        self.at, self.calls = at, 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        out = self.net(x_t, t, cond)
        return {k: v * 1e8 for k, v in out.items()} if self.calls >= self.at else out


def test_a_finite_loss_that_leaps_stops_training_keeping_the_last_checkpoint(tmp_path):
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.toy import ToyDataset

    opts = TrainerOptions(steps=20, batch_size=32, device="cpu", progress=False, checkpoint_every=4, log_every=1)
    tr = Trainer(BlowsUp(at=7), ToyDataset("moons", n=256), options=opts, run_dir=tmp_path / "run")
    with pytest.raises(TrainingError) as e:
        tr.fit()
    err = squash(e.value.render())
    assert "the loss diverged at step 7:" in err and "more than 1000 times its running level" in err, err
    assert "the weights of this step were not saved; the last checkpoint, step_000000004, is kept" in err, err
    assert "TrainerOptions(divergence=null)" in err and "TrainerOptions(lr=0.0001)" in err, err
    assert [p.name for p in ck.complete_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000000004"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_the_divergence_check_can_be_turned_off(tmp_path):
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.toy import ToyDataset

    opts = TrainerOptions(steps=8, batch_size=32, device="cpu", progress=False, divergence=None)
    Trainer(BlowsUp(at=3), ToyDataset("moons", n=256), options=opts).fit()  # no error: the user asked for it


def test_lr_1e4_without_clipping_stops_with_the_step_and_a_fix():
    """A diverging loss (lr 1e4, no clipping) stops training with the step and a fix, instead of
    training on without a word and failing with an internal error in the final evaluation."""
    Path("tiny.yaml").write_text(TINY + "eval: {metrics: [{name: w2, num_reference: 64}], num_samples: 64}\n")
    r = cli("train", "tiny.yaml", "--out", "run", "--set", "trainer.lr=1e4", "--set", "trainer.grad_clip=null")
    clean_error(r, "the loss diverged at step", "no checkpoint was written yet", "where: run",
                "fix: lower trainer.lr (e.g. --set trainer.lr=1000)", "--set trainer.divergence=null")
