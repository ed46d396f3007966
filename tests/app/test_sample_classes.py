"""Choosing the classes of samples: ``fmkit sample/evaluate --class D`` and ``--per-class K`` give exactly the
classes asked for, in class order, for any conditional dataset (here the built-in toy's); the per-chunk random
streams are kept (a class changes the condition, not the noise); bad requests are what/where/fix errors that
leave no samples folder behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.errors import DataError
from fmkit.flow.data import TensorDataset, examples_of_classes
from fmkit.flow.paths import AffinePath, CondOTScheduler, StatePath
from fmkit.flow.solvers import FixedStepSolver
from fmkit.flow.sources import GaussianSource, StateSource
from reliability_helpers import TINY, clean_error, cli, isolate, tiny_run
from safetensors.torch import load_file
from torch import nn

#: eight_gaussians with labels: 8 condition classes
COND = TINY.replace("data: {name: moons, n: 256}", "data: {name: eight_gaussians, n: 256, conditional: true}")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


@pytest.fixture()
def cond_run() -> Path:
    assert COND != TINY
    Path("cond.yaml").write_text(COND)
    r = cli("train", "cond.yaml", "--out", "crun")
    assert r.code == 0, r.text
    return Path("crun")


def written_classes(run: Path, out: str) -> list[int]:
    return load_file(str(run / "samples" / out / "samples.safetensors"))["cond"].tolist()


def test_per_class_gives_k_of_every_class_in_order(cond_run):
    r = cli("sample", cond_run, "--per-class", "3", "--out", "pc", "--set", "eval.chunk_size=5")  # chunks cut classes
    assert r.code == 0, r.text
    assert written_classes(cond_run, "pc") == [c for c in range(8) for _ in range(3)]
    assert cli("sample", cond_run, "--per-class", "2", "-n", "16", "--out", "agree").code == 0  # -n may agree


def test_class_shares_the_samples_evenly_in_class_order(cond_run):
    r = cli("sample", cond_run, "--class", "5,1", "--class", "5", "-n", "5", "--out", "two")
    assert r.code == 0, r.text
    assert written_classes(cond_run, "two") == [1, 1, 1, 5, 5]  # distinct classes, sorted; the first gets the rest
    assert cli("sample", cond_run, "--class", "7", "-n", "4", "--out", "one").code == 0
    assert written_classes(cond_run, "one") == [7, 7, 7, 7]


def test_evaluate_takes_per_class(cond_run):
    r = cli("evaluate", cond_run, "--per-class", "4", "--set", "eval.metrics=[{name: w2}]")
    assert r.code == 0, r.text
    assert "32 samples" in r.out, r.out


@pytest.mark.parametrize("args, needles", [
    (["--class", "8"], ["class 8 is out of range: this run's data has classes 0 to 7", "where: --class",
                        "fix: give classes from 0 to 7"]),
    (["--class", "-1"], ["class -1 is out of range"]),
    (["--class", "three"], ["--class 'three' is not a class number", "fix: give class numbers"]),
    (["--class", "1", "--per-class", "2"], ["--class and --per-class were both given",
                                            "where: --class / --per-class", "fix: give --class D"]),
    (["--per-class", "3", "-n", "20"], ["-n 20 contradicts --per-class 3: 3 samples of each of the 8 classes are 24",
                                        "fix: drop -n (--per-class sets the count) or give -n 24"]),
    (["--class", "1,2,3", "-n", "2"], ["-n 2 is fewer than the 3 classes given", "fix: give -n 3 or more"]),
])
def test_bad_class_requests_are_refused_before_sampling(cond_run, args, needles):
    for command in ("sample", "evaluate"):
        clean_error(cli(command, cond_run, *args), *needles)
    assert not list(cond_run.glob("samples/cli-*"))


@pytest.mark.parametrize("option", [["--class", "0"], ["--per-class", "2"]])
def test_an_unconditional_run_refuses_classes(option):
    run = tiny_run()
    clean_error(cli("sample", run, *option), f"{option[0]} needs a conditional run",
                "info.num_cond_classes is None", f"where: {option[0]}", f"fix: drop {option[0]}")
    assert not list(run.glob("samples/cli-*"))


class ClassVelocity(nn.Module):
    """v(x, t | c) = 10 c along every dimension: one Euler step moves a sample by 10 c."""

    def __init__(self, use_cond: bool = True) -> None:
        super().__init__()
        self.use_cond = use_cond

    def forward(self, x_t, t, cond=None):
        x = x_t["x"]
        return {"x": 10.0 * cond[:, None].float().expand_as(x) if self.use_cond else torch.zeros_like(x)}


def _sample(model, data, cond, chunk=4):
    path, source = StatePath(AffinePath(CondOTScheduler())), StateSource(GaussianSource())
    return sample_in_chunks(model, path, source, FixedStepSolver("euler", 1), data, 12, chunk, torch.device("cpu"),
                            seed=3, cond=cond)


def test_the_classes_reach_the_model_and_keep_the_noise():
    """The model sees the classes asked for; with a field that ignores them the samples equal those drawn
    without classes, chunk by chunk: a class changes the condition, not the per-chunk random streams."""
    data = TensorDataset({"x": torch.randn(50, 2), "cond": torch.randint(0, 4, (50,))}, num_cond_classes=4)
    cond = torch.tensor([0] * 4 + [1] * 4 + [3] * 4)
    out = _sample(ClassVelocity(), data, cond)
    assert torch.equal(out["cond"], cond)
    means = [out["x"][cond == c].mean().item() for c in (0, 1, 3)]
    assert means[0] < 3 and 7 < means[1] < 13 and 27 < means[2] < 33, means  # x0 ~ N(0, 1), then + 10 c
    torch.testing.assert_close(_sample(ClassVelocity(False), data, cond)["x"], _sample(ClassVelocity(False), data,
                                                                                       None)["x"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cond holds 3 classes for 12 samples"):
        _sample(ClassVelocity(), data, cond[:3])


def test_examples_of_classes_draws_from_each_class():
    labels = torch.tensor([2, 0, 2, 1, 2, 0])
    cond = torch.tensor([2, 0, 2, 1, 1, 0, 2])
    idx = examples_of_classes(labels, cond, seed=1)
    assert torch.equal(labels[idx], cond)
    assert torch.equal(idx, examples_of_classes(labels, cond, seed=1))  # deterministic in the seed
    many = examples_of_classes(labels, torch.full((200,), 2), seed=0)
    assert set(many.tolist()) == {0, 2, 4}  # every example of the class is drawn, with replacement
    with pytest.raises(DataError, match=r"no example of class\(es\) \[3\]"):
        examples_of_classes(labels, torch.tensor([0, 3]))
