"""A third-party plugin installed as a real distribution is found through its entry point, listed by
`fmkit plugins`, and usable from a recipe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

import fmkit


class LinearOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = 1.0


class TimeLinear(nn.Module):
    """v(x, t) = W [x, t] (a deliberately tiny model)."""

    def __init__(self, data_info, scale: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(data_info.dim("x") + 1, data_info.dim("x"))
        self.scale = scale

    def forward(self, x_t, t, cond=None):
        return {"x": self.scale * self.lin(torch.cat([x_t["x"], t[:, None]], 1))}


@fmkit.hookimpl
def register_models(register):
    register("time_linear", TimeLinear, options=LinearOptions, description="linear in (x, t)")


@fmkit.hookimpl
def register_datasets(register):
    def blob(n: int = 512):
        g = torch.Generator().manual_seed(0)
        return fmkit.TensorDataset(torch.randn(n, 3, generator=g) + 2.0)

    register("blob3d", blob, description="a 3-D Gaussian blob")
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "fmkit-demo-plugin"
version = "0.0.1"
dependencies = ["fmkit"]

[project.entry-points.fmkit]
demo = "fmkit_demo_plugin"

[tool.setuptools]
py-modules = ["fmkit_demo_plugin"]
'''

RECIPE = '''
name: demo
data: {name: blob3d}
model: {name: time_linear, scale: 1.0}
solver: {name: heun, steps: 8}
trainer: {steps: 6, batch_size: 32, checkpoint_every: 3, log_every: 3, progress: false, ema_decay: null}
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("demo_plugin")
    src = root / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "fmkit_demo_plugin.py").write_text(textwrap.dedent(PLUGIN))
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True)
    assert list(target.glob("fmkit_demo_plugin-0.0.1.dist-info")), "the plugin was not installed as a distribution"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
               COLUMNS="200")
    env.pop("FMKIT_PLUGINS", None)
    return {"env": env, "root": str(root)}


def _fmkit(args: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmkit", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_listed_by_fmkit_plugins(installed):
    r = _fmkit(["plugins"], installed["env"], installed["root"])
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "time_linear" in line or "blob3d" in line]
    assert len(rows) == 2 and all("demo" in row for row in rows), r.stdout


def test_usable_from_a_recipe(installed):
    root = Path(installed["root"])
    (root / "demo.yaml").write_text(RECIPE)
    r = _fmkit(["train", "demo.yaml", "--out", "run"], installed["env"], str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "run" / "checkpoints" / "step_000000006" / "MANIFEST.json").is_file()


def test_disabled_by_block_list(installed):
    env = dict(installed["env"], FMKIT_DISABLE_PLUGINS="demo")
    r = _fmkit(["plugins"], env, installed["root"])
    assert r.returncode == 0 and "time_linear" not in r.stdout


def test_an_exported_model_names_the_distribution_its_plugin_comes_from(installed):
    """A model folder made with the plugin, loaded where the plugin is not installed (its site folder off
    the path), says which distribution to install, before building anything."""
    root = Path(installed["root"])
    if not (root / "run").is_dir():
        (root / "demo.yaml").write_text(RECIPE)
        assert _fmkit(["train", "demo.yaml", "--out", "run"], installed["env"], str(root)).returncode == 0
    r = _fmkit(["export", "run", "model"], installed["env"], str(root))
    assert r.returncode == 0, r.stdout + r.stderr

    without = dict(installed["env"], PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    r = _fmkit(["sample", "model", "-n", "4"], without, str(root))
    err = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "this model needs the plugin 'demo' (fmkit-demo-plugin 0.0.1)" in err, err
    assert "fix: pip install fmkit-demo-plugin" in err, err
    r = _fmkit(["sample", "model", "-n", "4"], dict(installed["env"], FMKIT_DISABLE_PLUGINS="demo"), str(root))
    assert r.returncode == 2 and "the plugin 'demo' is installed but disabled" in " ".join(r.stderr.split())
