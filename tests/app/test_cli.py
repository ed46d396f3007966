"""The CLI end to end on the toy modality: train -> evaluate (W2, likelihood) -> sample; recipes; plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fmkit.app import registry as fm_registry
from fmkit.engine.metrics_log import read_metrics
from reliability_helpers import TINY, cli, fresh_registry, squash

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "trainer.steps=60", "--set", "trainer.batch_size=64", "--set", "model.hidden=32",
         "--set", "trainer.checkpoint_every=30", "--set", "trainer.log_every=10", "--set", "eval.every=30",
         "--set", "eval.num_samples=300", "--set", "data.n=2000", "--set", "trainer.progress=false"]


def fmkit(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "fmkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "moons"
    r = fmkit("train", "recipes/toy_moons.yaml", "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "w2" in r.stdout  # the final evaluation table
    return out


def test_train_writes_a_complete_run(run_dir):
    assert (run_dir / "recipe.yaml").is_file()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000000030", "step_000000060"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000000060"
    assert (run_dir / "samples" / "samples_step0000060.png").stat().st_size > 1000
    assert (run_dir / "metrics.csv").read_text().startswith("step,name,value\n")
    logged = read_metrics(run_dir)
    assert logged["eval/w2"] and logged["loss"]
    assert (run_dir / "curves.png").stat().st_size > 10_000  # the training curves, drawn when training ends


def test_curves_draws_any_run_and_names_a_folder_that_is_not_one(run_dir, tmp_path):
    from PIL import Image

    r = fmkit("curves", str(run_dir), "--out", str(tmp_path / "c.png"), "--smoothing", "0.5")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "c.png") as im:  # a real PNG, several panels wide
        assert im.format == "PNG" and im.size[0] > 800
    r = fmkit("curves", str(tmp_path))
    assert r.returncode == 2 and "not a run directory" in r.stderr + r.stdout
    r = fmkit("curves", str(run_dir), "--smoothing", "1")
    assert r.returncode == 2 and "smoothing must be in [0, 1)" in r.stderr + r.stdout


def test_evaluate_prints_w2_and_likelihood(run_dir):
    r = fmkit("evaluate", str(run_dir), "-n", "300", "--likelihood", "--likelihood-n", "50")
    assert r.returncode == 0, r.stderr
    assert "w2" in r.stdout and "bits/dim" in r.stdout and "nll" in r.stdout
    w2 = float(next(line for line in r.stdout.splitlines() if " w2 " in line).split("│")[2])
    assert 0.0 < w2 < 10.0


def test_sample_writes_files_inside_the_run(run_dir):
    r = fmkit("sample", str(run_dir), "-n", "100", "--solver", "rk4", "--steps", "5", "--out", "mine")
    assert r.returncode == 0, r.stderr
    out = run_dir / "samples" / "mine"
    assert (out / "samples.safetensors").is_file() and list(out.glob("*.png"))
    from safetensors.torch import load_file

    x = load_file(str(out / "samples.safetensors"))["x"]
    assert x.shape == (100, 2)


def test_recipe_validate_and_show():
    r = fmkit("recipe", "validate", "recipes/toy_checkerboard.yaml")
    assert r.returncode == 0 and "valid" in r.stdout
    r = fmkit("recipe", "show", "recipes/toy_moons.yaml", "--set", "trainer.lr=0.01")
    assert r.returncode == 0 and "lr: 0.01" in r.stdout and "grad_accum: 1" in r.stdout


def test_plugins_lists_core_components_with_their_plugin():
    r = fmkit("plugins")
    assert r.returncode == 0
    line = next(line for line in r.stdout.splitlines() if " exact_ot " in line)
    assert "coupling" in line and "fmkit.app.builtin.plugin" in line


@pytest.mark.slow
def test_toy_moons_recipe_under_two_minutes(tmp_path):
    import time

    t0 = time.perf_counter()
    r = fmkit("train", "recipes/toy_moons.yaml", "--out", str(tmp_path / "full"), "--set", "trainer.progress=false",
              timeout=600)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert took < 120, f"took {took:.0f} s"


# -- in-process CLI cases (the console entry point, a registry of the core + a fake plugin) -----


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fm_registry, "_DEFAULT", fresh_registry())
    monkeypatch.delenv("FMKIT_DEBUG", raising=False)
    (tmp_path / "tiny.yaml").write_text(TINY + "eval: {metrics: [{name: w2, num_reference: 64}], num_samples: 64}\n")
    return tmp_path


@pytest.fixture
def tiny_run(here) -> Path:
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    return Path("run")


def test_python_dash_m_fmkit_is_the_fmkit_command(tmp_path):
    """`python -m fmkit` is the fmkit command (the package has a __main__), and its usage lines say
    `fmkit`, not `python -m fmkit.cli`."""
    env = dict(os.environ, COLUMNS="200", FMKIT_PLUGINS="none")
    r = subprocess.run([sys.executable, "-m", "fmkit", "train", "--bogus"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Usage: fmkit train" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "fmkit", "--help"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "Usage: fmkit " in r.stdout and "train" in r.stdout


def test_bad_estimator_is_refused_before_sampling(tiny_run, monkeypatch):
    from fmkit.engine import evaluation

    def no_sampling(*a, **k):
        raise AssertionError("sampled before checking --estimator")

    monkeypatch.setattr(evaluation, "sample_in_chunks", no_sampling)
    r = cli("evaluate", "run", "--likelihood", "--estimator", "bogus")
    assert r.code == 2 and "Traceback" not in r.text, r.text
    msg = squash(r.err)
    assert "unknown divergence estimator 'bogus'" in msg and "where: --estimator" in msg
    assert "fix: use one of: auto, exact, hutchinson" in msg


def test_steps_with_an_adaptive_solver_says_which_flags_apply(tiny_run):
    r = cli("sample", "run", "-n", "4", "--solver", "dopri5", "--steps", "10")
    assert r.code == 2, r.text
    msg = squash(r.err)
    assert "solver 'dopri5' has no option 'steps'" in msg and "where: --steps" in msg
    assert "--steps applies to fixed-step solvers (euler, heun, midpoint, rk4); an adaptive one such as 'dopri5' " \
           "takes --rtol/--atol" in msg
    r = cli("sample", "run", "-n", "4", "--rtol", "1e-3")
    assert r.code == 2 and "--rtol applies to adaptive solvers" in squash(r.err)
    r = cli("sample", "run", "-n", "4", "--solver", "dopri5", "--rtol", "1e-3", "--atol", "1e-3", "--out", "ad")
    assert r.code == 0, r.text


def test_evaluate_title_names_the_solver_and_its_settings(tiny_run):
    """The title names the solver by its method and settings (``euler, 4 steps``), not by its class
    (``FixedStepSolver``)."""
    r = cli("evaluate", "run", "-n", "32")
    assert r.code == 0, r.text
    assert "(32 samples, euler, 4 steps)" in " ".join(r.out.split()) and "FixedStepSolver" not in r.out  # wrapped
    r = cli("evaluate", "run", "-n", "32", "--solver", "rk4", "--steps", "3")
    assert "rk4, 3 steps" in " ".join(r.out.split())


def test_resuming_a_finished_run_prints_only_the_error(tiny_run):
    """Resuming a finished run prints the error alone, not first the "run directory ... params" line
    as if training were starting."""
    r = cli("train", "--resume", "run")
    assert r.code == 2 and "already finished" in r.err
    assert "run directory" not in r.out


def test_sample_out_refuses_a_non_empty_folder_unless_overwrite(tiny_run):
    """An existing non-empty --out folder is refused and left as it is (it used to be written into,
    its files replaced silently); --overwrite replaces them; the default cli-<time> names never collide."""
    assert cli("sample", "run", "-n", "4", "--out", "mine").code == 0
    mine = tiny_run / "samples" / "mine" / "samples.safetensors"
    before = mine.read_bytes()
    r = cli("sample", "run", "-n", "8", "--out", "mine")
    assert r.code == 2 and "already exists and is not empty" in squash(r.err) and "--overwrite" in r.err
    assert mine.read_bytes() == before
    assert cli("sample", "run", "-n", "8", "--out", "mine", "--overwrite").code == 0
    assert mine.read_bytes() != before
    # default names never collide, even twice within one second
    assert cli("sample", "run", "-n", "4").code == 0 and cli("sample", "run", "-n", "4").code == 0
    assert len(list((tiny_run / "samples").glob("cli-*"))) == 2


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_out(here):
    """A run that failed before its first checkpoint does not hold its --out: the same folder trains anew
    (its recipe.yaml and metrics.csv replaced) instead of "already holds a run"; one with a checkpoint does."""
    Path("buggy.yaml").write_text("data: {name: moons, n: 256}\nmodel: {name: buggy}\n"
                                  "trainer: {steps: 5, batch_size: 64, device: cpu, progress: false}\n")
    assert cli("train", "buggy.yaml", "--out", "run").code == 1
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    assert "name: tiny" in Path("run/recipe.yaml").read_text()
    rows = Path("run/metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and len(rows) > 1
    r = cli("train", "tiny.yaml", "--out", "run")  # with a checkpoint it is a run
    assert r.code == 2 and "already holds a run" in r.err


def test_a_recipe_shipped_by_a_plugin_is_found_by_name(here, monkeypatch):
    """A recipe a plugin ships is found by its name by `fmkit recipe validate/show/list` and `fmkit train`
    (not taken for a missing file); a misspelt name gets the closest one."""
    from fmkit import hookimpl

    shipped = here / "plugin_recipes" / "ring.yaml"
    shipped.parent.mkdir()
    shipped.write_text(TINY)

    class Ring:
        @hookimpl
        def register_recipes(self, register):
            register("ring", shipped)

    fm_registry._DEFAULT.add_plugin(Ring(), name="ring")
    assert cli("recipe", "validate", "ring").code == 0
    assert "hidden: 8" in cli("recipe", "show", "ring").out
    assert "ring" in cli("recipe", "list").out
    r = cli("train", "ring", "--out", "run")
    assert r.code == 0, r.text
    r = cli("train", "rign")
    assert r.code == 2 and "did you mean 'ring'?" in squash(r.err) and "fmkit recipe list" in r.err


def test_sample_and_evaluate_load_an_older_checkpoint_by_step_or_folder(tiny_run):
    """`fmkit sample` and `evaluate` load an older checkpoint by its step or its folder, not only the
    run's newest: the same weights either way, another model than the newest."""
    from safetensors.torch import load_file

    r = cli("evaluate", "run", "-n", "32", "--checkpoint", "3")
    assert r.code == 0, r.text
    assert "@ step_000000003" in " ".join(r.out.split())
    outs = {}
    for which in ("3", "run/checkpoints/step_000000003", None):
        extra = ["-c", which] if which else []
        r = cli("sample", "run", "-n", "16", "--out", f"s{len(outs)}", *extra)
        assert r.code == 0, r.text
        outs[which] = load_file(f"run/samples/s{len(outs)}/samples.safetensors")["x"]
    assert (outs["3"] == outs["run/checkpoints/step_000000003"]).all()  # the same weights, the same seed
    assert not (outs["3"] == outs[None]).all()  # the newest (step 6) is another model


