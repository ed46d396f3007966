"""Batch sizes by meaning: ``trainer.batch_size`` is the global batch of one optimizer step, each
process's micro-batch is global / (grad_accum x processes), computed and checked in one place
(``BatchSizes``); the evaluation's samples per solver call are ``eval.chunk_size``, and its old name
``eval.batch_size`` is still read."""

from __future__ import annotations

import fmkit
import pytest
import torch
from fmkit.engine.options import BatchSizes, EvalOptions
from fmkit.errors import RecipeError, TrainingError
from pydantic import ValidationError


def test_the_micro_batch_is_the_global_batch_shared_by_micro_steps_and_processes():
    assert BatchSizes(64).micro_batch == 64
    assert BatchSizes(64, grad_accum=2, processes=4).micro_batch == 8
    opts = fmkit.TrainerOptions(batch_size=96, grad_accum=3)
    assert BatchSizes.of(opts, processes=2) == BatchSizes(96, 3, 2) and BatchSizes.of(opts, 2).micro_batch == 16
    with pytest.raises(TrainingError, match=r"batch_size=32 is not divisible by grad_accum x processes = 3 x 1"):
        BatchSizes(32, grad_accum=3)
    with pytest.raises(TrainingError, match=r"= 1 x 3"):  # what `fmkit train --nproc-per-node 3` checks up front
        BatchSizes.of(fmkit.TrainerOptions(batch_size=32), processes=3)


def test_each_forward_sees_one_micro_batch_and_each_step_the_global_batch():
    seen: list[int] = []

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, t):
            seen.append(x.shape[0])
            return self.lin(torch.cat([x, t[:, None]], 1))

    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(torch.randn(96, 2)),
                       options=dict(steps=3, batch_size=32, grad_accum=4, device="cpu", progress=False, log_every=3))
    assert tr.batches == BatchSizes(32, 4, 1)
    tr.fit()
    assert seen == [8] * 12  # 3 steps x 4 micro-steps of 32 / 4
    assert tr.stream.position() == {"epoch": 0, "index": 12, "accum": 4}  # 12 micro-batches: the epoch's 96 examples


def test_eval_chunk_size_has_its_own_name_and_the_old_key_still_works():
    assert EvalOptions(chunk_size=64).chunk_size == 64
    assert EvalOptions(batch_size=64).chunk_size == 64  # a recipe (or a run's recipe.yaml) written before
    assert "batch_size" not in EvalOptions(batch_size=64).model_dump()
    with pytest.raises(ValidationError, match="eval.batch_size is the old name of eval.chunk_size"):
        EvalOptions(batch_size=64, chunk_size=32)


def test_a_recipe_with_the_old_eval_key_loads_and_is_resolved_under_the_new_one(tmp_path):
    from fmkit.app.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("data: {name: moons, n: 256}\nmodel: {name: mlp}\neval: {batch_size: 50}\n")
    rec = load_recipe(p)
    assert rec.eval.chunk_size == 50 and "chunk_size: 50" in rec.to_yaml() and "batch_size: 50" not in rec.to_yaml()
    both = tmp_path / "both.yaml"
    both.write_text("data: {name: moons, n: 256}\nmodel: {name: mlp}\neval: {batch_size: 50, chunk_size: 40}\n")
    with pytest.raises(RecipeError, match="set eval.chunk_size alone"):  # one file, two values: which one?
        load_recipe(both)


@pytest.mark.parametrize("file_key", ["batch_size", "chunk_size"])
@pytest.mark.parametrize("set_key", ["batch_size", "chunk_size"])
def test_a_set_override_of_either_name_replaces_the_files_value(tmp_path, file_key, set_key):
    """``--set eval.batch_size=25`` (a command written before the rename, e.g. in bench/results/) still works on
    a recipe or run that says chunk_size, and the new name works on an old file."""
    from fmkit.app.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(f"data: {{name: moons, n: 256}}\nmodel: {{name: mlp}}\neval: {{{file_key}: 50}}\n")
    assert load_recipe(p, [f"eval.{set_key}=25"]).eval.chunk_size == 25
