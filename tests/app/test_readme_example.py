"""The README's library example runs as written and learns its target."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_library_example_runs_and_recovers_the_mean():
    text = README.read_text()
    section = text.split("## As a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 15 <= len(code.strip().splitlines()) <= 30
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(README), "exec"), scope)
    sol = scope["sol"]
    assert sol.nfe == 40
    assert torch.allclose(sol.x.mean(0), torch.tensor([3.0, -1.0]), atol=0.15)
    assert torch.allclose(sol.x.std(0), torch.tensor([0.5, 0.5]), atol=0.15)


def test_readme_objective_line_runs_in_the_example_scope():
    """The one-call form the README offers for the loop's loss, on the example's own names."""
    text = README.read_text()
    section = text.split("## As a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    line = re.search(r"`(loss, _ = fmkit\.CFMObjective\(.*?\))`", section, re.S).group(1)
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code + "\nimport fmkit\n" + line, str(README), "exec"), scope)
    assert scope["loss"].ndim == 0 and torch.isfinite(scope["loss"]) and scope["loss"].requires_grad
