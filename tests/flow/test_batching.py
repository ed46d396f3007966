"""On a CPU sampling calls the model on slices of a chunk (``fmkit.flow.batching``): every batch argument is
sliced alike, the outputs join in order, so the samples are those of one call; the chunk's random stream and
solver steps stay as they were. The slice is sized by the input's bytes per example."""

from __future__ import annotations

import fmkit
import pytest
import torch
from fmkit.flow.batching import CPU_CALL_BYTES, call_in_slices, cpu_call_size, examples_per_call
from fmkit.flow.paths import AffinePath, CondOTScheduler, StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import FixedStepSolver
from fmkit.flow.sources import GaussianSource, StateSource
from torch import nn


class Elementwise(nn.Module):
    """Output per example from that example's inputs only, in exact arithmetic (no batch-blocked kernels), and
    the batch size of every call recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []
        self.zero = nn.Parameter(torch.zeros(()))  # something for a Trainer's optimizer

    def forward(self, x_t, t, cond=None, r=None):
        self.rows.append(t.shape[0])
        x = x_t["x"]
        shift = (cond.float() if cond is not None else 0.0) + (r if r is not None else 0.0)
        m = x_t["mask"].float() if "mask" in x_t else 1.0
        out = 0.5 * x + t[:, None] + (shift[:, None] if torch.is_tensor(shift) else 0.0)
        return {"x": out * m + self.zero}


def test_slices_give_the_one_call_output_with_every_batch_argument_aligned():
    torch.manual_seed(0)
    b = 10
    x = {"x": torch.randn(b, 3), "mask": torch.rand(b, 3) > 0.3}
    t, cond, r = torch.rand(b), torch.arange(b) % 4, torch.rand(b)
    whole, sliced = Elementwise(), Elementwise()
    one = whole(x, t, cond, r=r)
    out = call_in_slices(sliced, 4, x, t, cond, r=r)
    assert sliced.rows == [4, 4, 2] and whole.rows == [10]
    assert torch.equal(out["x"], one["x"])  # a slice out of line (t, cond, r or the mask) would differ
    assert call_in_slices(sliced, None, x, t, cond)["x"].shape == (b, 3) and sliced.rows[-1] == b  # None: one call
    assert call_in_slices(sliced, 10, x, t, cond) is not None and sliced.rows[-1] == b  # fits: one call


def test_sampling_on_a_cpu_calls_in_slices_and_gives_the_samples_of_one_call():
    n = 50
    template = {"x": torch.zeros(n, 4096), "cond": torch.arange(n) % 3}  # 16 KiB + 8 B an example
    size = examples_per_call(template)
    assert size == CPU_CALL_BYTES // (4096 * 4 + 8) == 3 and cpu_call_size(template, "cpu") == size
    assert cpu_call_size(template, "meta") is None  # off the CPU: the whole chunk in one call
    runs = {}
    for call_size in (None, size):
        model = Elementwise()
        torch.manual_seed(1)
        sol = generate(model, StatePath(AffinePath(CondOTScheduler())), StateSource(GaussianSource()),
                       FixedStepSolver("midpoint", 2), template, call_size=call_size)
        runs[call_size] = (sol.x["x"], model.rows)
    assert runs[None][1] == [n] * 4 and max(runs[size][1]) == size and sum(runs[size][1]) == 4 * n
    assert torch.equal(runs[None][0], runs[size][0])


def test_the_trainers_evaluation_slices_its_chunks_on_a_cpu():
    model = Elementwise()
    ds = fmkit.TensorDataset({"x": torch.randn(64, 8192)})  # 32 KiB an example: 2 per call
    tr = fmkit.Trainer(model, ds, solver=FixedStepSolver("euler", 2), options=dict(steps=1, batch_size=16,
                       device="cpu", progress=False, ema_decay=None), eval_options=dict(chunk_size=5))
    model.rows.clear()
    tr.sample(7)
    assert model.rows == [2, 2, 1] * 2 + [2] * 2  # chunks of 5 and 2, each step in slices of 2


def test_examples_per_call_counts_every_tensor_of_an_example_and_is_at_least_one():
    assert examples_per_call({"x": torch.zeros(2, 1, 28, 28), "cond": torch.zeros(2, dtype=torch.long)}) == 20
    assert examples_per_call({"x": torch.zeros(2, 10**6)}) == 1
    masks = {"x": torch.zeros(2, 100), "masks": {"x": torch.ones(2, 100, dtype=torch.bool)}}
    assert examples_per_call(masks, budget=500) == 1 and examples_per_call(masks, budget=1000) == 2


def test_a_slice_size_below_one_is_a_bug():
    with pytest.raises(ValueError):
        call_in_slices(Elementwise(), 0, {"x": torch.zeros(2, 1)}, torch.zeros(2))
