"""A full disk (ENOSPC) while writing a checkpoint or samples is a clear error that keeps the previous
checkpoint intact and leaves no temporary folder or empty samples folder; the run resumes once
there is room again.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fmkit.engine import checkpoint as ck
from reliability_helpers import TINY, clean_error, cli, isolate


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def _disk_full_from(monkeypatch, when) -> None:
    """Make safetensors writes fail as on a full disk (its own error, as safetensors raises it) for the
    paths ``when(path)`` picks, after writing part of the file; other writes go through."""
    import fmkit.engine.files as files
    from safetensors import SafetensorError

    real = files.save_file

    def full(tensors, path, *a, **k):
        if when(Path(path)):
            Path(path).write_bytes(b"\0" * 100)
            raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at '
                                  f'path "{path}"')
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(files, "save_file", full)


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_leaves_no_temporary_folder(monkeypatch):
    """A full disk while checkpointing is a clear error naming the intact previous checkpoint, not an
    internal error; no ``.tmp-step_*`` folder is left and the run resumes once there is room."""
    Path("tiny.yaml").write_text(TINY)
    with monkeypatch.context() as m:
        _disk_full_from(m, lambda p: "step_000000006" in str(p))
        r = cli("train", "tiny.yaml", "--out", "run")
    clean_error(r, "cannot write the checkpoint of step 6: no space left on the device; nothing of it was kept and "
                "the previous checkpoint, step_000000003, is intact",
                "where: run/checkpoints", "fix: free space on that disk (or lower trainer.keep_checkpoints), then "
                "resume with `fmkit train --resume run`")
    ckpts = Path("run/checkpoints")
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_000000003"]
    ck.usable(ckpts / "step_000000003")
    r = cli("train", "--resume", "run")  # once there is room again
    assert r.code == 0, r.text
    assert ck.load_checkpoint(ck.find_latest(ckpts)).meta["step"] == 6


def test_a_full_disk_while_writing_the_checkpoint_meta(monkeypatch):
    import fmkit.engine.checkpoint as ckmod

    real = ckmod._write_bytes

    def full(path, data):
        if "step_000000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckmod, "_write_bytes", full)
    Path("tiny.yaml").write_text(TINY)
    clean_error(cli("train", "tiny.yaml", "--out", "run"), "cannot write the checkpoint of step 6: no space left")
    assert not list(Path("run/checkpoints").glob(".tmp-*"))


def test_a_full_disk_while_writing_samples_leaves_no_empty_folder(monkeypatch):
    """The final evaluation's samples and `fmkit sample`: a clear error, no empty samples folder; the
    evaluation runs on resume."""
    Path("tiny.yaml").write_text(TINY + "eval: {metrics: [{name: w2, num_reference: 64}], num_samples: 64}\n")
    with monkeypatch.context() as m:
        _disk_full_from(m, lambda p: "samples" in str(p))
        r = cli("train", "tiny.yaml", "--out", "run")
        clean_error(r, "cannot write the samples of step 6: no space left on the device",
                    "fix: free space on that disk, then resume with `fmkit train --resume run` (from its last "
                    "checkpoint)")
        assert not Path("run/samples").exists()
        r = cli("sample", "run", "-n", "8")
        clean_error(r, "no space left on the device to write the samples; nothing of them was kept",
                    "/run/samples/cli-",
                    "fix: free space on that disk and sample again")
        assert not Path("run/samples").exists() or not any(Path("run/samples").iterdir())
    r = cli("train", "--resume", "run")
    assert r.code == 0 and "w2" in r.out, r.text
    assert list(Path("run/samples").glob("samples_step0000006.safetensors"))
