"""A recipe sized for a GPU says so before training on a machine without one, naming the CPU-sized
recipe it declares (``cpu_alternative``); the main QM9 job declares one that exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, cli, isolate, squash


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is for machines without a GPU")
def test_a_gpu_sized_recipe_says_so_up_front_on_a_cpu():
    """On a CPU, a recipe sized for a GPU says so before training starts and names its CPU alternative
    (it used to start a run that would take months there, with no word why)."""
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
