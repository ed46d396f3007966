"""bf16 autocast: the network runs in bf16 while parameters, the loss reduction and sampling stay fp32.

On the GPU this is the default (``precision: auto``); ``precision: bf16`` turns it on for the CPU too,
which is how CI exercises the same code path without a GPU.
"""

from __future__ import annotations

import pytest
import torch
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_trainer
from fmkit.engine.metrics_log import read_metrics

OVERRIDES = ["trainer.progress=false", "eval.every=0", "eval.metrics=[]", "eval.writers=[]", "model.hidden=64",
             "trainer.batch_size=256", "trainer.log_every=10", "data.n=4000", "trainer.steps=200",
             "trainer.warmup_steps=10",
             "trainer.checkpoint_every=1000"]


def _train(tmp_path, precision: str):
    rec = load_recipe("recipes/toy_moons.yaml", OVERRIDES + [f"trainer.precision={precision}"])
    tr = build_trainer(rec, tmp_path / precision)
    seen: list[torch.dtype] = []
    linear = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    tr.fit()
    handle.remove()
    return tr, seen


@pytest.mark.parametrize("precision,expected", [("bf16", torch.bfloat16), ("auto", torch.float32),
                                                ("fp32", torch.float32)])
def test_precision_sets_the_dtype_the_network_runs_in(tmp_path, precision, expected):
    tr, seen = _train(tmp_path, precision)
    assert seen and set(seen) == {expected}  # auto means fp32 on a CPU
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay fp32
    assert all(p.dtype == torch.float32 for p in tr.ema.model.parameters())
    x0, x1 = tr.next_batch()
    loss, _ = tr.loss(x1, x0)
    assert loss.dtype == torch.float32  # the reduction runs in fp32 whatever the network's dtype


def test_bf16_trains_like_fp32_and_samples_in_fp32(tmp_path):
    """Same seed, same data: bf16 autocast ends near the fp32 run's loss (bf16 keeps ~3 significant
    digits, so the two runs drift apart but must learn alike), and its samples are fp32 and finite."""
    bf, _ = _train(tmp_path, "bf16")
    fp, _ = _train(tmp_path, "fp32")
    losses = {}
    for name, tr in (("bf16", bf), ("fp32", fp)):
        losses[name] = [v for _, v in read_metrics(tr.run_dir)["loss"]]  # every 10 steps
    first, last = sum(losses["bf16"][:3]) / 3, sum(losses["bf16"][-3:]) / 3
    last_fp32 = sum(losses["fp32"][-3:]) / 3
    assert last < 0.8 * first  # it learns
    assert abs(last - last_fp32) < 0.1 * last_fp32
    x = bf.sample(256)["x"]
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
