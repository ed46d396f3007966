"""``fmkit image train-classifier`` shows its progress (a bar on a terminal, heartbeat lines in a log) and ends
with the accuracy; the cached weights are as readable as the umask allows (a team's shared cache is read by
the group), not the 0600 that safetensors writes."""

from __future__ import annotations

import os
import re
import stat

from fmkit.plugin import ProgressBar
from image_testlib import write_idx
from typer.testing import CliRunner


def test_progress_lines_then_accuracy_and_a_group_readable_cache(tmp_path, monkeypatch):
    from fmkit_image.cli import app as image_app

    # a heartbeat at every step (CliRunner's output is a file)
    monkeypatch.setattr(ProgressBar, "default_heartbeat_s", 1e-9)
    write_idx(tmp_path / "mnist", n_train=300)
    out = tmp_path / "weights.safetensors"
    res = CliRunner().invoke(image_app, ["train-classifier", "--root", str(tmp_path / "mnist"), "--epochs", "2",
                                         "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    steps = [int(m.group(1)) for m in map(re.compile(r"classifier step (\d+)/4 \(").match, lines) if m]
    assert steps == [1, 2, 3, 4, 4], res.output  # 2 epochs x 2 batches of 128 of the 300 images, then the end
    assert lines[-2].startswith(f"trained: {out} (") and "2 epochs, seed 0, 300 training images" in lines[-2]
    assert re.fullmatch(r"test accuracy: \d\.\d{4} \(100 images\)", lines[-1]), lines[-1]
    umask = os.umask(0o022)
    os.umask(umask)  # the process's umask, read back; safetensors alone would give 0o600 whatever it is
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert umask & 0o040 or stat.S_IMODE(out.stat().st_mode) & 0o040  # group-readable where the umask allows
    assert not out.with_suffix(".part").exists()

    again = CliRunner().invoke(image_app, ["train-classifier", "--root", str(tmp_path / "mnist"), "--out", str(out)])
    assert again.exit_code == 0 and "classifier step" not in again.output, again.output  # cached: no training
    assert again.output.splitlines()[0] == f"cached: {out}"


def test_a_fit_scored_by_a_classifier_not_yet_trained_fails_before_its_first_step(tmp_path, monkeypatch):
    """The metric's weights are checked when the fit starts: the DataError (with the command that trains them)
    comes before step 1, not after a training that could not be scored."""
    import pytest
    from fmkit.plugin import DataError, load_recipe
    from fmkit.testing import build_trainer

    from fmkit_image.classifier import weights_path

    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "empty-cache"))
    write_idx(tmp_path / "mnist", n_train=64, n_test=32)
    rec = load_recipe("images_mnist_cpu", [f"data.root={tmp_path / 'mnist'}", "trainer.steps=3",
                                           "trainer.batch_size=8", "trainer.progress=false", "model.channels=8",
                                           "model.attention_resolutions=[]", "model.norm_groups=8",
                                           "eval.metrics=[{name: image_classifier}]"])
    tr = build_trainer(rec, tmp_path / "run")
    with pytest.raises(DataError) as err:
        tr.fit()
    assert tr.step == 0 and not list((tmp_path / "run").glob("checkpoints/step*"))
    text = str(err.value)
    assert str(weights_path("mnist", 1, 10)) in text and "fmkit image train-classifier --dataset mnist" in text
