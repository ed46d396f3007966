"""Crash safety of `fmkit train`: SIGINT/SIGTERM stop cleanly with a checkpoint of the current step;
`kill -9` at random moments loses at most one checkpoint interval, and resuming after every kill
ends bit-for-bit where an uninterrupted run of the same recipe ends (CPU).

These run `python -m fmkit` in subprocesses (one thread each, core plugins only). The default
suite kills 10 times; `-m slow` adds a 30-kill run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fmkit.app.recipe import load_recipe
from fmkit.app.registry import Registry
from fmkit.app.run import build_trainer
from fmkit.engine import checkpoint as ck
from reliability_helpers import squash, subprocess_env

#: tiny but complete: warmup + cosine, exact-OT coupling, a toy source, EMA, checkpoints every 5
RECIPE = """\
name: crash
seed: 3
data: {{name: moons, n: 2048}}
source: {{name: eight_gaussians}}
model: {{name: mlp, hidden: 16, depth: 2, time_dim: 8}}
coupling: {{name: exact_ot}}
solver: {{name: euler, steps: 5}}
trainer: {{steps: {steps}, batch_size: 32, lr: 0.003, warmup_steps: 20, ema_decay: 0.99, device: cpu,
          checkpoint_every: {every}, keep_checkpoints: 2, log_every: 1, progress: false}}
"""


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "fmkit", *args], cwd=cwd, env=subprocess_env(),
                                stdout=out, stderr=subprocess.STDOUT)


def logged_step(run: Path) -> int:
    """The last step whose loss reached metrics.csv (written and flushed before its checkpoint)."""
    try:
        lines = (run / "metrics.csv").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [int(line.split(",")[0]) for line in lines[1:] if line.count(",") == 2 and ",loss," in line]
    return max(steps, default=0)


def checkpoint_step(run: Path) -> int:
    latest = ck.find_latest(run / "checkpoints") if (run / "checkpoints").is_dir() else None
    return int(json.loads((latest / "meta.json").read_text())["step"]) if latest else 0


def wait_for(cond, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    """Poll ``cond()`` until true (True) or the process ends first (False)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("training made no progress in time")


def final_state(run: Path) -> ck.CheckpointData:
    return ck.load_checkpoint(ck.find_latest(run / "checkpoints"))


def assert_bitwise_equal(a: ck.CheckpointData, b: ck.CheckpointData) -> None:
    assert a.meta["step"] == b.meta["step"] and a.meta["data"] == b.meta["data"]
    assert a.meta["ema_updates"] == b.meta["ema_updates"]
    assert a.meta["optimizer"] == b.meta["optimizer"]
    assert a.tensors.keys() == b.tensors.keys()
    for group in a.tensors:  # model, ema, optimizer moments, RNG state
        assert a.tensors[group].keys() == b.tensors[group].keys(), group
        for k, v in a.tensors[group].items():
            w = b.tensors[group][k]
            assert v.dtype == w.dtype and torch.equal(v, w), f"{group}.{k} differs (max {(v.double() - w.double()).abs().max()})"


