"""The Trainer's loggers (engine/loggers.py): metrics.csv always on, trackers handed the run record,
scalars and sample files; a tracker that cannot start stops the fit before its first step, one that
raises later is reported once and switched off while training and checkpoints go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmkit.engine import checkpoint as ck
from fmkit.engine.loggers import TRACKERS_FILE, CsvLogger, LoggerRun, Loggers
from fmkit.engine.metrics_log import read_metrics
from fmkit.errors import TrackerError


def _trainer(run_dir: Path, loggers, steps: int = 6, **eval_options):
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.mlp import MLP
    from fmkit.app.builtin.toy import ToyDataset
    from fmkit.app.builtin.writers import ScatterWriter

    ds = ToyDataset("moons", n=256)
    opts = TrainerOptions(steps=steps, batch_size=32, device="cpu", progress=False, log_every=1, checkpoint_every=3)
    writers = {"scatter": ScatterWriter(num_reference=64)} if eval_options else None
    return Trainer(MLP.from_data(ds.info, hidden=8, depth=1, time_dim=4), ds, run_dir=run_dir, options=opts,
                   loggers=loggers, writers=writers, eval_options=eval_options or None, provenance={"made": "here"})


class Recording:
    """A tracker that keeps what it is handed."""

    name = "recording"

    def __init__(self) -> None:
        self.runs: list[LoggerRun] = []
        self.scalars: list[tuple[int, dict]] = []
        self.media: list[tuple[int, str, Path]] = []
        self.finished = 0

    def start(self, run: LoggerRun) -> None:
        self.runs.append(run)

    def log_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def log_media(self, step, name, path):
        self.media.append((step, name, path))

    def finish(self):
        self.finished += 1


class RaisesAt(Recording):
    def __init__(self, step: int, where: str = "log_scalars") -> None:
        super().__init__()
        self.step, self.where = step, where

    def start(self, run):
        if self.where == "start":
            raise ConnectionError("tracking server at http://nowhere:5000 refused the connection")
        super().start(run)

    def log_scalars(self, step, scalars):
        if step >= self.step:
            raise RuntimeError("the tracker's server went away")
        super().log_scalars(step, scalars)


def test_a_tracker_gets_the_run_record_scalars_and_the_writers_pictures(tmp_path):
    rec = Recording()
    tr = _trainer(tmp_path / "run", Loggers([rec], config={"name": "toy"}), every=3, num_samples=64, chunk_size=64)
    tr.fit()
    (run,) = rec.runs
    assert run.run_dir == tmp_path / "run" and run.config == {"name": "toy"} and not run.resume
    assert run.provenance == {"made": "here"}
    assert [s for s, _ in rec.scalars if "loss" in _] == [1, 2, 3, 4, 5, 6]
    assert [(s, n, p.name) for s, n, p in rec.media] == [(3, "samples/scatter", "samples_step0000003.png"),
                                                          (6, "samples/scatter", "samples_step0000006.png")]
    assert all(p.is_file() for _, _, p in rec.media) and rec.finished == 1
    # metrics.csv is always written, in its long format, with the same numbers
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0] == "step,name,value"
    assert [s for s, _ in read_metrics(tmp_path / "run")["loss"]] == [1, 2, 3, 4, 5, 6]


def test_a_resumed_fit_tells_its_trackers_the_step_and_what_they_stored(tmp_path):
    run_dir = tmp_path / "run"
    first = Recording()
    _trainer(run_dir, [first], steps=6).fit(until=3)
    first.runs[0].store("recording", {"run_id": "abc"})
    again = Recording()
    _trainer(run_dir, [again], steps=6).fit(resume=True)
    (run,) = again.runs
    assert run.resume and run.step == 3 and run.stored("recording") == {"run_id": "abc"}
    assert json.loads((run_dir / TRACKERS_FILE).read_text()) == {"recording": {"run_id": "abc"}}
    assert [s for s, v in again.scalars if "loss" in v] == [4, 5, 6]
    assert LoggerRun(run_dir, step=0).stored("recording") is None  # a fresh start continues no tracker run


def test_a_tracker_raising_mid_run_is_reported_once_and_switched_off(tmp_path, capsys):
    """Training, metrics.csv and the checkpoints go on without it."""
    bad, good = RaisesAt(3), Recording()
    tr = _trainer(tmp_path / "run", [bad, good])
    tr.fit()
    assert tr.step == 6
    assert [s for s, _ in bad.scalars] == [1, 2] and bad.finished == 1  # closed once, never called again
    assert [s for s, _ in good.scalars] == [1, 2, 3, 4, 5, 6]
    assert ck.load_checkpoint(ck.find_latest(tmp_path / "run" / "checkpoints")).meta["step"] == 6
    assert [s for s, _ in read_metrics(tmp_path / "run")["loss"]] == [1, 2, 3, 4, 5, 6]
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("experiment tracker 'recording' failed in log_scalars") == 1, err
    assert "the tracker's server went away" in err and "training and checkpoints go on" in err, err


def test_a_tracker_that_cannot_start_stops_the_fit_before_its_first_step(tmp_path):
    other = Recording()
    tr = _trainer(tmp_path / "run", [other, RaisesAt(1, where="start")])
    with pytest.raises(TrackerError) as e:
        tr.fit()
    msg = e.value.render()
    assert "experiment tracker 'recording' cannot start: ConnectionError: tracking server" in msg, msg
    assert "where: trainer.loggers (recording)" in msg and "fix:" in msg, msg
    assert tr.step == 0 and not ck.has_checkpoint(tmp_path / "run")
    assert other.finished == 1 and other.scalars == []  # the ones started are closed again


def test_metrics_csv_is_on_without_any_tracker_and_a_listed_csv_is_not_doubled(tmp_path):
    listed = CsvLogger()
    loggers = Loggers([listed, CsvLogger()])
    assert loggers.csv is listed and loggers.trackers == []  # one metrics.csv writer, however often it is listed
    tr = _trainer(tmp_path / "run", [])
    tr.fit()
    assert [s for s, _ in read_metrics(tmp_path / "run")["loss"]] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoints", "metrics.csv"]
    with pytest.raises(TypeError, match="a logger must have name, start, log_scalars and finish"):
        Loggers([object()])
