"""Which checkpoint a run goes on from: a damaged newest checkpoint (even one whose manifest agrees
with its files) is skipped, with a note, for the next older intact one; when every one is damaged or
unreadable the error says so with a fix; checkpoints are ordered by step number (past 10^9 too); and
``--checkpoint STEP`` resumes from an older one, setting the newer ones aside.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fmkit.engine import checkpoint as ck
from reliability_helpers import cli, isolate, squash, tiny_run
from safetensors.torch import load_file, save_file


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def _rehash(step_dir: Path) -> None:
    """Rewrite the manifest so that its checksums agree with the (damaged) files: only fmkit's own
    checks of the contents stand between the damage and a resume."""
    man = json.loads((step_dir / ck.MANIFEST).read_text())
    man["files"] = {n: ck._sha256(step_dir / n) for n in man["files"] if (step_dir / n).is_file()}
    (step_dir / ck.MANIFEST).write_text(json.dumps(man))


def _resume_falls_back(run: Path, damaged: Path) -> str:
    """``fmkit train --resume`` goes on from the older intact checkpoint, saying why, and finishes."""
    r = cli("train", "--resume", run, "--set", "trainer.steps=9")
    assert r.code == 0, r.text
    err = squash(r.err)
    assert f"note: skipping checkpoint {damaged.name}" in err, err
    assert "Traceback" not in r.text and "internal error" not in r.text and "Warning" not in r.text
    assert ck.load_checkpoint(ck.find_latest(run / "checkpoints")).meta["step"] == 9
    return err


def _newest(run: Path) -> tuple[Path, Path]:
    done = ck.complete_checkpoints(run / "checkpoints")
    assert [ck._step_of(p) for p in done] == [3, 6]
    return done[-1], done[-2]


def test_latest_pointer_of_non_utf8_bytes_is_ignored():
    """A `latest` pointer of non-UTF-8 bytes is ignored: the newest complete checkpoint is found and
    resumed, not an internal error."""
    run = tiny_run()
    (run / "checkpoints" / ck.LATEST).write_bytes(b"\xff\xfe\x00step")
    assert ck.find_latest(run / "checkpoints").name == ck.step_dir_name(6)
    r = cli("train", "--resume", run, "--set", "trainer.steps=9")
    assert r.code == 0 and "internal error" not in r.text, r.text


@pytest.mark.parametrize("damage", ["manifest_entry_removed", "step_abc", "step_negative", "optimizer_tensor_lost"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(damage):
    """A newest checkpoint damaged in its manifest, meta or optimizer state is passed over for the older
    one, naming the damage; not an internal error, a negative step resumed, or a failure in the first
    optimizer step after resuming."""
    run = tiny_run()
    newest, older = _newest(run)
    if damage == "manifest_entry_removed":
        man = json.loads((newest / ck.MANIFEST).read_text())
        del man["files"]["model.safetensors"]
        (newest / ck.MANIFEST).write_text(json.dumps(man))
        needle = "lists no model.safetensors"
    elif damage in ("step_abc", "step_negative"):
        meta = json.loads((newest / "meta.json").read_text())
        meta["step"] = "abc" if damage == "step_abc" else -5
        (newest / "meta.json").write_text(json.dumps(meta))
        _rehash(newest)
        needle = "not a non-negative integer"
    else:
        opt = load_file(str(newest / "optimizer.safetensors"))
        del opt["0.exp_avg"]
        save_file(opt, str(newest / "optimizer.safetensors"))
        _rehash(newest)
        needle = "the optimizer state of parameter 0 lacks ['exp_avg']"
    err = _resume_falls_back(run, newest)
    assert needle in err, err


def test_every_checkpoint_damaged_is_a_checkpoint_error_not_an_internal_error():
    run = tiny_run()
    for d in ck.complete_checkpoints(run / "checkpoints"):
        meta = json.loads((d / "meta.json").read_text())
        meta["step"] = "abc"
        (d / "meta.json").write_text(json.dumps(meta))
        _rehash(d)
    for args in (("train", "--resume", run, "--set", "trainer.steps=9"), ("sample", run, "-n", "4")):
        r = cli(*args)
        assert r.code == 2, r.text
        err = squash(r.err)
        assert "internal error" not in r.text and "Traceback" not in r.text, r.text
        assert "error: every checkpoint under run/checkpoints is damaged; the newest, step_000000006: checkpoint " \
               "meta.json has step = 'abc', not a non-negative integer" in err, err
        assert "fix: restore checkpoints/ from a backup, or start a new run" in err


def test_unreadable_checkpoint_file_is_a_permission_error_with_a_fix(tmp_path):
    """An unreadable checkpoint file is a CheckpointError naming the permission, with a fix, not an
    internal error. Root reads any file, so the read is denied by patching the checksum read, the way a
    file without read permission fails."""
    run = tiny_run()
    newest, _ = _newest(run)
    real = ck._sha256

    def denied(path: Path) -> str:
        if path.name == "model.safetensors":
            raise PermissionError(13, "Permission denied")
        return real(path)

    try:
        ck._sha256 = denied
        with pytest.raises(ck.CheckpointError) as exc:
            ck.verify(newest)
    finally:
        ck._sha256 = real
    assert "cannot read the checkpoint file model.safetensors: Permission denied" in exc.value.what
    assert "chmod" in exc.value.fix


def test_pruning_past_a_billion_steps_keeps_the_newest():
    """Pruning orders checkpoints by step number, not by name as text: past a billion steps the newest
    are kept."""
    root = Path("ckpts")
    data = ck.CheckpointData({"model": {"w": torch.zeros(1)}}, {"step": 0})
    for step in (999_999_998, 999_999_999, 1_000_000_000, 1_000_000_001):
        data.meta["step"] = step
        ck.save_checkpoint(root, step, data, keep=2)
    kept = [ck._step_of(p) for p in ck.complete_checkpoints(root)]
    assert kept == [1_000_000_000, 1_000_000_001]
    assert ck.find_latest(root).name == ck.step_dir_name(1_000_000_001)


def test_train_resume_from_an_older_checkpoint_sets_the_newer_aside(tmp_path):
    """`fmkit train --resume RUN --checkpoint STEP` (the fix the damaged-checkpoint errors give): the run
    continues from STEP, the newer checkpoints are moved (not deleted) out of the way, the log has
    each step once."""
    run = tiny_run()  # steps 6, checkpoints at 3 and 6
    r = cli("train", "--checkpoint", "3")
    assert r.code == 2 and "add --resume RUN" in squash(r.err), r.text
    r = cli("train", "--resume", run, "--checkpoint", "3", "--set", "trainer.steps=9")
    assert r.code == 0, r.text
    assert "continuing from step_000000003; the newer checkpoints step_000000006 are kept in" in \
        " ".join(r.out.split()), r.out
    assert (run / "checkpoints" / "abandoned-step_000000003" / "step_000000006" / "meta.json").is_file()
    assert ck.load_checkpoint(ck.find_latest(run / "checkpoints")).meta["step"] == 9
    from fmkit.engine.metrics_log import read_metrics

    steps = [s for s, _ in read_metrics(run)["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == 9, steps
    r = cli("train", "--resume", run, "--checkpoint", "5", "--set", "trainer.steps=12")
    assert r.code != 0 and "'5' is not a complete checkpoint" in squash(r.err), r.text
