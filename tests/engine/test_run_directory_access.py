"""A run directory is used by one trainer at a time (an ``flock`` that a killed holder does not leave
behind), and a checkpoints/ folder that cannot be written is found before the first step, not at
the first save.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from fmkit.engine import checkpoint as ck
from fmkit.engine.runlock import RunLock
from fmkit.errors import TrainingError
from reliability_helpers import cli, isolate, squash, subprocess_env, tiny_run


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def test_a_second_trainer_of_the_same_run_is_refused_naming_the_first():
    """A second trainer of a run being trained is refused naming the first (PID and host), touching
    nothing; once released, the resume goes on. Two trainers of one run used to lose checkpoints and
    metrics rows."""
    run = tiny_run()
    with RunLock(run):
        r = cli("train", "--resume", run, "--set", "trainer.steps=9")
    assert r.code == 2, r.text
    msg = squash(r.err)
    assert f"another fmkit process is training this run: PID {os.getpid()} on host" in msg, msg
    assert "where: run" in msg
    assert ck.load_checkpoint(ck.find_latest(run / "checkpoints")).meta["step"] == 6  # nothing touched
    r = cli("train", "--resume", run, "--set", "trainer.steps=9")  # released: the resume goes on
    assert r.code == 0, r.text


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from fmkit.engine.runlock import RunLock; "
            f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=f"PID {p.pid} on host"):
            RunLock(run).acquire()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        p.kill()
    lock = RunLock(run)
    lock.acquire()  # the kernel dropped the dead process's lock
    lock.release()


def _unprivileged() -> list[str]:
    """A command prefix under which this user cannot write a mode-0555 folder (root bypasses
    permissions: setpriv drops the capabilities that let it)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, "--bounding-set", caps, "--inh-caps", caps]


def test_read_only_checkpoints_folder_is_refused_before_training(tmp_path):
    """A read-only checkpoints/ folder is refused before training, not after training up to the first
    checkpoint, which then could not be saved."""
    run = tiny_run()
    (run / "checkpoints").chmod(0o555)
    try:
        cmd = [*_unprivileged(), sys.executable, "-m", "fmkit", "train", "--resume", str(run),
               "--set", "trainer.steps=12"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120, check=False)
    finally:
        (run / "checkpoints").chmod(0o755)
    assert r.returncode == 2, r.stdout + r.stderr
    msg = squash(r.stderr)
    assert "cannot write to the run's checkpoints/ folder" in msg and "Permission denied" in msg, msg
    assert "before training" in msg
    rows = [ln for ln in (run / "metrics.csv").read_text().splitlines()[1:] if ln.split(",")[0].isdigit()]
    assert max(int(ln.split(",")[0]) for ln in rows) == 6  # no step was trained and lost
