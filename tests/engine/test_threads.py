"""CPU threads: with ``cpu_threads: null`` the trainer takes the cores that DataLoader workers, other busy
processes (their CPU time in a short look) and the other local DDP ranks leave free (oversubscribed torch
ops wait on each other; docs/recipes.md, "CPU threads"), ``FMKIT_CPU_THREADS`` overrides that, and
`sample`/`evaluate` run with the recipe's ``trainer.cpu_threads`` too."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_trainer
from fmkit.errors import TrainingError

BASE = ["trainer.progress=false", "eval.every=0", "eval.metrics=[]", "eval.writers=[]", "data.n=1000"]


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("FMKIT_CPU_THREADS", raising=False)  # the suite's conftest pins 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)  # an 8-core share
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    yield
    torch.set_num_threads(threads)


def _trainer_threads(monkeypatch, workers: int = 0, cpu_threads: str = "null", load: float = 0.0) -> int:
    from fmkit.engine import setup

    monkeypatch.setattr(setup, "_non_idle_ticks", lambda: None)  # no /proc/stat: the load average decides
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    torch.set_num_threads(7)  # a sentinel: a default that was not applied would leave 7
    build_trainer(load_recipe("recipes/toy_moons.yaml", BASE + [f"trainer.num_workers={workers}",
                                                                f"trainer.cpu_threads={cpu_threads}"]), None)
    return torch.get_num_threads()


@pytest.mark.parametrize("workers,cpu_threads,load,expected", [
    (3, "null", 0.0, 5),   # the workers keep 3 of 8 cores
    (0, "null", 0.0, 8),   # alone: every core
    (3, "2", 5.0, 2),      # a pinned count is kept, whatever the load
    (10, "null", 0.0, 1),  # never fewer than 1
    (0, "null", 2.4, 6),   # two busy processes elsewhere keep 2 cores
    (1, "null", 2.6, 4),   # both: 8 - 1 worker - 3 busy
    (0, "null", 30.0, 1),  # an overloaded machine: 1
])
def test_default_threads_leave_workers_and_busy_cores_free(monkeypatch, workers, cpu_threads, load, expected):
    assert _trainer_threads(monkeypatch, workers, cpu_threads, load) == expected


def test_env_sets_the_default_and_local_ranks_share_the_cores(monkeypatch):
    monkeypatch.setenv("FMKIT_CPU_THREADS", "3")
    assert _trainer_threads(monkeypatch, load=6.0) == 3
    monkeypatch.delenv("FMKIT_CPU_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's two ranks on this machine: 4 cores each
    assert _trainer_threads(monkeypatch) == 4


def test_a_bad_env_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FMKIT_CPU_THREADS", "two")
    with pytest.raises(TrainingError, match="FMKIT_CPU_THREADS") as info:
        _trainer_threads(monkeypatch)
    assert "unset it" in info.value.fix


def test_busy_cores_counts_the_cpu_time_others_use_while_it_looks(monkeypatch):
    from fmkit.engine import setup

    ticks = iter([1000, 1000 + 3 * os.sysconf("SC_CLK_TCK") // 2])  # 1.5 CPU-seconds of others' work in 0.5 s
    monkeypatch.setattr(setup, "_non_idle_ticks", lambda: next(ticks))
    assert setup.busy_cores(0.5) == 3


def test_busy_cores_sees_a_spinning_process():
    from fmkit.engine.setup import busy_cores

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 1  # other load on the machine can only add to it
    finally:
        hog.kill()
        hog.wait()


def test_sampling_commands_use_the_recipes_cpu_threads():
    from fmkit.app.inference import inference_device as _device

    torch.set_num_threads(2)
    rec = load_recipe("recipes/toy_moons.yaml", BASE + ["trainer.device=cpu", "trainer.cpu_threads=1"])
    assert _device(rec).type == "cpu" and torch.get_num_threads() == 1
