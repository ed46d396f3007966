"""``fmkit evaluate --likelihood`` scores a run's unguided field under the protocol its dataset
declares (dequantised discrete values: bits/dim >= 0), prints that protocol, and refuses data that
declares none.
"""

from __future__ import annotations

from pathlib import Path

import fmkit
import fmkit.app.registry
import pytest
import torch
from reliability_helpers import TINY, clean_error, cli, fresh_registry, isolate


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


def build_grid(declare: bool = True):
    """2-D points on a grid of 4 levels over [-1, 1] (at the bin centres, as 8-bit pixels are), labelled by
    quadrant; ``declare``: whether its info says so (a dataset that does not is refused)."""
    from fmkit.flow.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 4, (256, 2), generator=g)
    ds = TensorDataset({"x": -0.75 + 0.5 * u.float(), "cond": (u[:, 0] >= 2).long() * 2 + (u[:, 1] >= 2).long()},
                       num_cond_classes=4)
    if declare:
        ds.info.meta["likelihood"] = {"dequantize": {"levels": 4, "low": -1.0, "high": 1.0}}
    return ds


class GridPlugin:
    @fmkit.hookimpl
    def register_datasets(self, register):
        register("grid", build_grid, None, "points on a 4-level grid")
        register("grid_undeclared", lambda: build_grid(False), None, "the same, declaring nothing")


def test_evaluate_likelihood_is_unguided_dequantised_and_says_so(monkeypatch):
    """`fmkit evaluate --likelihood` scores the model's unguided field on dequantised data and says so:
    bits/dim >= 0 (the guided field at the bin centres gave negative bits/dim)."""
    reg = fresh_registry()
    reg.add_plugin(GridPlugin(), name="grid")
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", reg)
    Path("g.yaml").write_text(TINY.replace("data: {name: moons, n: 256}", "data: {name: grid}")
                              .replace("log_every: 1,", "log_every: 1, cond_dropout: 0.2,"))
    assert cli("train", "g.yaml", "--out", "run").code == 0
    r = cli("evaluate", "run", "--likelihood", "--likelihood-n", "32", "--guidance", "3")
    assert r.code == 0, r.text
    text = " ".join(r.out.split())
    assert "the model's unguided field, conditional on each example's label; uniform dequantisation of 4 " \
           "levels over [-1, 1]" in text, text
    bpd = float(text.split("bits/dim │ ")[1].split()[0])
    assert bpd >= 0, text


def test_evaluate_likelihood_refuses_data_that_declares_nothing(monkeypatch):
    reg = fresh_registry()
    reg.add_plugin(GridPlugin(), name="grid")
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", reg)
    Path("g.yaml").write_text(TINY.replace("data: {name: moons, n: 256}", "data: {name: grid_undeclared}"))
    assert cli("train", "g.yaml", "--out", "run").code == 0
    clean_error(cli("evaluate", "run", "--likelihood", "--likelihood-n", "32"),
                "dataset 'grid_undeclared' does not declare what its log-likelihood is",
                "fix: the dataset's plugin declares it in DataInfo.meta['likelihood']")
