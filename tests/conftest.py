"""Shared fixtures of the core tests: one thread (the suite runs beside other jobs on 2 cores) and a
fixed seed per test, so every statistical assertion is reproducible."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
