"""A run that a callback (a wall-clock guard) stops before trainer.steps says so: "stopped at step N of M by
<reason>" in the final table of ``fmkit train``, in ``stopped.json``, in the checkpoint's meta and in the
title of ``fmkit evaluate``; its metrics are logged at step N; a resume that reaches the last step clears it."""

from __future__ import annotations

import json
from pathlib import Path

import fmkit
import pytest
from fmkit.engine import checkpoint as ck
from fmkit.engine.metrics_log import read_metrics
from fmkit.engine.stopping import STOPPED_FILE
from pydantic import BaseModel, ConfigDict
from reliability_helpers import TINY, cli, fresh_registry

MESSAGE = "stopped at step 4 of 10 by the test guard (at step 4)"


def flat(text: str) -> str:
    """``text`` on one line with single spaces (rich wraps a long table title)."""
    return " ".join(text.split())


class StopAtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: int


class GuardPlugin:
    """A callback that stops every fit at ``at`` (a stand-in for the audio plugin's wall-clock guard)."""

    @fmkit.hookimpl
    def register_callbacks(self, register):
        class StopAt(fmkit.Callback):
            def __init__(self, at: int) -> None:
                self.at = at

            def on_step_end(self, trainer, step):
                if step == self.at:
                    trainer.request_stop(f"the test guard (at step {self.at})")

        register("stop_at", StopAt, options=StopAtOptions)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import fmkit.app.registry

    monkeypatch.chdir(tmp_path)
    reg = fresh_registry()
    reg.add_plugin(GuardPlugin(), name="guard")
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", reg)
    monkeypatch.delenv("FMKIT_DEBUG", raising=False)


def test_a_run_stopped_by_a_callback_says_where_it_stopped_everywhere():
    Path("tiny.yaml").write_text(TINY.replace("steps: 6,", "steps: 10,") + "callbacks: [{name: stop_at, at: 4}]\n"
                                 "eval: {num_samples: 64, metrics: [{name: w2}]}\n")
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    out = flat(r.out)
    assert f"trained to step 4 ({MESSAGE})" in out
    assert f"evaluation at step 4 — {MESSAGE}" in out, out  # the final table's title
    stop = json.loads((Path("run") / STOPPED_FILE).read_text())
    assert stop == {"step": 4, "steps": 10, "by": "the test guard (at step 4)", "message": MESSAGE}
    meta = ck.load_checkpoint(ck.find_latest(Path("run/checkpoints"))).meta
    assert meta["step"] == 4 and meta["stopped"]["message"] == MESSAGE
    assert [s for s, _ in read_metrics(Path("run"))["eval/w2"]] == [4]  # the metrics carry the step trained

    ev = cli("evaluate", "run", "-n", "32")
    assert ev.code == 0, ev.text
    assert MESSAGE in flat(ev.out)

    # resumed without the guard, the run reaches its steps: nothing says it stopped any more
    done = cli("train", "--resume", "run", "--set", "callbacks=[]")
    assert done.code == 0, done.text
    assert "trained to step 10 in" in flat(done.out) and "stopped at" not in done.out
    assert not (Path("run") / STOPPED_FILE).exists()
    assert ck.load_checkpoint(ck.find_latest(Path("run/checkpoints"))).meta["stopped"] is None
    assert "stopped at" not in cli("evaluate", "run", "-n", "32").out


def test_a_stop_requested_at_the_last_step_is_no_early_stop():
    Path("tiny.yaml").write_text(TINY + "callbacks: [{name: stop_at, at: 6}]\n")
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0 and "stopped at" not in r.out, r.text
    assert not (Path("run") / STOPPED_FILE).exists()