def reference_run(tmp: Path, recipe: Path) -> ck.CheckpointData:
    """The same recipe, uninterrupted (in-process: same code, one thread)."""
    reg = Registry.fresh(entry_points=False)
    build_trainer(load_recipe(recipe, registry=reg), tmp / "reference", reg).fit()
    return final_state(tmp / "reference")


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_current_step_and_resumes(tmp_path, sig):
    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=100_000, every=25))
    run = tmp_path / "run"
    p = start(["train", "r.yaml", "--out", "run"], tmp_path, tmp_path / "train.log")
    try:
        assert wait_for(lambda: (run / "checkpoints" / ck.LATEST).exists(), p), (tmp_path / "train.log").read_text()
        time.sleep(0.1)  # somewhere between two checkpoints
        p.send_signal(sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    out = squash((tmp_path / "train.log").read_text())
    assert rc == 130, out
    assert "Traceback" not in out
    step = int(out.split(f"training stopped by {sig.name} at step ")[1].split(";")[0])
    assert "a checkpoint of this step was saved" in out and "fix: resume with `fmkit train --resume run`" in out
    assert step > 25 and checkpoint_step(run) == step  # the step it reached, not the last periodic one
    assert (run / "checkpoints" / ck.LATEST).read_text().strip() == ck.step_dir_name(step)

    # resume continues from exactly that step
    r = subprocess.run([sys.executable, "-m", "fmkit", "train", "--resume", "run", "--set",
                        f"trainer.steps={step + 3}"], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"trained to step {step + 3}" in squash(r.stdout)
    assert checkpoint_step(run) == step + 3
    rows = [line for line in (run / "metrics.csv").read_text().splitlines()[1:] if ",loss," in line]
    assert [int(x.split(",")[0]) for x in rows] == list(range(1, step + 4))  # no gap, no duplicate in the log


def kill_and_resume(tmp: Path, trials: int, steps: int, every: int, seed: int) -> list[str]:
    """Kill -9 ``trials`` times at random moments, resuming each time; return a log of the kills."""
    recipe = tmp / "r.yaml"
    recipe.write_text(RECIPE.format(steps=steps, every=every))
    run = tmp / "run"
    rng = random.Random(seed)
    history: list[str] = []
    startup = 5.0
    for trial in range(trials):
        args = ["train", "r.yaml", "--out", "run"] if trial == 0 else ["train", "--resume", "run"]
        before, seen = checkpoint_step(run), logged_step(run)
        t0 = time.monotonic()
        p = start(args, tmp, tmp / f"trial{trial}.log")
        try:
            # progress is bounded by steps, not time, so that the kills land before the end however
            # fast the machine is
            target = seen + rng.randint(1, 2 * every)
            if trial % 2 == 0:  # while training: mid-step, mid-checkpoint, mid-log
                assert wait_for(lambda t=target: logged_step(run) >= t, p), (tmp / f"trial{trial}.log").read_text()
                startup = time.monotonic() - t0
                time.sleep(rng.uniform(0.0, 0.05))
            else:  # anywhere from start-up (imports, loading the checkpoint, rewriting the log) on
                deadline = t0 + rng.uniform(0.2, 1.3) * startup
                wait_for(lambda d=deadline, t=target: time.monotonic() >= d or logged_step(run) >= t, p)
            assert p.poll() is None, f"run finished before kill {trial}: raise the step count"
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        reached, kept = logged_step(run), checkpoint_step(run)
        phase = "training" if "run directory:" in (tmp / f"trial{trial}.log").read_text() else "start-up"
        history.append(f"kill {trial} ({phase}, {time.monotonic() - t0:.2f} s): reached step {reached}, "
                       f"latest checkpoint {kept}")
        assert kept >= before, history  # a kill never destroys an existing checkpoint
        assert reached - every <= kept <= max(reached, before), history  # at most one interval lost
    r = subprocess.run([sys.executable, "-m", "fmkit", "train", "--resume", "run"], cwd=tmp,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr + "\n".join(history)
    assert checkpoint_step(run) == steps
    return history


def test_kill_9_at_random_moments_loses_at_most_one_interval_and_resumes_bitwise(tmp_path):
    history = kill_and_resume(tmp_path, trials=10, steps=400, every=5, seed=1)
    print("\n".join(history))
    assert_bitwise_equal(final_state(tmp_path / "run"), reference_run(tmp_path, tmp_path / "r.yaml"))


@pytest.mark.slow
def test_kill_9_many_times(tmp_path):
    history = kill_and_resume(tmp_path, trials=30, steps=1200, every=5, seed=2)
    print("\n".join(history))
    assert_bitwise_equal(final_state(tmp_path / "run"), reference_run(tmp_path, tmp_path / "r.yaml"))


# ---------------------------------------------------------------------------------------------
# what a crash can leave behind, and how loading copes with it
# ---------------------------------------------------------------------------------------------
def _trained(tmp: Path, steps: int = 10, every: int = 5) -> Path:
    (tmp / "r.yaml").write_text(RECIPE.format(steps=steps, every=every))
    reg = Registry.fresh(entry_points=False)
    build_trainer(load_recipe(tmp / "r.yaml", registry=reg), tmp / "run", reg).fit()
    return tmp / "run"


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    run = _trained(tmp_path)
    newest = ck.find_latest(run / "checkpoints")
    assert newest.name == ck.step_dir_name(10)
    b = bytearray((newest / "ema.safetensors").read_bytes())
    b[-3] ^= 0x01
    (newest / "ema.safetensors").write_bytes(bytes(b))
    assert ck.resolve_checkpoint(run) == run / "checkpoints" / ck.step_dir_name(5)
    err = " ".join(capsys.readouterr().err.split())  # a note on stderr, not a Python warning
    assert "note: skipping checkpoint step_000000010: checkpoint file ema.safetensors is corrupt" in err, err


def test_leftovers_of_an_interrupted_save_are_ignored_and_cleaned(tmp_path):
    run = _trained(tmp_path)
    root = run / "checkpoints"
    partial = root / f".tmp-{ck.step_dir_name(15)}-99999"  # killed while writing step 15
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    no_manifest = root / ck.step_dir_name(20)  # a directory without its manifest is not a checkpoint
    no_manifest.mkdir()
    assert ck.find_latest(root) == root / ck.step_dir_name(10)
    data = ck.load_checkpoint(ck.find_latest(root))
    ck.save_checkpoint(root, 11, data, keep=2)
    assert not partial.exists()  # pruned by the next save
    assert [p.name for p in ck.complete_checkpoints(root)] == [ck.step_dir_name(10), ck.step_dir_name(11)]


def test_stale_latest_pointer_is_not_trusted_blindly(tmp_path):
    run = _trained(tmp_path)
    root = run / "checkpoints"
    (root / ck.LATEST).write_text("step_000000099\n")  # names nothing
    assert ck.find_latest(root) == root / ck.step_dir_name(10)
    (root / ck.LATEST).write_text("../../elsewhere\n")
    assert ck.find_latest(root) == root / ck.step_dir_name(10)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, monkeypatch):
    import fmkit.app.registry
    from reliability_helpers import cli, fresh_registry

    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    monkeypatch.chdir(tmp_path)

    (tmp_path / "r.yaml").write_text(RECIPE.format(steps=12, every=5))
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text((tmp_path / "r.yaml").read_text())  # as `fmkit train` leaves it at once
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / f".tmp-{ck.step_dir_name(5)}-1").mkdir()  # killed during the first save
    r = cli("train", "--resume", "run")
    assert r.code == 0, r.text
    assert "has no checkpoint yet; training it from step 0" in squash(r.out)
    assert checkpoint_step(run) == 12


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_with_dataloader_workers(tmp_path, sig):
    """A terminal's Ctrl-C (or a scheduler's SIGTERM) reaches the DataLoader workers too; the main
    process must still finish its step (here 2 micro-batches, pairing in the workers), save it, and
    exit 130 without a traceback."""
    recipe = RECIPE.format(steps=100_000, every=25).replace(
        "progress: false}", "progress: false, num_workers: 2, grad_accum: 2, pairing: loader}")
    (tmp_path / "r.yaml").write_text(recipe)
    run = tmp_path / "run"
    with open(tmp_path / "train.log", "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "fmkit", "train", "r.yaml", "--out", "run"], cwd=tmp_path,
                             env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(lambda: (run / "checkpoints" / ck.LATEST).exists(), p), (tmp_path / "train.log").read_text()
        time.sleep(0.1)
        os.killpg(p.pid, sig)  # the whole group: main process and workers
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    out = squash((tmp_path / "train.log").read_text())
    assert rc == 130, out
    assert "Traceback" not in out and "exited unexpectedly" not in out, out
    step = int(out.split(f"training stopped by {sig.name} at step ")[1].split(";")[0])
    assert step > 25 and checkpoint_step(run) == step


def test_weights_and_samples_are_readable_as_the_other_files(tmp_path, monkeypatch):
    """safetensors creates its files 0600: a shared run directory held weights and samples only their
    owner could read, beside meta.json and PNGs readable by the group. (The umask is fixed at 022 so
    that the check tells 0644 from safetensors' 0600 whatever the machine's umask.)"""
    import fmkit.engine.files

    monkeypatch.setattr(fmkit.engine.files, "_UMASK", 0o022)
    run = _trained(tmp_path)
    want = 0o644
    tensors = [*(run / "checkpoints").glob("step_*/*.safetensors"), *(run / "samples").glob("*.safetensors")]
    assert any("samples" in str(p) for p in tensors) and any("model" in p.name for p in tensors)
    for p in tensors:
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))


