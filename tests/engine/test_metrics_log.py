"""What the trainer logs for throughput: samples/s = steps/s x global batch, and data_wait, the share of
wall time the host spent waiting for batches (the figure that says whether the data pipeline or the
step sets the pace of a run)."""

from __future__ import annotations

import time

import fmkit
import pytest
from fmkit import MLP
from fmkit.app.builtin.toy import ToyDataset, ToySource
from fmkit.engine.metrics_log import read_metrics


def train(tmp_path, delay: float) -> dict[str, list[tuple[int, float]]]:
    opts = fmkit.TrainerOptions(steps=40, batch_size=32, log_every=10, checkpoint_every=10**6, progress=False,
                                device="cpu", ema_decay=None)
    tr = fmkit.Trainer(MLP(2, hidden=16, depth=1), ToyDataset("moons", n=512, seed=0), source=ToySource("gaussian"),
                       options=opts, run_dir=tmp_path, seed=0)
    if delay:
        fetch = tr.next_batch

        def slow_batch():
            time.sleep(delay)  # a data pipeline slower than the step
            return fetch()

        tr.next_batch = slow_batch  # type: ignore[method-assign]
    tr.fit()
    return read_metrics(tmp_path)


def test_samples_per_s_is_steps_per_s_times_the_batch(tmp_path):
    m = train(tmp_path, 0.0)
    steps = [s for s, _ in m["steps_per_s"]]
    assert steps == [10, 20, 30, 40] and [s for s, _ in m["samples_per_s"]] == steps
    for (_, sps), (_, mps) in zip(m["steps_per_s"], m["samples_per_s"], strict=True):
        assert mps == pytest.approx(32 * sps, rel=1e-6)
    assert "peak_mem_mib" not in m  # CUDA only


def test_data_wait_tells_a_slow_pipeline_from_a_fast_one(tmp_path):
    fast = [v for _, v in train(tmp_path / "fast", 0.0)["data_wait"]]
    slow = [v for _, v in train(tmp_path / "slow", 0.05)["data_wait"]]
    assert len(fast) == len(slow) == 4
    assert all(0.0 <= v < 0.5 for v in fast), fast  # in-memory toy batches: the step dominates
    assert all(0.8 < v <= 1.0 for v in slow), slow  # 50 ms per batch against a ~1 ms step


def test_progress_bar_shows_the_loss_from_the_first_step_on_a_cpu(tmp_path, monkeypatch):
    """On a CPU the bar shows the log window's mean loss so far at every step: the GPU-sized recipe
    runs ~30 s a step here, and the bar read `loss -` until its first log step, 50 minutes in."""
    from fmkit.engine.progress import ProgressBar

    shown: list[tuple[int, float | None]] = []
    monkeypatch.setattr(ProgressBar, "update", lambda self, step, loss=None, sps=None: shown.append((step, loss)))
    opts = fmkit.TrainerOptions(steps=4, batch_size=32, log_every=100, checkpoint_every=10**6, progress=True,
                                device="cpu", ema_decay=None)
    tr = fmkit.Trainer(MLP(2, hidden=16, depth=1), ToyDataset("moons", n=512, seed=0), source=ToySource("gaussian"),
                       options=opts, run_dir=tmp_path, seed=0)
    steps: list[float] = []
    orig = tr._gradients

    def record(window):
        out = orig(window)
        steps.append(float(out[0]))
        return out

    tr._gradients = record  # type: ignore[method-assign]
    tr.fit()
    assert [s for s, _ in shown] == [1, 2, 3, 4]
    for k, (_, loss) in enumerate(shown):  # the running mean of steps 1..k+1 (step 4 is the log step)
        assert loss == pytest.approx(sum(steps[: k + 1]) / (k + 1), rel=1e-6)
