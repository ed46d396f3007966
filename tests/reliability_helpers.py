"""Helpers shared by the reliability and security tests (test_errors, test_crash_safety, test_security and
the tests of damaged runs, full disks, stop signals and recipe validation).

``cli(...)`` runs the real console entry point ``fmkit.app.cli.run`` in-process (argv patched, stdout and
stderr captured, ``SystemExit`` caught), which is what a user's shell sees minus process start-up;
``fmkit_subprocess(...)`` runs ``python -m fmkit`` for the cases that need a real process.
``fake_registry`` is a fresh registry (built-in plugin + :class:`FakePlugin`, no entry points), so
messages that list component names do not depend on which plugins are installed; ``isolate`` sets
that registry up in a test's own folder, ``tiny_run`` trains a tiny run there, ``clean_error`` checks a
what/where/fix error.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import fmkit.app.cli
import torch
from fmkit import hookimpl
from fmkit.app.builtin.mlp import MLP
from fmkit.errors import DataError
from fmkit.flow.data import TensorDataset
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

#: a tiny, fast training recipe on the built-in toy modality (CPU, no eval)
TINY = """\
name: tiny
seed: 0
data: {name: moons, n: 256}
model: {name: mlp, hidden: 8, depth: 1, time_dim: 4}
solver: {name: euler, steps: 4}
trainer: {steps: 6, batch_size: 32, device: cpu, progress: false, checkpoint_every: 3, log_every: 1,
          keep_checkpoints: 2}
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: object) -> Result:
    """Run ``fmkit ARGS`` in-process through the console-script entry point."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    fmkit.app.cli._STATE["debug"] = False
    argv = sys.argv
    sys.argv = ["fmkit", *(str(a) for a in args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                fmkit.app.cli.run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FMKIT_PLUGINS="none")
    env.pop("FMKIT_DEBUG", None)
    env.update(extra)
    return env


def fmkit_subprocess(*args: object, cwd: Path, timeout: float = 120, script: bool = False) -> Result:
    """Run ``python -m fmkit ARGS`` (core only: FMKIT_PLUGINS=none, one thread); ``script`` runs
    the installed ``fmkit`` console script instead, when there is one beside the interpreter."""
    exe = Path(sys.executable).with_name("fmkit")
    cmd = [str(exe)] if script and exe.is_file() else [sys.executable, "-m", "fmkit"]
    r = subprocess.run([*cmd, *(str(a) for a in args)], cwd=cwd, env=subprocess_env(),
                       capture_output=True, text=True, timeout=timeout, check=False)
    return Result(r.returncode, r.stdout, r.stderr)


def squash(text: str) -> str:
    """Collapse runs of spaces (a terminal may wrap long lines) but keep line breaks."""
    return "\n".join(re.sub(r"[ \t]+", " ", line).rstrip() for line in text.splitlines())


# -- a fake third-party plugin ---------------------------------------------------------------
class NeedsRootOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str | None = Field(None, description="data folder (default $FAKE_DATA_DIR)")


def build_needs_root(root: str | None = None) -> TensorDataset:
    """Like a real plugin dataset: refuses to start without its data folder."""
    base = root or os.environ.get("FAKE_DATA_DIR")
    if not base:
        raise DataError("no data root: FAKE_DATA_DIR is not set", where="dataset needs_root",
                        fix="export FAKE_DATA_DIR=/path/to/data, or set the dataset option `root`")
    folder = Path(base) / "fake"
    if not (folder / "points.safetensors").is_file():
        raise DataError(f"no fake data in {folder} (missing)", where=str(folder),
                        fix=f"put points.safetensors into {folder}/")
    from safetensors.torch import load_file

    return TensorDataset(load_file(str(folder / "points.safetensors"))["x"])


class XzPointsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


def build_xz_points(path: str) -> TensorDataset:
    """Points from an xz-compressed text file, read without guarding against truncation (as a
    quickly written plugin would)."""
    import lzma

    with lzma.open(path, "rt") as f:
        rows = [[float(v) for v in line.split()] for line in f.read().splitlines() if line.strip()]
    return TensorDataset(torch.tensor(rows))


def build_ctrl_c() -> TensorDataset:
    """A dataset whose loading the user interrupts with Ctrl-C (before training starts)."""
    raise KeyboardInterrupt


class NanPointsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 256
    bad_row: int = 37


def build_nan_points(n: int = 256, bad_row: int = 37) -> TensorDataset:
    """2-D points with one NaN coordinate in row ``bad_row``."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    x[bad_row, 1] = float("nan")
    return TensorDataset(x)