def test_a_checkpoint_the_run_does_not_keep_is_named_with_the_kept_steps(tiny_run, tmp_path):
    r = cli("sample", "run", "-n", "4", "--checkpoint", "4")
    assert r.code == 2 and "Traceback" not in r.text, r.text
    msg = squash(r.err)
    assert "'4' is not a complete checkpoint of run" in msg and "where: --checkpoint" in msg
    assert "give one of its kept steps (3, 6)" in msg
    other = cli("train", "tiny.yaml", "--out", "other")
    assert other.code == 0, other.text
    r = cli("evaluate", "run", "-n", "4", "-c", "other/checkpoints/step_000000003")  # weights of another run
    assert r.code == 2 and "is not a complete checkpoint of run" in squash(r.err), r.text


def test_the_training_table_lists_metrics_in_the_recipe_order(tmp_path, capsys):
    """The end-of-training table lists the metrics in the recipe's order, as `fmkit evaluate` does (not
    sorted by name)."""
    from fmkit.app.cli import common as fm_cli

    (tmp_path / "metrics.csv").write_text("step,name,value\n5,loss,1.0\n5,eval/validity,0.5\n5,eval/atom_stable,0.9\n")
    fm_cli.print_eval(tmp_path)
    out = capsys.readouterr().out
    assert out.index("validity") < out.index("atom_stable"), out


