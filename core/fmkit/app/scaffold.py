"""``fmkit new-plugin NAME --kind K``: a plugin package that installs and passes its own test unchanged.

The package: ``pyproject.toml`` (build-system, version, the ``fmkit`` entry point, package-data for
its recipes), ``fmkit_<name>/plugin.py`` registering one example component of kind K, the
component's module, a recipe that trains with it, and ``tests/test_plugin.py`` checking it with
:mod:`fmkit.testing` and training the recipe through the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from fmkit.errors import OutputError, RecipeError

KINDS = ("dataset", "model", "path", "coupling", "metric", "writer")


class Example(NamedTuple):
    """One kind's example component: the module it lives in (``fmkit_<name>.<module>``), the hook and
    its ``register(...)`` call (``{name}`` is the plugin's name), the classes plugin.py imports, its
    one-line description, the recipe key it sets (``(key, YAML value)``: replaces the demo recipe's
    default for that key, or adds it), the ``fmkit.testing`` checks its test calls, and the sources."""

    module: str
    hook: str
    classes: tuple[str, ...]
    register: str
    description: str
    recipe: tuple[str, str]
    checks: tuple[str, ...]
    source: str
    test: str


_COMPONENTS: dict[str, Example] = {
    "dataset": Example(
        module="data", hook="register_datasets", classes=('SpiralDataset', 'SpiralOptions'),
        register='register("{name}_spiral", SpiralDataset, options=SpiralOptions)',
        description='2-D points on a noisy spiral',
        recipe=("data", '{{name: {name}_spiral, n: 2048}}'),
        checks=('check_dataset',),
        source='''"""A 2-D spiral, as a dataset: examples {{"x": [2]}}."""

import math

import torch
from fmkit.plugin import DataInfo, Dataset, FieldInfo
from pydantic import BaseModel, ConfigDict, Field


class SpiralOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(4096, ge=1, description="number of points")
    noise: float = Field(0.05, ge=0, description="Gaussian noise std")
    seed: int = 0


class SpiralDataset(Dataset):
    """Points on the spiral r = theta / (3 pi), theta in [0, 3 pi], plus Gaussian noise."""

    def __init__(self, n: int = 4096, noise: float = 0.05, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        theta = torch.rand(n, generator=g) * 3 * math.pi
        r = theta / (3 * math.pi)
        x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) * 2
        self.x = x + noise * torch.randn(n, 2, generator=g)
        self.info = DataInfo({{"x": FieldInfo((2,))}})

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {{"x": self.x[i]}}
''',
        test='''
def test_dataset_keeps_the_contract():
    from fmkit_{name}.data import SpiralDataset

    check_dataset(SpiralDataset(n=256))
'''),
    "model": Example(
        module="net", hook="register_models", classes=('ResNet', 'ResNetOptions'),
        register='register("{name}_net", ResNet.from_data, options=ResNetOptions)',
        description='residual MLP velocity model',
        recipe=("model", '{{name: {name}_net, hidden: 32}}'),
        checks=('check_model',),
        source='''"""A residual MLP velocity model for fixed-size data."""

import torch
from fmkit.plugin import DataInfo
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ResNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)


class ResNet(nn.Module):
    """v(x_t, t) = out(h), h = in([x_t, t]) + sum of residual blocks."""

    def __init__(self, dim: int, hidden: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(dim + 1, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.out = nn.Linear(hidden, dim)

    @classmethod
    def from_data(cls, data_info: DataInfo, hidden: int = 64, blocks: int = 2) -> "ResNet":
        return cls(data_info.dim("x"), hidden, blocks)

    def forward(self, x_t: dict, t: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        x = x_t["x"]
        h = self.inp(torch.cat([x, t[:, None].to(x.dtype)], 1))
        for block in self.blocks:
            h = h + block(h)
        return {{"x": self.out(h)}}
''',
        test='''
def test_model_keeps_the_contract():
    from fmkit import TensorDataset
    from fmkit_{name}.net import ResNet

    data = TensorDataset(torch.randn(16, 2))
    check_model(ResNet.from_data(data.info), data)
'''),
    "path": Example(
        module="paths", hook="register_paths", classes=('PathOptions', 'SineScheduler'),
        register='register("{name}_sine", lambda prediction: AffinePath(SineScheduler(), prediction), options=PathOptions)',
        description='affine path alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)',
        recipe=("path", '{{name: {name}_sine}}'),
        checks=('check_path',),
        source='''"""An affine path with a trigonometric scheduler."""

import math
from typing import Literal

import torch
from fmkit.plugin import Scheduler
from pydantic import BaseModel, ConfigDict


class PathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction: Literal["velocity", "x1"] = "velocity"


class SineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2), with their derivatives."""

    def __call__(self, t: torch.Tensor):
        a = 0.5 * math.pi
        return torch.sin(a * t), torch.cos(a * t), a * torch.cos(a * t), -a * torch.sin(a * t)
''',
        test='''
def test_path_velocity_is_the_derivative_of_the_path():
    from fmkit import AffinePath
    from fmkit_{name}.paths import SineScheduler

    check_path(AffinePath(SineScheduler()), torch.randn(8, 2), torch.randn(8, 2))
'''),
    "coupling": Example(
        module="couplings", hook="register_couplings", classes=('SlicedCoupling',),
        register='register("{name}_sliced", SlicedCoupling, options=None)',
        description='pairs by sorting x0 and x1 along one random direction (a 1-D optimal transport)',
        recipe=("coupling", '{{name: {name}_sliced}}'),
        checks=('check_coupling',),
        source='''"""A coupling: 1-D optimal transport along a random projection."""

import torch
from fmkit.plugin import Coupling, State


class SlicedCoupling(Coupling):
    """Sorts x0 and x1 along a random unit direction and pairs them in that order."""

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        a, b = x0["x"].flatten(1), x1["x"].flatten(1)
        d = torch.randn(a.shape[1], device=a.device, dtype=a.dtype)
        i0, i1 = torch.argsort(a @ d), torch.argsort(b @ d)
        inv = torch.empty_like(i1)
        inv[i1] = torch.arange(len(i1), device=i1.device)
        order = i0[inv]  # x0 row paired with each x1 row
        return {{k: v[order] if k == "x" else v for k, v in x0.items()}}, x1
''',
        test='''
def test_coupling_repairs_the_given_rows():
    from fmkit_{name}.couplings import SlicedCoupling

    check_coupling(SlicedCoupling(), {{"x": torch.randn(16, 2)}}, {{"x": torch.randn(16, 2)}})
'''),
    "metric": Example(
        module="metrics", hook="register_metrics", classes=('MomentGap',),
        register='register("{name}_moments", MomentGap, options=None)',
        description='distance between the mean and covariance of samples and data',
        recipe=("eval", '{{every: 0, num_samples: 256, metrics: [{{name: {name}_moments}}]}}'),
        checks=(),
        source='''"""A metric: how far the first two moments of the samples are from the data's."""

import torch
from fmkit.plugin import Dataset, State


class MomentGap:
    """|mean_s - mean_d| and the Frobenius norm of cov_s - cov_d, on field "x"."""

    def __call__(self, samples: State, dataset: Dataset) -> dict[str, float]:
        s = samples["x"].flatten(1).double()
        d = dataset.reference(len(s))["x"].flatten(1).double()
        return {{"mean_gap": float((s.mean(0) - d.mean(0)).norm()),
                "cov_gap": float((torch.cov(s.T) - torch.cov(d.T)).norm())}}
''',
        test='''
def test_metric_is_zero_on_the_data_itself():
    from fmkit import TensorDataset
    from fmkit_{name}.metrics import MomentGap

    data = TensorDataset(torch.randn(64, 2))
    out = MomentGap()(data.reference(64), data)
    assert out["mean_gap"] < 1e-9 and out["cov_gap"] < 1e-9
'''),
    "writer": Example(
        module="writers", hook="register_writers", classes=('CsvWriter',),
        register='register("{name}_csv", CsvWriter, options=None)',
        description='samples as a CSV file',
        recipe=("eval", '{{every: 0, num_samples: 64, writers: [{{name: {name}_csv}}]}}'),
        checks=(),
        source='''"""A writer: samples as CSV."""

from pathlib import Path

from fmkit.plugin import Dataset, State


class CsvWriter:
    """One row per sample of field "x", flattened: ``samples_step<N>.csv``."""

    def __call__(self, samples: State, out_dir: Path, dataset: Dataset, step: int) -> list[Path]:
        out = Path(out_dir) / f"samples_step{{step}}.csv"
        x = samples["x"].flatten(1).tolist()
        out.write_text("\\n".join(",".join(f"{{v:.6g}}" for v in row) for row in x) + "\\n")
        return [out]
''',
        test='''
def test_writer_writes_one_row_per_sample(tmp_path):
    from fmkit import TensorDataset
    from fmkit_{name}.writers import CsvWriter

    data = TensorDataset(torch.randn(8, 2))
    (path,) = CsvWriter()(data.reference(8), tmp_path, data, 3)
    assert len(path.read_text().splitlines()) == 8
'''),
}

_PYPROJECT = '''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "fmkit-{name}"
version = "0.1.0"
description = "An fmkit plugin: {desc}"
requires-python = ">=3.11"
dependencies = ["fmkit"]

[project.entry-points.fmkit]
{name} = "fmkit_{name}.plugin"

[tool.setuptools.packages.find]
include = ["fmkit_{name}*"]

[tool.setuptools.package-data]
fmkit_{name} = ["recipes/*.yaml"]
'''

_PLUGIN = '''"""fmkit plugin {name}: registers its {kind} and ships a recipe (entry point group ``fmkit``)."""

from pathlib import Path

from fmkit.plugin import hookimpl


@hookimpl
def {hook}(register):
    {imports}

    {register}


@hookimpl
def register_recipes(register):
    for p in sorted((Path(__file__).parent / "recipes").glob("*.yaml")):
        register(p.stem, p)
'''

_RECIPE_HEAD = "# Trains with the {kind} of plugin {name} on the CPU in seconds: `fmkit train {name}_demo`.\n"
#: the demo recipe's sections as YAML flow mappings (an example's own ``recipe`` key replaces or adds one)
_RECIPE = {"name": "{name}_demo", "seed": "0", "data": "{{name: moons, n: 2048}}",
           "model": "{{name: mlp, hidden: 64, depth: 2}}", "solver": "{{name: euler, steps: 20}}",
           "trainer": "{{steps: 100, batch_size: 128, lr: 1.0e-3, device: cpu, progress: false, log_every: 50}}"}

_TEST = '''"""Tests of plugin {name}: its {kind} keeps fmkit's contract, and its recipe trains."""

import fmkit_{name}.plugin
{torch}from fmkit.testing import {checks}fresh_registry, run_cli

{check}

def test_recipe_trains_with_the_plugin(tmp_path):
    reg = fresh_registry(fmkit_{name}.plugin)
    r = run_cli("train", "{name}_demo", "--out", tmp_path / "run", "--set", "trainer.steps=20", registry=reg)
    assert r.code == 0, r.out + r.err
    assert (tmp_path / "run" / "checkpoints").is_dir()
'''

_README = '''# fmkit-{name}

An fmkit plugin that adds a {kind}: {desc}. Scaffolded by `fmkit new-plugin`; see fmkit's docs/plugins.md.

    pip install -e .            # registers entry point `{name}` in group `fmkit`
    fmkit plugins               # lists it
    fmkit train {name}_demo     # trains its recipe
    pytest tests                # its own tests (fmkit.testing contract checks)
'''


def scaffold(name: str, kind: str, dest: Path) -> list[Path]:
    """Write the plugin package for ``name`` (a Python identifier, lower case) with one example
    component of ``kind`` into ``dest`` (a new or empty folder); returns the files written."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
        raise RecipeError(f"plugin name {name!r} is not a lower-case Python identifier", where="fmkit new-plugin NAME",
                          fix="use letters, digits and '_', starting with a letter, e.g. `fmkit new-plugin acme`")
    if kind not in KINDS:
        raise RecipeError(f"unknown kind {kind!r}", where="--kind", fix=f"use one of: {', '.join(KINDS)}")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputError(f"{dest} exists and is not an empty folder", where=str(dest),
                          fix="pass --out with a new folder, or remove that one")
    ex = _COMPONENTS[kind]
    desc = ex.description.format(name=name)
    imports = f"from fmkit_{name}.{ex.module} import {', '.join(ex.classes)}"
    if "AffinePath(" in ex.register:
        imports = "from fmkit import AffinePath\n\n    " + imports
    register = ex.register.format(name=name)[:-1] + f",\n             description=\"{desc}\")"
    recipe = {**_RECIPE, ex.recipe[0]: ex.recipe[1]}
    recipe_text = _RECIPE_HEAD + "".join(f"{k}: {v}\n" for k, v in recipe.items())
    pkg = dest / f"fmkit_{name}"
    files = {
        dest / "pyproject.toml": _PYPROJECT.format(name=name, desc=desc),
        dest / "README.md": _README.format(name=name, kind=kind, desc=desc),
        pkg / "__init__.py": f'"""fmkit plugin {name}."""\n',
        pkg / "plugin.py": _PLUGIN.format(name=name, kind=kind, hook=ex.hook, imports=imports, register=register),
        pkg / f"{ex.module}.py": ex.source.format(name=name),
        pkg / "recipes" / f"{name}_demo.yaml": recipe_text.format(name=name, kind=kind),
        dest / "tests" / "test_plugin.py": _TEST.format(
            name=name, kind=kind, check=ex.test.format(name=name), checks="".join(f"{c}, " for c in ex.checks),
            torch="import torch\n" if "torch." in ex.test else ""),
    }
    try:
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    except OSError as exc:
        raise OutputError(f"cannot write the plugin into {dest}: {exc.strerror or exc}", where=str(dest),
                          fix="pass --out with a folder you can write to") from None
    return list(files)
