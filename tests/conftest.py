"""Shared fixtures of the core tests: one thread, for torch and for fmkit's default (the suite runs beside
other jobs on 2 cores), and a fixed seed per test, so every statistical assertion is reproducible."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("FMKIT_CPU_THREADS", "1")  # recipes with cpu_threads: null too (and the processes tests start)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(items):
    """The errors catalogue check reads what the cases before it recorded: run it after all of them,
    whatever the order or selection of the rest."""
    last = [it for it in items if it.name == "test_zz_errors_doc_is_current"]
    items[:] = [it for it in items if it not in last] + last