def test_evaluate_samples_with_the_recipes_guidance_as_training_did(tmp_path, monkeypatch):
    """`fmkit evaluate` samples a guided run at its recipe's eval.guidance_scale, as the trainer's
    evaluation and `fmkit reflow` do, so its metrics match the training log (without it they
    disagreed); --guidance overrides the scale, and needs a conditional dataset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fm_registry, "_DEFAULT", fresh_registry())
    Path("cond.yaml").write_text(
        "name: cond\nseed: 0\ndata: {name: eight_gaussians, n: 2000, conditional: true}\n"
        "model: {name: mlp, hidden: 32, depth: 2, time_dim: 8}\nsolver: {name: euler, steps: 8}\n"
        "trainer: {steps: 60, batch_size: 128, device: cpu, progress: false, cond_dropout: 0.2}\n"
        "eval: {num_samples: 400, guidance_scale: 3.0, metrics: [{name: w2}]}\n")
    r = cli("train", "cond.yaml", "--out", "run")
    assert r.code == 0, r.text
    logged = read_metrics(Path("run"))["eval/w2"][-1][1]
    r = cli("evaluate", "run")
    assert r.code == 0 and "guidance 3" in squash(r.out), r.text
    printed = float(next(line for line in squash(r.out).splitlines() if " w2 " in f" {line} ").split()[-2])
    assert abs(printed - logged) < 1e-3, (printed, logged)
    r = cli("evaluate", "run", "--guidance", "1")  # plain conditional sampling: another figure
    assert r.code == 0 and "guidance 1" in squash(r.out), r.text
    Path("uncond.yaml").write_text(TINY)
    assert cli("train", "uncond.yaml", "--out", "u").code == 0
    r = cli("evaluate", "u", "--guidance", "2")
    assert r.code == 2 and "--guidance needs a conditional dataset" in squash(r.err), r.text