def build_labelled() -> TensorDataset:
    """A continuous field ``x`` and a categorical field ``atoms`` (5 classes)."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset({"x": torch.randn(256, 2, generator=g), "atoms": torch.randint(0, 5, (256, 3), generator=g)})


class NanAfterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: int = Field(4, ge=1, description="forward call from which the output is NaN")


class NanAfter(nn.Module):
    """A working MLP until its ``at``-th forward call, NaN from then on (a diverging model)."""

    def __init__(self, data_info, at: int = 4) -> None:
        super().__init__()
        self.net = MLP.from_data(data_info, hidden=8, depth=1, time_dim=4)
        self.at, self.calls = at, 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        out = self.net(x_t, t, cond)
        if self.calls >= self.at:
            out = {k: v * float("nan") for k, v in out.items()}
        return out


class OOMModel(nn.Module):
    """Raises the error CUDA raises when memory runs out."""

    def __init__(self, data_info) -> None:
        super().__init__()
        self.lin = nn.Linear(data_info.dim("x"), data_info.dim("x"))

    def forward(self, x_t, t, cond=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class BuggyModel(OOMModel):
    """A genuine bug, not a user error."""

    def forward(self, x_t, t, cond=None):
        raise RuntimeError("boom [in forward]")


class FakePlugin:
    """Components a third-party plugin could register, for the error catalogue."""

    @hookimpl
    def register_datasets(self, register):
        register("needs_root", build_needs_root, NeedsRootOptions, "needs a data root")
        register("nan_points", build_nan_points, NanPointsOptions, "2-D points with a NaN")
        register("labelled", build_labelled, None, "continuous x and categorical atoms")
        register("xz_points", build_xz_points, XzPointsOptions, "points from an .xz text file")
        register("ctrl_c", build_ctrl_c, None, "interrupted while loading")

    @hookimpl
    def register_models(self, register):
        register("nan_after", NanAfter, NanAfterOptions, "NaN output from call `at` on")
        register("oom", OOMModel, None, "raises CUDA out-of-memory")
        register("buggy", BuggyModel, None, "raises RuntimeError")


def fresh_registry():
    from fmkit.app.registry import Registry

    reg = Registry.fresh(entry_points=False)
    reg.add_plugin(FakePlugin(), name="fake")
    return reg


# -- the setting of the CLI reliability tests -------------------------------------------------------
def isolate(tmp_path: Path, monkeypatch) -> None:
    """Run in ``tmp_path`` with the fake plugin's registry and without FMKIT_DEBUG, so messages and
    component lists do not depend on the machine (call it from an autouse fixture)."""
    import fmkit.app.registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    monkeypatch.delenv("FMKIT_DEBUG", raising=False)


def tiny_run(name: str = "run") -> Path:
    """``fmkit train`` of :data:`TINY` into ``name`` (6 steps, checkpoints at 3 and 6)."""
    Path("tiny.yaml").write_text(TINY)
    r = cli("train", "tiny.yaml", "--out", name)
    assert r.code == 0, r.text
    return Path(name)


def clean_error(r: Result, *needles: str, code: int = 2) -> str:
    """A what/where/fix error: the exit code, no traceback, no internal error; returns the message."""
    assert r.code == code, r.text
    assert "Traceback" not in r.text and "internal error" not in r.text, r.text
    msg = squash(r.err)
    for n in needles:
        assert n in msg, f"{n!r} not in:\n{msg}"
    return msg
