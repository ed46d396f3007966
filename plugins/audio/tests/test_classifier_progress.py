"""The digit classifier's training shows its progress when asked (``fmkit audio train-classifier`` asks: a bar on
a terminal, heartbeat lines in a log) and is silent otherwise (the metric trains it inside a run); its cached
weights are as readable as the umask allows (a team's shared cache is read by the group), not safetensors' 0600."""

from __future__ import annotations

import os
import re
import stat

from fmkit.plugin import ProgressBar

from fmkit_audio.classifier import train_classifier
from fmkit_audio.data import build_fsdd


def test_progress_when_asked_and_a_group_readable_cache(synth_fsdd, tmp_path, monkeypatch, capsys):
    # a heartbeat at every step (pytest's stdout is a file)
    monkeypatch.setattr(ProgressBar, "default_heartbeat_s", 1e-9)
    ds = build_fsdd(root=str(synth_fsdd), limit=40)
    clf = train_classifier(ds, epochs=2, seed=0, cache=tmp_path / "a", log=lambda *_: None, progress=True)
    steps = [int(m.group(1)) for m in map(re.compile(r"classifier step (\d+)/(\d+) \(").match,
                                          capsys.readouterr().out.splitlines()) if m]
    assert steps[:-1] == list(range(1, len(steps))) and steps[-1] == steps[-2] > 1, steps  # every step, the end
    umask = os.umask(0o022)
    os.umask(umask)  # the process's umask, read back; safetensors alone would give 0o600 whatever it is
    assert stat.S_IMODE(clf.path.stat().st_mode) == 0o666 & ~umask
    assert umask & 0o040 or stat.S_IMODE(clf.path.stat().st_mode) & 0o040  # group-readable where the umask allows

    train_classifier(ds, epochs=2, seed=0, cache=tmp_path / "b", log=lambda *_: None)
    assert "classifier step" not in capsys.readouterr().out  # the metric's call: no progress inside a run
