"""The CLI end to end on the toy modality: train -> evaluate (W2, likelihood) -> sample; recipes; plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "trainer.steps=60", "--set", "trainer.batch_size=64", "--set", "model.hidden=32",
         "--set", "trainer.checkpoint_every=30", "--set", "trainer.log_every=10", "--set", "eval.every=30",
         "--set", "eval.num_samples=300", "--set", "data.n=2000", "--set", "trainer.progress=false"]


def fmkit(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "fmkit.cli", *args], cwd=cwd, env=env, capture_output=True,
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
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and any(",eval/w2," in r for r in rows) and any(",loss," in r for r in rows)


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
    assert "coupling" in line and "fmkit.builtin" in line


@pytest.mark.slow
def test_toy_moons_recipe_under_two_minutes(tmp_path):
    import time

    t0 = time.perf_counter()
    r = fmkit("train", "recipes/toy_moons.yaml", "--out", str(tmp_path / "full"), "--set", "trainer.progress=false",
              timeout=600)
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert took < 120, f"took {took:.0f} s"
