"""Exact resume: N steps, then resuming for N more, equals 2N steps straight (CPU, bitwise)."""

from __future__ import annotations

import pytest
import torch
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_trainer
from fmkit.engine.metrics_log import read_metrics

OVERRIDES = ["trainer.progress=false", "eval.every=0", "eval.metrics=[]", "eval.writers=[]", "model.hidden=32",
             "trainer.batch_size=64", "trainer.log_every=5", "data.n=1000"]


def _params(trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.model.state_dict().items()})
    return out


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume (max diff {(a[k] - b[k]).abs().max()})"


def test_stop_and_resume_equals_straight_run(tmp_path):
    n = 12  # the cosine schedule spans 2N in both runs; OT coupling, EMA and warmup all active
    extra = [f"trainer.steps={2 * n}", "trainer.warmup_steps=4", f"trainer.checkpoint_every={n}"]
    rec = load_recipe("recipes/toy_moons.yaml", OVERRIDES + extra)

    straight = build_trainer(rec, tmp_path / "straight").fit()
    first = build_trainer(rec, tmp_path / "split").fit(until=n)
    assert first.step == n
    resumed = build_trainer(rec, tmp_path / "split").fit(resume=True)
    assert resumed.step == 2 * n
    _assert_identical(_params(straight), _params(resumed))
    # so is the log: the stop at step 12 fell between log steps (every 5), and the resumed run's line
    # at step 15 still averages steps 11-15
    def losses(run):
        return read_metrics(tmp_path / run)["loss"]

    assert losses("split") == losses("straight") and len(losses("straight")) == 5
    # the optimizer moments are restored too
    s_opt, r_opt = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for pid in s_opt:
        assert torch.equal(s_opt[pid]["exp_avg_sq"], r_opt[pid]["exp_avg_sq"])


def test_extend_finished_run_with_more_steps(tmp_path):
    """A finished run of N steps extended to 2N (constant lr) equals 2N steps straight."""
    n = 10
    base = OVERRIDES + ["trainer.schedule=constant", f"trainer.checkpoint_every={n}"]
    straight = build_trainer(load_recipe("recipes/toy_moons.yaml", base + [f"trainer.steps={2 * n}"]),
                             tmp_path / "a").fit()
    build_trainer(load_recipe("recipes/toy_moons.yaml", base + [f"trainer.steps={n}"]), tmp_path / "b").fit()
    longer = build_trainer(load_recipe("recipes/toy_moons.yaml", base + [f"trainer.steps={2 * n}"]), tmp_path / "b")
    longer.fit(resume=True)
    _assert_identical(_params(straight), _params(longer))


def test_dataloader_workers_give_the_same_batches_across_epochs_and_resume():
    """With persistent workers (trainer.num_workers > 0) the stream is the same batch sequence as in
    the main process, over epoch boundaries and from a resumed position mid-epoch."""
    from fmkit.engine.distributed import DistInfo
    from fmkit.engine.stream import BatchStream
    from fmkit.flow.data import TensorDataset

    ds = TensorDataset({"x": torch.arange(40, dtype=torch.float32)[:, None]})  # 5 batches of 8 per epoch
    one = DistInfo(rank=0, world_size=1, local_rank=0)
    plain = BatchStream(ds, 8, seed=3, dist=one)
    ref = [next(plain)["x"] for _ in range(16)]
    assert not torch.equal(ref[0], ref[5]), "a fresh order per epoch"
    workers = BatchStream(ds, 8, seed=3, dist=one, num_workers=2)
    got = [next(workers)["x"] for _ in range(13)]
    assert all(torch.equal(a, b) for a, b in zip(ref[:13], got, strict=True))
    assert workers._loader is not None and workers._loader.persistent_workers
    procs = list(workers._it._workers)
    workers.close()  # ends the worker processes; the stream goes on from its position
    assert workers._loader is None and not any(p.is_alive() for p in procs)
    assert all(torch.equal(next(workers)["x"], r) for r in ref[13:16])
    resumed = BatchStream(ds, 8, seed=3, dist=one, num_workers=2, epoch=1, index=2)  # = batch 7 of the run
    assert all(torch.equal(next(resumed)["x"], r) for r in ref[7:13])


def test_loader_pairing_is_exact_across_workers_and_resume(tmp_path):
    """trainer.pairing=loader (noise drawn and OT-paired in the data pipeline): 2N steps straight
    with 2 DataLoader workers equal N steps in the main process + N resumed with workers, bitwise."""
    n = 8
    base = OVERRIDES + ["trainer.pairing=loader", f"trainer.steps={2 * n}", f"trainer.checkpoint_every={n}"]
    straight = build_trainer(load_recipe("recipes/toy_moons.yaml", base + ["trainer.num_workers=2"]),
                             tmp_path / "straight").fit()
    assert straight.pair_in_loader and straight.stream.num_workers > 0
    first = build_trainer(load_recipe("recipes/toy_moons.yaml", base), tmp_path / "split").fit(until=n)
    assert first.stream.num_workers == 0  # main process
    resumed = build_trainer(load_recipe("recipes/toy_moons.yaml", base + ["trainer.num_workers=2"]),
                            tmp_path / "split").fit(resume=True)
    _assert_identical(_params(straight), _params(resumed))


def test_loader_pairing_yields_optimally_paired_noise_in_workers_and_main_process():
    """The pipeline's (x0, x1) are the same in workers and in the main process, and x0 is the
    coupling's output: with exact OT, pairing row i with row i is a minimum-cost assignment."""
    import numpy as np
    from fmkit.engine.distributed import DistInfo
    from fmkit.engine.stream import BatchStream, LoaderPairing
    from fmkit.flow.couplings import ExactOTCoupling, assignment, pairwise_cost
    from fmkit.flow.data import TensorDataset
    from fmkit.flow.sources import GaussianSource, StateSource

    ds = TensorDataset({"x": torch.randn(96, 2, generator=torch.Generator().manual_seed(0)) * 3 + 5})
    one = DistInfo(rank=0, world_size=1, local_rank=0)
    pairing = LoaderPairing(StateSource(GaussianSource()), ExactOTCoupling())
    plain = BatchStream(ds, 32, seed=1, dist=one, pairing=pairing)
    ref = [next(plain) for _ in range(5)]
    workers = BatchStream(ds, 32, seed=1, dist=one, num_workers=2, pairing=pairing)
    got = [next(workers) for _ in range(5)]
    for (a0, a1), (b0, b1) in zip(ref, got, strict=True):
        assert torch.equal(a0["x"], b0["x"]) and torch.equal(a1["x"], b1["x"])
        cost = pairwise_cost(a0, a1).numpy()
        best = cost[assignment(cost), np.arange(len(cost))].sum()
        assert np.trace(cost) == pytest.approx(best, rel=1e-12)
        assert np.trace(cost) < cost.sum() / len(cost)  # better than the average pairing: it did pair
    assert not torch.equal(ref[0][0]["x"], ref[1][0]["x"])  # fresh noise per batch
