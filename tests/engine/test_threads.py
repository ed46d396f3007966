"""CPU threads: the main process leaves the DataLoader workers their cores (oversubscribed torch ops
wait on each other), and `sample`/`evaluate` run with the recipe's ``trainer.cpu_threads`` too."""

from __future__ import annotations

import os

import pytest
import torch
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_trainer

BASE = ["trainer.progress=false", "eval.every=0", "eval.metrics=[]", "eval.writers=[]", "data.n=1000"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("workers,cpu_threads,expected", [(3, "null", 5), (0, "null", None), (3, "2", 2),
                                                          (10, "null", 1)])
def test_trainer_threads_leave_workers_their_cores(monkeypatch, workers, cpu_threads, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)  # an 8-core share
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    torch.set_num_threads(7)  # a sentinel: "unchanged" when nothing asks for a number
    build_trainer(load_recipe("recipes/toy_moons.yaml", BASE + [f"trainer.num_workers={workers}",
                                                                f"trainer.cpu_threads={cpu_threads}"]), None)
    assert torch.get_num_threads() == (expected or 7)


def test_sampling_commands_use_the_recipes_cpu_threads():
    from fmkit.app.inference import inference_device as _device

    torch.set_num_threads(2)
    rec = load_recipe("recipes/toy_moons.yaml", BASE + ["trainer.device=cpu", "trainer.cpu_threads=1"])
    assert _device(rec).type == "cpu" and torch.get_num_threads() == 1
