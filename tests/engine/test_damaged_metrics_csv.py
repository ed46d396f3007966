"""A run's metrics.csv damaged while or after training: deleted mid-run it is written again with every
row; made unwritable, training stops with a checkpoint and a fix; garbage rows are skipped with a
note by ``fmkit curves`` and dropped by a resume.
"""

from __future__ import annotations

from pathlib import Path

import fmkit
import pytest
from fmkit.engine import checkpoint as ck
from reliability_helpers import TINY, clean_error, cli, isolate, squash


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def _tiny_trainer(run_dir: Path, callbacks=(), **options):
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.mlp import MLP
    from fmkit.app.builtin.toy import ToyDataset

    ds = ToyDataset("moons", n=256)
    opts = TrainerOptions(**{"steps": 6, "batch_size": 32, "device": "cpu", "progress": False, "log_every": 1,
                             "checkpoint_every": 3, **options})
    return Trainer(MLP.from_data(ds.info, hidden=8, depth=1, time_dim=4), ds, run_dir=run_dir, options=opts,
                   callbacks=list(callbacks))


class AtStep:
    """A callback that calls ``act(trainer)`` at the end of step ``step``."""

    def __init__(self, step: int, act) -> None:
        self.step, self.act = step, act

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, trainer, step):
        if step == self.step:
            self.act(trainer)


def test_metrics_csv_deleted_mid_run_is_written_again_with_every_row(tmp_path, capsys):
    """A metrics.csv deleted while training runs is written again with every row, and a note says so
    (the rows after the deletion used to go to the deleted file, lost, with exit code 0)."""
    from fmkit.engine.metrics_log import read_metrics

    run = tmp_path / "run"
    _tiny_trainer(run, [AtStep(3, lambda tr: (run / "metrics.csv").unlink())]).fit()
    assert [s for s, _ in read_metrics(run)["loss"]] == [1, 2, 3, 4, 5, 6]
    err = squash(capsys.readouterr().err)
    assert "note: metrics.csv was deleted or replaced while training ran; it is written again" in err, err


class _Refusing:
    def writerows(self, rows):
        raise PermissionError(1, "Operation not permitted")


def test_metrics_csv_made_unwritable_mid_run_stops_with_a_checkpoint_and_a_fix(tmp_path):
    """A metrics.csv that becomes unwritable stops training with a checkpoint and a fix, not an internal
    error. (Root may write any file: the refusal is injected at the write, as an immutable file refuses it.)"""
    run = tmp_path / "run"

    def refuse(tr):
        tr.loggers.csv.log._w = _Refusing()

    with pytest.raises(fmkit.errors.OutputError) as e:
        _tiny_trainer(run, [AtStep(4, refuse)]).fit()
    err = squash(e.value.render())
    assert "cannot write the run's metrics.csv: Operation not permitted; a checkpoint of step 5 was saved" in err, err
    assert "chattr -i" in err and "resume with `trainer.fit(resume=True)`" in err, err
    assert ck.load_checkpoint(ck.find_latest(run / "checkpoints")).meta["step"] == 5


def test_garbage_in_metrics_csv_is_skipped_with_a_note_by_curves_and_resume():
    """Garbage rows in metrics.csv are skipped with a note by `fmkit curves` and dropped by
    `fmkit train --resume`, not internal errors."""
    Path("tiny.yaml").write_text(TINY)
    assert cli("train", "tiny.yaml", "--out", "run").code == 0
    log = Path("run/metrics.csv")
    good = log.read_bytes()
    log.write_bytes(good + b"abc,loss,1\n3,loss,x\n" + bytes(range(256)) + b"\n")
    r = cli("curves", "run")
    assert r.code == 0 and "Traceback" not in r.text, r.text
    err = squash(r.err)
    assert "damaged row(s) of metrics.csv skipped (the first, line" in err and "'abc,loss,1')" in err, err
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9")
    assert r.code == 0 and "internal error" not in r.text, r.text
    assert "damaged row(s) of metrics.csv dropped from the log" in squash(r.err), r.err
    from fmkit.engine.metrics_log import parse_rows, read_metrics

    assert parse_rows(log)[1] == [] and [s for s, _ in read_metrics(Path("run"))["loss"]] == list(range(1, 10))
    log.write_bytes(bytes(range(256)) * 4)  # nothing but garbage
    r = cli("curves", "run")
    clean_error(r, "no metrics to plot")
