"""fmkit.testing, the contract checks plugin authors call: each passes on a component that keeps its
contract and fails, saying what broke, on one that does not."""

from __future__ import annotations

import fmkit
import pytest
import torch
import typer
from fmkit import MLP, AffinePath, CondOTScheduler, ExactOTCoupling, FixedStepSolver, IndependentCoupling
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, TensorDataset
from fmkit.flow.solvers import Solution
from fmkit.testing import (
    check_coupling,
    check_dataset,
    check_model,
    check_path,
    check_solver,
    fresh_registry,
    run_cli,
)
from torch import nn


def moons() -> TensorDataset:
    return TensorDataset({"x": torch.randn(64, 2), "cond": torch.arange(64) % 3}, num_cond_classes=3)


# -- datasets ------------------------------------------------------------------------------------
def test_check_dataset_passes_a_dataset_that_keeps_the_contract():
    check_dataset(moons())


class Unseeded(TensorDataset):
    def batches(self, epoch, batch_size, seed):
        perm = torch.randperm(len(self)).numpy()  # ignores (seed, epoch): resume could not replay it
        return [perm[i: i + batch_size] for i in range(0, len(self) - batch_size + 1, batch_size)]


def test_check_dataset_fails_a_batch_order_that_ignores_its_seed():
    with pytest.raises(AssertionError, match="batches.*not a function of its arguments"):
        check_dataset(Unseeded(torch.randn(64, 2)))


# -- models --------------------------------------------------------------------------------------
def test_check_model_passes_the_builtin_mlp():
    ds = moons()
    check_model(MLP.from_data(ds.info, hidden=16, depth=2), ds)


class MixesExamples(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x_t, t, cond=None):
        x = x_t["x"]
        return {"x": self.lin(x - x.mean(0, keepdim=True))}  # a batch statistic: examples interact


def test_check_model_fails_a_model_whose_examples_interact():
    with pytest.raises(AssertionError, match="examples must not interact"):
        check_model(MixesExamples(), moons())


class Padded(Dataset):
    """Sets of 2..4 points with a mask."""

    def __init__(self):
        self.sizes = [2, 3, 4, 2, 3, 4, 2, 4]
        self.info = DataInfo({"x": FieldInfo((None, 2))}, has_mask=True)

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return {"x": torch.randn(self.sizes[i], 2, generator=torch.Generator().manual_seed(i))}

    def collate(self, items):
        n = max(it["x"].shape[0] for it in items)
        x, mask = torch.zeros(len(items), n, 2), torch.zeros(len(items), n, dtype=torch.bool)
        for j, it in enumerate(items):
            x[j, : len(it["x"])], mask[j, : len(it["x"])] = it["x"], True
        return {"x": x, "mask": mask}


class SetNet(nn.Module):
    def __init__(self, masked: bool):
        super().__init__()
        self.masked, self.lin = masked, nn.Linear(4, 2)

    def forward(self, x_t, t, cond=None):
        x, m = x_t["x"], x_t["mask"].unsqueeze(-1).float()
        w = m if self.masked else torch.ones_like(m)
        pooled = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        return {"x": self.lin(torch.cat([x, pooled.expand_as(x)], -1))}


def test_check_model_checks_that_padding_has_no_influence():
    check_model(SetNet(masked=True), Padded(), batch_size=4, seed=3)
    with pytest.raises(AssertionError, match="padded entries change the model's output"):
        check_model(SetNet(masked=False), Padded(), batch_size=4, seed=3)


def test_check_model_checks_a_given_equivariance():
    ds = moons()
    flip = lambda x: ({**x, "x": -x["x"]}, lambda out: {"x": -out["x"]})  # noqa: E731
    odd = nn.Module()
    odd.forward = lambda x_t, t, cond=None: {"x": torch.sin(x_t["x"])}  # sin is odd: equivariant to x -> -x
    check_model(odd, ds, equivariance=flip)
    even = nn.Module()
    even.forward = lambda x_t, t, cond=None: {"x": torch.cos(x_t["x"])}
    with pytest.raises(AssertionError, match="equivariance"):
        check_model(even, ds, equivariance=flip)


# -- paths, couplings, solvers ---------------------------------------------------------------------
def test_check_path_passes_condot_and_fails_a_wrong_velocity():
    x0, x1 = torch.randn(8, 3), torch.randn(8, 3)
    path = AffinePath(CondOTScheduler())
    check_path(path, x0, x1)

    class Wrong(AffinePath):
        def sample(self, x0, x1, t):
            ps = super().sample(x0, x1, t)
            ps.dx_t = ps.dx_t * 1.01
            return ps

    with pytest.raises(AssertionError, match="not the derivative of the path"):
        check_path(Wrong(CondOTScheduler()), x0, x1)


class FreshNoise(IndependentCoupling):
    def pair(self, x0, x1):
        return {**x0, "x": torch.randn_like(x0["x"])}, x1  # not a re-pairing of the given x0


def test_check_coupling_passes_real_couplings_and_fails_one_that_invents_x0():
    x0 = {"x": torch.randn(16, 2)}
    x1 = {"x": torch.randn(16, 2), "cond": torch.arange(16)}
    check_coupling(IndependentCoupling(), x0, x1)
    check_coupling(ExactOTCoupling(), x0, x1)
    with pytest.raises(AssertionError, match="not a permutation of the given rows"):
        check_coupling(FreshNoise(), x0, x1)


def test_check_solver_passes_rk4_and_fails_too_few_steps_and_a_wrong_count():
    check_solver(FixedStepSolver("rk4", 10))
    with pytest.raises(AssertionError, match="relative error"):
        check_solver(FixedStepSolver("euler", 2))

    class Miscounts(FixedStepSolver):
        def integrate(self, velocity, x0, t0, t1, *, trajectory):
            sol = super().integrate(velocity, x0, t0, t1, trajectory=trajectory)
            return Solution(x=sol.x, nfe=sol.nfe + 1)

    with pytest.raises(AssertionError, match="nfe"):
        check_solver(Miscounts("rk4", 10))


# -- registry and CLI helpers --------------------------------------------------------------------
class HelloPlugin:
    @fmkit.hookimpl
    def register_commands(self, app):
        hello = typer.Typer(help="says hello")

        @hello.command("greet")
        def greet(name: str = "world") -> None:
            print(f"hello {name}")

        app.add_typer(hello, name="hello")


def test_run_cli_reaches_a_plugins_sub_commands_and_leaves_the_app_as_it_was():
    r = run_cli("hello", "greet", "--name", "fmkit", registry=fresh_registry(HelloPlugin()))
    assert r.code == 0 and r.out.strip() == "hello fmkit", r
    r = run_cli("hello", "greet", registry=fresh_registry())  # another registry: no such command
    assert r.code != 0
