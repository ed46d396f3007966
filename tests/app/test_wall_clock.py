"""The wall-clock guard (``wall_clock_limit``) that stops a run before its steps makes the run say so: "stopped
at step N of M by the wall-clock guard (...)" in ``fmkit train``'s final table, in ``stopped.json`` and in the
checkpoint; the metrics are those of step N. The guard is the core's, so a toy recipe with no plugin names it."""

from __future__ import annotations

import csv
import json

import yaml

from fmkit.testing import fresh_registry, run_cli


def test_the_wall_clock_guard_stop_is_reported_with_its_step(tmp_path):
    recipe = {"name": "guarded", "seed": 0, "data": {"name": "moons", "n": 256},
              "model": {"name": "mlp", "hidden": 8, "depth": 1, "time_dim": 4}, "solver": {"name": "euler", "steps": 4},
              "trainer": {"steps": 50, "batch_size": 32, "device": "cpu", "progress": False, "log_every": 1},
              "callbacks": [{"name": "wall_clock_limit", "minutes": 1e-6}],  # 60 microseconds: stops after step 1
              "eval": {"num_samples": 64, "metrics": [{"name": "w2"}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    r = run_cli("train", tmp_path / "r.yaml", "--out", run, registry=fresh_registry())
    assert r.code == 0, r.out + r.err
    message = "stopped at step 1 of 50 by the wall-clock guard (1e-06 minutes)"
    text = " ".join(r.out.split())
    assert f"trained to step 1 ({message})" in text and f"evaluation at step 1 — {message}" in text, r.out
    assert json.loads((run / "stopped.json").read_text())["message"] == message
    with open(run / "metrics.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f) if row["name"] == "eval/w2"] == ["1"]