def _small_trainer(run_dir: Path, options: dict, **kwargs):
    """A 2-D toy Trainer (MLP 8 x 1, 256 moons points, batch 32, CPU) writing to ``run_dir``."""
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.mlp import MLP
    from fmkit.app.builtin.toy import ToyDataset

    ds = ToyDataset("moons", n=256)
    opts = TrainerOptions(**{"batch_size": 32, "device": "cpu", "progress": False, **options})
    return Trainer(MLP.from_data(ds.info, hidden=8, depth=1, time_dim=4), ds, run_dir=run_dir, options=opts, **kwargs)


def test_a_failing_metric_or_writer_does_not_cost_the_others(tmp_path):
    """A metric or writer that raises (say, one needing a missing RDKit) does not cost the others or the
    metrics' log line: each runs, and the first error is raised after them."""
    from fmkit.app.builtin.metrics import W2Metric
    from fmkit.app.recipe import EvalOptions

    class Missing(Exception):
        pass

    def broken(*_):
        raise Missing("needs a library that is not installed")

    def text_writer(samples, out, dataset, step):
        path = out / f"points_{step}.txt"
        path.write_text(str(samples["x"].shape[0]))
        return [path]

    t = _small_trainer(tmp_path / "run", dict(steps=4, log_every=2),
                       eval_options=EvalOptions(num_samples=16, batch_size=16),
                       metrics={"broken": broken, "w2": W2Metric(num_reference=16)},
                       writers={"broken": broken, "points": text_writer})
    with pytest.raises(Missing):
        t.fit()
    assert (tmp_path / "run" / "samples" / "points_4.txt").read_text() == "16"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert any(r.startswith("4,eval/w2,") for r in rows), rows


@pytest.mark.parametrize("how", ["signal", "request_stop"])
def test_a_stop_at_a_checkpoint_step_writes_that_checkpoint_once(tmp_path, monkeypatch, how):
    """A Ctrl-C or request_stop on a step that was just checkpointed (here the fit's `until` step) saves
    nothing more: the signal's branch used to write that checkpoint a second time; request_stop's is
    checked too, since both share one `saved` flag."""
    from fmkit import Callback
    from fmkit.engine.stopping import TrainingInterrupted

    class StopAt4(Callback):
        def on_step_end(self, trainer, step):
            if step == 4:
                if how == "signal":
                    trainer.signals.received = signal.SIGINT  # what the SIGINT handler sets
                else:
                    trainer.request_stop("test")

    t = _small_trainer(tmp_path / "run", dict(steps=10, checkpoint_every=100), callbacks=[StopAt4()])
    saves: list[int] = []
    save = t.save_checkpoint
    monkeypatch.setattr(t, "save_checkpoint", lambda: saves.append(t.step) or save())
    if how == "signal":
        with pytest.raises(TrainingInterrupted):
            t.fit(until=4)
    else:
        t.fit(until=4)
    assert saves == [4]
