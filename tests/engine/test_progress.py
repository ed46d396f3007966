"""Long loops are never silent: with the bar off (``trainer.progress=false``, or output to a file) the trainer
writes a one-line heartbeat (step/total, loss, steps/s, ETA) every ``trainer.heartbeat_s`` seconds on rank 0,
and nothing when that is 0."""

from __future__ import annotations

import io
import re

import fmkit
import pytest
from fmkit import MLP
from fmkit.app.builtin.toy import ToyDataset, ToySource
from fmkit.engine.progress import ProgressBar, clock

LINE = re.compile(r"^training step (\d+)/12 \(\d+%\), loss (\d+\.\d{4}), [\d.]+ steps/(s|min), elapsed \d+:\d\d"
                  r"(, eta \d+:\d\d)?$")


def fit(tmp_path, capsys, **opts) -> list[str]:
    o = fmkit.TrainerOptions(steps=12, batch_size=32, log_every=5, checkpoint_every=10**6, device="cpu",
                             ema_decay=None, **opts)
    tr = fmkit.Trainer(MLP(2, hidden=16, depth=1), ToyDataset("moons", n=512, seed=0), source=ToySource("gaussian"),
                       options=o, run_dir=tmp_path, seed=0)
    capsys.readouterr()
    tr.fit()
    return capsys.readouterr().out.splitlines()


def test_a_tiny_interval_gives_a_heartbeat_per_step_with_loss_and_eta(tmp_path, capsys):
    lines = fit(tmp_path, capsys, progress=False, heartbeat_s=1e-9)
    beats = [m for m in map(LINE.match, lines) if m]
    assert len(beats) == len(lines), lines  # nothing else is printed
    steps = [int(m.group(1)) for m in beats]
    assert steps[:12] == list(range(1, 13)) and steps[12:] == [12], steps  # each step, then the end once more
    assert all(m.group(4) for m in beats if int(m.group(1)) < 12), "an ETA until the last step"
    assert all(float(m.group(2)) > 0 for m in beats)


def test_heartbeat_zero_or_a_long_interval_prints_nothing(tmp_path, capsys):
    assert fit(tmp_path / "off", capsys, progress=False, heartbeat_s=0) == []
    assert fit(tmp_path / "long", capsys, progress=False, heartbeat_s=3600) == []  # a short run stays quiet


def test_negative_heartbeat_is_refused():
    with pytest.raises(ValueError, match="heartbeat_s"):
        fmkit.TrainerOptions(heartbeat_s=-1)


def test_the_heartbeat_stands_in_for_a_bar_that_is_on_but_has_no_terminal():
    out = io.StringIO()
    with ProgressBar(3, enabled=True, description="classifier", heartbeat_s=1e-9, stream=out) as bar:
        for i in range(1, 4):
            bar.update(i, loss=1.0 / i)
    lines = out.getvalue().splitlines()  # pytest's captured stdout is no terminal
    assert lines[0].startswith("classifier step 1/3 (33%), loss 1.0000, ") and "eta" in lines[0], lines
    assert lines[-1].startswith("classifier step 3/3 (100%), loss 0.3333, ") and "eta" not in lines[-1], lines


def test_clock_reads_as_minutes_or_hours():
    assert (clock(5), clock(125), clock(3723)) == ("0:05", "2:05", "1:02:03")
