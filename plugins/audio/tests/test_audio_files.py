"""Damaged and hostile FSDD files: each error names the recording (the archive member), never
``<_io.BytesIO object at 0x...>`` or a line of the plugin; members whose names leave the archive's
folder are skipped with a note naming them (they are read, never extracted).

The cases the old reader got wrong: a valid but very short WAV reported as a bug in the plugin, a
damaged member named by its BytesIO, ``../x.wav`` members read as training data.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from audio_testlib import SR, make_fsdd
from fmkit.plugin import DataError
from fmkit_audio.data import build_fsdd


def _tarball(src: Path, dest: Path, extra: dict[str, bytes] | None = None) -> Path:
    """``dest/fsdd_recordings.tar.gz`` of ``src/recordings`` plus ``extra`` members (name -> bytes)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "fsdd_recordings.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted((src / "recordings").glob("*.wav")):
            tf.add(p, arcname=f"recordings/{p.name}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out


def _wav(samples: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(np.arange(samples) / 3.0)).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_fsdd(tmp_path_factory) -> Path:
    return make_fsdd(tmp_path_factory.mktemp("small_fsdd"), speakers=1, takes=6, digits=range(2))


def test_a_too_short_recording_is_named(small_fsdd, tmp_path):
    root = _tarball(small_fsdd, tmp_path / "fsdd", {"recordings/1_short_7.wav": _wav(100)}).parent
    with pytest.raises(DataError) as e:
        build_fsdd(root=str(root))
    msg = e.value.render()
    assert "audio file recordings/1_short_7.wav is too short: " in msg and "the mel front end needs at least" in msg
    assert e.value.where == "recordings/1_short_7.wav" and "remove the file" in e.value.fix


def test_a_damaged_member_is_named_not_a_bytesio(small_fsdd, tmp_path):
    root = _tarball(small_fsdd, tmp_path / "fsdd", {"recordings/0_bad_6.wav": b"RIFF\x00\x00garbage" * 10}).parent
    with pytest.raises(DataError) as e:
        build_fsdd(root=str(root))
    msg = e.value.render()
    assert "cannot read audio file 0_bad_6.wav:" in msg and "BytesIO" not in msg, msg
    assert e.value.where == "recordings/0_bad_6.wav"


def test_members_leaving_the_archive_folder_are_skipped_with_a_note(small_fsdd, tmp_path, capsys):
    ok = build_fsdd(root=str(small_fsdd), split="train")
    extra = {"../recordings/0_evil_9.wav": _wav(4000), "/tmp/recordings/1_evil_9.wav": _wav(4000),
             "recordings/../recordings/1_evil_8.wav": _wav(4000)}
    root = _tarball(small_fsdd, tmp_path / "fsdd", extra).parent
    ds = build_fsdd(root=str(root), split="train")
    assert len(ds) == len(ok)  # none of the three was read
    err = " ".join(capsys.readouterr().err.split())
    assert "note: skipped 3 member(s) of the FSDD archive whose names leave its folder: '../recordings/0_evil_9.wav' " \
           "and 2 more" in err, err
    assert not (tmp_path / "recordings").exists() and not Path("/tmp/recordings/1_evil_9.wav").exists()


def test_a_truncated_archive_names_it(small_fsdd, tmp_path):
    tar = _tarball(small_fsdd, tmp_path / "fsdd")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        build_fsdd(root=str(tar.parent))
    assert "cannot read the FSDD archive fsdd_recordings.tar.gz" in e.value.render()
