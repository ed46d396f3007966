"""``fmkit train --resume RUN --set ...`` keeps RUN's recipe.yaml (the recipe it was started from) and records
the overrides as those of that resume in RUN's lineage.json; later resumes train with them, while ``sample``
and ``evaluate`` read recipe.yaml (with a note naming the overrides). An evaluation after a resume that
switched the metrics off works (it failed with "the run's recipe lists no metrics" when the resume
rewrote recipe.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fmkit.engine.lineage import LINEAGE_FILE, resume_overrides
from reliability_helpers import TINY, cli, isolate, squash

EVAL = "eval: {num_samples: 64, metrics: [{name: w2}]}\n"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_resume_overrides_are_recorded_not_written_over_the_recipe_and_evaluate_works():
    Path("tiny.yaml").write_text(TINY + EVAL)
    assert cli("train", "tiny.yaml", "--out", "run").code == 0
    recipe = (Path("run") / "recipe.yaml").read_text()

    r = cli("train", "--resume", "run", "--set", "trainer.steps=9", "--set", "eval.metrics=[]")
    assert r.code == 0, r.text
    assert (Path("run") / "recipe.yaml").read_text() == recipe  # the recipe the run was started from
    lineage = json.loads((Path("run") / LINEAGE_FILE).read_text())
    assert [(x["step"], x["overrides"]) for x in lineage["resumes"]] == [(6, ["trainer.steps=9", "eval.metrics=[]"])]

    ev = cli("evaluate", "run", "-n", "32")
    assert ev.code == 0, ev.text
    assert "w2" in ev.out and "lists no metrics" not in ev.text  # recipe.yaml's metrics
    note = " ".join(ev.err.split())
    assert "was resumed with --set eval.metrics=[]" in note and "pass the same --set here" in note
    assert "trainer.steps" not in note  # a training setting: nothing to say about it here

    # a later plain resume trains with the recorded overrides: trainer.steps=9, so the run is finished
    again = cli("train", "--resume", "run")
    assert again.code != 0 and "it is at step 9 of trainer.steps=9" in " ".join(again.err.split())
    # a further resume's overrides come after the earlier ones (the later of two on a key wins)
    assert cli("train", "--resume", "run", "--set", "trainer.steps=12").code == 0
    assert resume_overrides(Path("run")) == ["trainer.steps=9", "eval.metrics=[]", "trainer.steps=12"]
    assert (Path("run") / "recipe.yaml").read_text() == recipe


def test_a_refused_resume_records_nothing():
    Path("tiny.yaml").write_text(TINY)
    assert cli("train", "tiny.yaml", "--out", "run").code == 0
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9", "--set", "model.hidden=16")
    assert r.code != 0 and "different model" in r.text
    assert not (Path("run") / LINEAGE_FILE).exists()


def test_a_damaged_lineage_file_is_named():
    Path("tiny.yaml").write_text(TINY)
    assert cli("train", "tiny.yaml", "--out", "run").code == 0
    (Path("run") / LINEAGE_FILE).write_text("{not json")
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9")
    msg = squash(r.err)
    assert r.code != 0 and "Traceback" not in r.text
    assert "cannot read the run's lineage.json" in msg and "fix:" in msg
