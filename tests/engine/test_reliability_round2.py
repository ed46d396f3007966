"""Reliability, round two: damaged checkpoints fall back to an older intact one, a run holds a lock,
checkpoints past step 10^9 are pruned by number, and a read-only checkpoints/ is found before training.

Each case failed on the code before it (an "internal error", lost checkpoints or lost training).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fmkit.app.registry
import pytest
import torch
from fmkit.engine import checkpoint as ck
from fmkit.engine.runlock import RunLock
from fmkit.errors import TrainingError
from reliability_helpers import ROOT as REPO_ROOT
from reliability_helpers import TINY, cli, fresh_registry, squash, subprocess_env
from safetensors.torch import load_file, save_file


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    monkeypatch.delenv("FMKIT_DEBUG", raising=False)


def tiny_run(name: str = "run") -> Path:
    Path("tiny.yaml").write_text(TINY)
    r = cli("train", "tiny.yaml", "--out", name)
    assert r.code == 0, r.text
    return Path(name)


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


# -- damaged checkpoints with a consistent manifest --------------------------------------------------
def test_latest_pointer_of_non_utf8_bytes_is_ignored():
    """Old code: `internal error: UnicodeDecodeError` on every resume, sample and evaluate."""
    run = tiny_run()
    (run / "checkpoints" / ck.LATEST).write_bytes(b"\xff\xfe\x00step")
    assert ck.find_latest(run / "checkpoints").name == ck.step_dir_name(6)
    r = cli("train", "--resume", run, "--set", "trainer.steps=9")
    assert r.code == 0 and "internal error" not in r.text, r.text


@pytest.mark.parametrize("damage", ["manifest_entry_removed", "step_abc", "step_negative", "optimizer_tensor_lost"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(damage):
    """Old code: `internal error: KeyError 'model'` / `ValueError: invalid literal for int()` / a negative
    step resumed / a KeyError in the first optimizer step after resuming."""
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
    """Old code: `internal error: PermissionError`. Root reads any file, so the read is denied by
    patching the checksum read, the way a file without read permission fails."""
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


# -- pruning by number -----------------------------------------------------------------------------
def test_pruning_past_a_billion_steps_keeps_the_newest():
    """Old code sorted `step_1000000000` before `step_999999999` as text and deleted the newest."""
    root = Path("ckpts")
    data = ck.CheckpointData({"model": {"w": torch.zeros(1)}}, {"step": 0})
    for step in (999_999_998, 999_999_999, 1_000_000_000, 1_000_000_001):
        data.meta["step"] = step
        ck.save_checkpoint(root, step, data, keep=2)
    kept = [ck._step_of(p) for p in ck.complete_checkpoints(root)]
    assert kept == [1_000_000_000, 1_000_000_001]
    assert ck.find_latest(root).name == ck.step_dir_name(1_000_000_001)


# -- one trainer per run ---------------------------------------------------------------------------
def test_a_second_trainer_of_the_same_run_is_refused_naming_the_first():
    """Old code: both resumed; one died with FileNotFoundError in .tmp-step_*, metrics.csv lost rows."""
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


# -- a read-only checkpoints/ is found before training ----------------------------------------------
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
    """Old code trained to the first checkpoint (step 9 here), then failed to save it: all lost."""
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


# -- recipes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, key, line", [
    ("data: {name: moons}\nmodel: {name: mlp}\nmodel: {name: mlp, hidden: 8}\n", "model", 3),
    ("data: {name: moons, n: 300, n: 400}\nmodel: {name: mlp}\n", "n", 1),
    ("data: {name: moons}\nmodel: {name: mlp}\ntrainer:\n  steps: 5\n  lr: 0.1\n  steps: 7\n", "steps", 6),
])
def test_a_key_given_twice_is_refused_naming_both_lines(text, key, line):
    """Old code: YAML kept the last value silently (a second `model:` dropped the first)."""
    Path("dup.yaml").write_text(text)
    r = cli("recipe", "validate", "dup.yaml")
    assert r.code == 2, r.text
    msg = squash(r.err)
    assert f"the key {key!r} appears twice in one mapping" in msg and f"where: dup.yaml, line {line}," in msg, msg


@pytest.mark.parametrize("extra, needle", [
    ("trainer: {betas: [1.5, 0.999]}", "trainer.betas.0: Input should be less than 1"),
    ("trainer: {steps: true}", "trainer.steps: Input should be a valid integer (got True)"),
    ("trainer: {steps: 1.0e+26}", "trainer.steps: Input should be a valid integer"),
    ("trainer: {cpu_threads: 100000}", "trainer.cpu_threads: Input should be less than or equal to 1024"),
    ("trainer: {loss_weights: {x: -1.0}}", "trainer.loss_weights.x: Input should be greater than or equal to 0"),
    ("seed: 1180591620717411303424", "seed: Input should be less than 9223372036854775808"),
])
def test_option_values_the_validator_used_to_miss(extra, needle):
    """Old code: betas 1.5 trained to NaN, `steps: true` trained one step, 1e26 steps and 100000 threads
    were accepted (the latter hung), a negative weight trained away from the data, seed 2**70 crashed."""
    Path("v.yaml").write_text(f"data: {{name: moons}}\nmodel: {{name: mlp}}\n{extra}\n")
    r = cli("recipe", "validate", "v.yaml")
    assert r.code == 2 and needle in squash(r.err), r.text


@pytest.mark.parametrize("data, needle", [
    ("{name: gaussian, mean: [0, 0], cov: [[1, 2], [2, 1]]}", "cov must be positive definite"),
    ("{name: gaussian, mean: [0, 0, 0], cov: [[1, 0], [0, 1]]}", "cov must be 3 x 3 to match the mean of length 3"),
    ("{name: eight_gaussians, radius: .inf}", "data.radius: Input should be a finite number"),
])
def test_component_options_the_validator_used_to_miss(data, needle):
    Path("v.yaml").write_text(f"data: {data}\nmodel: {{name: mlp}}\n")
    r = cli("recipe", "validate", "v.yaml")
    assert r.code == 2 and needle in squash(r.err), r.text


def test_loss_weight_for_a_field_the_data_lacks_is_refused():
    """Old code trained with the weight ignored (a misspelt field name is silently weight 1)."""
    text = TINY.replace("keep_checkpoints: 2}", "keep_checkpoints: 2, loss_weights: {pos: 2.0}}")
    Path("w.yaml").write_text(text)
    r = cli("train", "w.yaml", "--out", "w")
    assert r.code == 2, r.text
    assert "trainer.loss_weights names ['pos'], which the data does not have" in squash(r.err), r.text


# -- sampling ---------------------------------------------------------------------------------------
def test_sample_count_is_bounded():
    """Old code: `-n 1000000000000` tried to hold 10^12 samples and ran out of memory."""
    run = tiny_run()
    r = cli("sample", run, "-n", 10**12)
    assert r.code == 2 and "10000000" in r.text, r.text
    assert not (run / "samples").exists() or not any((run / "samples").iterdir())


def test_all_nan_samples_fail_and_leave_no_empty_folder(monkeypatch):
    """Old code wrote the NaN samples and exited 0; a failed sample left an empty samples/cli-* folder."""
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


def _wait_for(path: Path, timeout: float = 120) -> None:
    t = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_sigterm_during_sample_says_interrupted(tmp_path):
    """Old code: exit -15 (killed by the signal) with no message."""
    run = tiny_run()
    code = ("import sys, pathlib, fmkit.engine.evaluation as t, fmkit.app.cli as c\n"
            "real = t.sample_in_chunks\n"
            "def slow(*a, **k):\n"
            "    pathlib.Path('sampling').touch()\n"
            "    import time; time.sleep(60)\n"
            "t.sample_in_chunks = slow\n"
            "sys.argv = ['fmkit', 'sample', 'run', '-n', '4']\n"
            "c.run()\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "sampling")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, (p.returncode, err)
    assert "interrupted" in err and "Traceback" not in err, err
    assert not list((run / "samples").glob("cli-*"))


EVAL_RECIPE = TINY.replace("keep_checkpoints: 2}", "keep_checkpoints: 2}\neval: {num_samples: 64, metrics: "
                           "[{name: w2, num_reference: 64}]}")


def test_sigterm_during_the_final_evaluation_stops_it_and_resume_finishes_it(tmp_path):
    """Old code ignored SIGTERM/SIGINT during the final evaluation (a scheduler's SIGKILL then lost it) and
    the resume said "this run already finished", so the evaluation never happened."""
    Path("e.yaml").write_text(EVAL_RECIPE)
    code = ("import sys, pathlib, time, fmkit.app.builtin.metrics as m\n"
            "real = m.W2Metric.__call__\n"
            "def slow(self, *a, **k):\n"
            "    pathlib.Path('evaluating').touch(); time.sleep(60)\n"
            "m.W2Metric.__call__ = slow\n"
            "import fmkit.app.cli as c\n"
            "sys.argv = ['fmkit', 'train', 'e.yaml', '--out', 'run']\n"
            "c.run()\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "evaluating")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, (p.returncode, err)
    msg = squash(err)
    assert "stopped by SIGTERM during the evaluation at step 6" in msg and "runs the evaluation" in msg, msg
    r = cli("train", "--resume", "run")
    assert r.code == 0, r.text
    rows = (tmp_path / "run" / "metrics.csv").read_text()
    assert "6,eval/w2," in rows and json.loads((tmp_path / "run" / "evaluated.json").read_text()) \
        == {"step": 6}
    r = cli("train", "--resume", "run")  # now it is finished
    assert r.code == 2 and "this run already finished" in squash(r.err), r.text


def test_the_new_errors_are_listed_in_docs_errors_md():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    for needle in ("another fmkit process is training this run", "every checkpoint under RUN/checkpoints is damaged",
                   "cannot read the checkpoint file", "cannot write to the run's checkpoints/ folder",
                   "during the evaluation at step N", "samples hold NaN/Inf", "ran out of memory while sampling",
                   "appears twice in one mapping", "which the data does not have", "cov must be positive definite",
                   "is beyond 10000 Å", "note: skipping checkpoint"):
        assert needle in doc, needle


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is for machines without a GPU")
def test_a_gpu_sized_recipe_says_so_up_front_on_a_cpu():
    """Old code: the README's main job started on a CPU with an ETA of ~2,240 hours and no word why."""
    Path("g.yaml").write_text(TINY.replace("device: cpu", "device: auto")
                              + "cpu_alternative: recipes/toy_moons.yaml\n")
    r = cli("train", "g.yaml", "--out", "g")
    assert r.code == 0, r.text
    first = squash(r.out).replace("\n", " ")
    assert "note: no GPU here: this recipe is sized for one" in first and "fmkit train recipes/toy_moons.yaml" in first
    assert first.index("no GPU here") < first.index("run directory")


def test_the_main_job_names_its_cpu_alternative():
    from fmkit.app.recipe import read_yaml

    root = Path(__file__).resolve().parents[2]
    alt = read_yaml(root / "recipes" / "molecules_qm9.yaml")["cpu_alternative"]
    assert (root / alt).is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_fmkit_starts_exits_130_without_a_traceback(tmp_path, sig):
    """Old code: a Ctrl-C in the first ~1.3 s of `fmkit train` (torch still importing) printed a
    KeyboardInterrupt traceback and exited -2; the docs promise 130."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-m", "fmkit", "train", str(REPO_ROOT / "recipes" / "toy_moons.yaml"),
                          "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)  # python is up; torch and the CLI are importing (about a second on these cores)
    p.send_signal(sig)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out, out
    assert not (tmp_path / "run" / "checkpoints").exists()


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
