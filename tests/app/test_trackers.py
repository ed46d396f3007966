"""A recipe with ``trainer.loggers: [tensorboard, wandb, mlflow]`` trains, resumes, and leaves each
tracker's records readable by that tracker's own reader, offline: TensorBoard's
EventAccumulator, ``wandb leet inspect`` on the offline run files, MLflow's client on a file store.
A tracker that cannot start is an fmkit error before training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fmkit.app.registry
from fmkit.engine import checkpoint as ck
from reliability_helpers import cli, fresh_registry, squash

RECIPE = """\
name: tracked
data: {name: moons, n: 256}
model: {name: mlp, hidden: 8, depth: 1, time_dim: 4}
solver: {name: euler, steps: 4}
trainer:
  steps: 4
  batch_size: 32
  device: cpu
  progress: false
  checkpoint_every: 2
  log_every: 1
  loggers:
    - tensorboard
    - {name: wandb, project: fmkit-test, tags: [toy, ci]}
    - {name: mlflow, tracking_uri: MLRUNS, experiment: toys}
eval: {every: 2, num_samples: 64, chunk_size: 64, writers: [{name: scatter, num_reference: 64}]}
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _write_recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    p = tmp_path / "tracked.yaml"
    p.write_text(text.replace("MLRUNS", (tmp_path / "mlruns").as_uri()))
    return p


def _wandb_records(run_file: Path) -> list[dict]:
    """The records of an offline ``.wandb`` transaction log, read by wandb's own inspector."""
    r = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_three_trackers_train_resume_and_read_back_with_their_own_readers(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    recipe = _write_recipe(tmp_path)
    r = cli("train", recipe, "--out", "run")
    assert r.code == 0, r.text
    r = cli("train", "--resume", "run", "--set", "trainer.steps=6")
    assert r.code == 0, r.text
    run = tmp_path / "run"
    ids = json.loads((run / "trackers.json").read_text())

    # TensorBoard: one series of steps 1..6 (nothing doubled by the resume) and the scatter pictures
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Images("samples/scatter")] == [2, 4, 6]
    assert "recipe/text_summary" in acc.Tags()["tensors"]

    # W&B: two offline sessions of one run id (the resume continued it), with the recipe as its config
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, files
    first, second = (_wandb_records(f) for f in files)
    for records in (first, second):
        (head,) = [x["run"] for x in records if x["type"] == "run"]
        assert head["run_id"] == ids["wandb"]["run_id"] and head["project"] == "fmkit-test"
    assert set(head["tags"]) == {"toy", "ci"} and head["display_name"] == "run"
    (cfg,) = [x["run"]["config"]["update"] for x in first if x["type"] == "run"]
    assert cfg["name"] == "tracked" and cfg["trainer"]["steps"] == 4 and "fmkit" in cfg["provenance"]
    steps = [x["history"]["step"]["num"] for records in (first, second) for x in records
             if x["type"] == "history" and "loss" in x["history"]["item"]]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    pictures = [(x["history"]["step"]["num"], x["history"]["item"]["samples/scatter.path"])
                for records in (first, second) for x in records
                if x["type"] == "history" and x["history"]["item"].get("samples/scatter._type") == "image-file"]
    assert [s for s, _ in pictures] == [2, 4, 6], pictures
    assert all(list(run.glob(f"wandb/offline-run-*/files/{p}")) for _, p in pictures), pictures

    # MLflow: one run of experiment "toys" holding steps 1..6, the recipe as parameters, the pictures
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run_id = ids["mlflow"]["run_id"]
    assert [(m.step) for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    found = client.search_runs([client.get_experiment_by_name("toys").experiment_id])
    assert [x.info.run_id for x in found] == [run_id] and found[0].info.status == "FINISHED"
    params = found[0].data.params
    assert params["trainer.batch_size"] == "32" and params["model.name"] == "mlp"
    shots = [a.path for a in client.list_artifacts(run_id, "samples/scatter")]
    assert shots == [f"samples/scatter/samples_step{s:07d}.png" for s in (2, 4, 6)], shots
    assert {a.path for a in client.list_artifacts(run_id, "fmkit")} == {"fmkit/recipe.json", "fmkit/provenance.json"}


def test_an_unknown_logger_name_gets_the_closest_one(tmp_path):
    recipe = _write_recipe(tmp_path, RECIPE.replace("- tensorboard", "- tensorbord"))
    r = cli("train", recipe, "--out", "run")
    assert r.code == 2 and "Traceback" not in r.text, r.text
    msg = squash(r.err)
    assert "unknown logger 'tensorbord'" in msg and "where: trainer.loggers.0.name" in msg, msg
    assert "did you mean 'tensorboard'?" in msg, msg


def test_a_bad_tracking_uri_is_an_error_before_training(tmp_path):
    pytest.importorskip("mlflow")
    recipe = _write_recipe(tmp_path, RECIPE.replace("MLRUNS", "nosuchscheme://host/x").replace(
        "    - tensorboard\n    - {name: wandb, project: fmkit-test, tags: [toy, ci]}\n", ""))
    r = cli("train", recipe, "--out", "run")
    assert r.code == 2 and "Traceback" not in r.text, r.text
    msg = squash(r.err)
    assert "MLflow cannot open a run at 'nosuchscheme://host/x'" in msg, msg
    assert "where: trainer.loggers (mlflow tracking_uri)" in msg and "fix: pass a tracking_uri MLflow serves" in msg
    assert not ck.has_checkpoint(tmp_path / "run")


def test_a_tracker_not_installed_is_an_error_before_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    r = cli("train", _write_recipe(tmp_path), "--out", "run")
    assert r.code == 2 and "Traceback" not in r.text, r.text
    msg = squash(r.err)
    assert "the wandb tracker needs the 'wandb' package, which is not installed" in msg, msg
    assert "pip install 'fmkit[trackers]'" in msg and not ck.has_checkpoint(tmp_path / "run")


def test_tensorboard_gets_each_of_a_writers_wavs_as_a_series_of_its_own(tmp_path):
    """Several files of one writer are ``samples/<writer>/<i>``; 16-bit WAVs are TensorBoard audio."""
    pytest.importorskip("tensorboard")
    import wave

    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fmkit.engine.loggers import Loggers
    from fmkit.engine.trackers.tensorboard import TensorBoardLogger

    loggers = Loggers([TensorBoardLogger()])
    loggers.start(tmp_path, 0, {})
    for step in (2, 4):
        paths = []
        for i in range(2):
            p = tmp_path / f"step{step}_{i}.wav"
            with wave.open(str(p), "wb") as f:
                f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
                f.writeframes((np.sin(np.arange(800) * (i + 1) / 10) * 16000).astype("<i2").tobytes())
            paths.append(p)
        loggers.log_media(step, "wav", paths)
    loggers.finish()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"audio": 0})
    acc.Reload()
    assert sorted(acc.Tags()["audio"]) == ["samples/wav/0", "samples/wav/1"]
    clips = acc.Audio("samples/wav/1")
    assert [c.step for c in clips] == [2, 4] and clips[0].sample_rate == 8000 and clips[0].length_frames == 800
