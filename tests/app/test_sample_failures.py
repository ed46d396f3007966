"""Samples fmkit cannot use are refused with a named error and leave no half-written output: more than
``fmkit sample -n`` allows, samples holding NaN/Inf (``fmkit sample``), and a metric that fails on
them (named by ``fmkit train``'s final evaluation and by ``fmkit evaluate``).
"""

from __future__ import annotations

from pathlib import Path

import fmkit
import fmkit.app.registry
import pytest
from fmkit.engine import checkpoint as ck
from reliability_helpers import TINY, clean_error, cli, fresh_registry, isolate, squash, tiny_run
from torch import nn


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_sample_count_is_bounded():
    """`fmkit sample -n` is bounded and refused above the bound before anything is sampled (an absurd
    count used to run out of memory)."""
    run = tiny_run()
    r = cli("sample", run, "-n", 10**12)
    assert r.code == 2 and "10000000" in r.text, r.text
    assert not (run / "samples").exists() or not any((run / "samples").iterdir())


def test_all_nan_samples_fail_and_leave_no_empty_folder(monkeypatch):
    """Samples holding NaN/Inf are an error, not written with exit code 0, and a failed sample leaves no
    empty samples/cli-* folder."""
    import fmkit.engine.evaluation

    run = tiny_run()
    real = fmkit.engine.evaluation.sample_in_chunks

    def nan_samples(*args, **kwargs):
        out = real(*args, **kwargs)
        return {k: v * float("nan") if v.is_floating_point() else v for k, v in out.items()}

    monkeypatch.setattr(fmkit.engine.evaluation, "sample_in_chunks", nan_samples)
    r = cli("sample", run, "-n", 8)
    assert r.code == 2, r.text
    assert "8 of 8 samples hold NaN/Inf in field 'x'" in squash(r.err), r.text
    assert not list((run / "samples").glob("cli-*")), list((run / "samples").iterdir())


class NanWhenSampling(nn.Module):
    """Trains like an MLP; its velocity is NaN once in eval mode: a diverged model's samples."""

    def __init__(self, data_info) -> None:
        super().__init__()
        from fmkit.app.builtin.mlp import MLP

        self.net = MLP.from_data(data_info, hidden=8, depth=1, time_dim=4)

    def forward(self, x_t, t, cond=None):
        out = self.net(x_t, t, cond)
        return out if self.training else {k: v * float("nan") for k, v in out.items()}


class NanSamplingPlugin:
    @fmkit.hookimpl
    def register_models(self, register):
        register("nan_sampling", NanWhenSampling, None, "NaN velocity when sampling")


def test_a_metric_failing_on_nan_samples_is_named_by_train_and_evaluate(monkeypatch):
    """A metric failing on NaN samples is named, with a fix, by `fmkit train` and `evaluate`; not an
    internal error, and `evaluate` does not then claim the recipe lists no metrics."""
    reg = fresh_registry()
    reg.add_plugin(NanSamplingPlugin(), name="nan_sampling")
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", reg)
    Path("tiny.yaml").write_text(TINY.replace("name: mlp, hidden: 8, depth: 1, time_dim: 4", "name: nan_sampling")
                                 + "eval: {metrics: [{name: w2, num_reference: 64}], num_samples: 64}\n")
    r = cli("train", "tiny.yaml", "--out", "run")
    clean_error(r, "metric 'w2' failed: 64 of 64 samples hold NaN/Inf in field 'x' (ValueError: ",
                "where: metric 'w2' (eval.metrics)", "fix: the model diverged")
    assert ck.has_checkpoint(Path("run"))
    r = cli("evaluate", "run")
    msg = clean_error(r, "metric 'w2' failed: 64 of 64 samples hold NaN/Inf in field 'x'")
    assert "lists no metrics" not in msg
