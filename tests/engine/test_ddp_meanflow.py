"""MeanFlow under DDP on CPU: 2 processes (gloo, torchrun) compute the gradients 1 process computes on
the same global batch, to round-off, through the engine's own route (the objective's JVP inside the
module DDP wraps, ``setup.wrap_for_training``) — and a JVP taken on the inner module outside DDP's
forward, the known trap, does not: its gradients stay per-rank, with no error. The Trainer's weights
after a few steps (guided target, condition dropout, gradient clipping) match a single process too.

This file is also the worker: ``torchrun --nproc-per-node 2 tests/engine/test_ddp_meanflow.py --worker OUT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
STEPS = 6
GLOBAL = 64  # examples per step, over both ranks


def make_model() -> torch.nn.Module:
    from fmkit import MLP

    torch.manual_seed(0)
    return MLP(2, hidden=32, depth=2, time_dim=16, num_classes=8, two_times=True)


def make_objective():
    from fmkit.app.builtin.toy import ToySource
    from fmkit.flow.objectives import MeanFlowObjective
    from fmkit.flow.paths import AffinePath, CondOTScheduler

    return MeanFlowObjective(AffinePath(CondOTScheduler()), ToySource("eight_gaussians"), equal_fraction=0.5,
                             guidance_scale=2.0, guidance_mix=0.2, cond_dropout=0.2, null_class=8)


def global_batch() -> dict[str, torch.Tensor]:
    from fmkit.app.builtin.toy import moons

    x, y = moons(GLOBAL, torch.Generator().manual_seed(5))
    return {"x": x, "cond": y * 3}  # labels among the 8 classes


def shard(batch: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    half = GLOBAL // 2
    return {key: v[k * half:(k + 1) * half] for key, v in batch.items()}


def make_trainer(run_dir: Path | None, processes: int):
    """The Trainer of the weight test; one process reproduces two with ``grad_accum = 2`` (same shards,
    same random streams: tests/engine/test_ddp.py)."""
    import fmkit
    from fmkit.app.builtin.toy import ToyDataset, ToySource

    opts = fmkit.TrainerOptions(steps=STEPS, batch_size=GLOBAL, grad_accum=2 // processes, lr=1e-2, warmup_steps=0,
                                grad_clip=1.0, ema_decay=None, progress=False, device="cpu", checkpoint_every=100,
                                log_every=3, cond_dropout=0.2)
    return fmkit.Trainer(make_model(), ToyDataset("moons", n=2048, seed=0, conditional=True),
                         source=ToySource("eight_gaussians"), options=opts, run_dir=run_dir, seed=3,
                         objective={"name": "meanflow", "equal_fraction": 0.5, "guidance_scale": 2.0,
                                    "guidance_mix": 0.2})


def make_guidance_input_trainer(run_dir: Path | None, processes: int):
    """``make_trainer``'s run with the scale drawn per example and given to the model (guidance_range)."""
    import fmkit
    from fmkit.app.builtin.toy import ToyDataset, ToySource

    opts = fmkit.TrainerOptions(steps=4, batch_size=GLOBAL, grad_accum=2 // processes, lr=1e-2, warmup_steps=0,
                                ema_decay=None, progress=False, device="cpu", checkpoint_every=100, log_every=2,
                                cond_dropout=0.2)
    torch.manual_seed(0)
    model = fmkit.MLP(2, hidden=32, depth=2, time_dim=16, num_classes=8, two_times=True, guidance_input=True)
    return fmkit.Trainer(model, ToyDataset("moons", n=2048, seed=0, conditional=True),
                         source=ToySource("eight_gaussians"), options=opts, run_dir=run_dir, seed=3,
                         objective={"name": "meanflow", "equal_fraction": 0.5, "guidance_range": (1.0, 3.0)})


def make_cfm_trainer(run_dir: Path | None, processes: int):
    """``make_trainer``'s run with the plain CFM objective: the two-time model is called without r."""
    import fmkit
    from fmkit.app.builtin.toy import ToyDataset, ToySource

    opts = fmkit.TrainerOptions(steps=4, batch_size=GLOBAL, grad_accum=2 // processes, lr=1e-2, warmup_steps=0,
                                ema_decay=None, progress=False, device="cpu", checkpoint_every=100, log_every=2)
    return fmkit.Trainer(make_model(), ToyDataset("moons", n=2048, seed=0, conditional=True),
                         source=ToySource("eight_gaussians"), options=opts, run_dir=run_dir, seed=3)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


# ------------------------------------------------------------------------------------------------
# worker (one per rank, under torchrun)
# ------------------------------------------------------------------------------------------------
def _worker(out: Path) -> None:
    from fmkit.engine import setup
    from fmkit.engine.distributed import init_from_env
    from fmkit.engine.model_call import TrainingForward
    from fmkit.flow.objectives import AverageVelocityJVP

    dist = init_from_env("gloo")
    assert dist.world_size == 2, dist
    results = out.resolve() / "results"
    obj, batch = make_objective(), shard(global_batch(), dist.rank)
    x0 = {"x": torch.randn(GLOBAL, 2, generator=torch.Generator().manual_seed(9))[dist.rank * GLOBAL // 2:]
          [:GLOBAL // 2]}

    # the engine's route: DDP around the objective's module, the JVP inside DDP's forward
    model = make_model()
    forward = TrainingForward(setup.wrap_for_training(model, dist, torch.device("cpu"), False, obj))
    torch.manual_seed(100 + dist.rank)
    obj(forward, batch, x0)[0].backward()
    torch.save(_grads(model), results / f"engine_rank{dist.rank}.pt")

    # the trap: DDP around the bare model, the JVP taken on its inner module (DDP's forward never runs
    # for the step's graph, so its reducer never syncs the gradients)
    model = make_model()
    ddp = setup.wrap_for_training(model, dist, torch.device("cpu"), False)
    torch.manual_seed(100 + dist.rank)
    obj(AverageVelocityJVP(ddp.module), batch, x0)[0].backward()
    torch.save(_grads(model), results / f"inner_rank{dist.rank}.pt")

    # the Trainer end to end
    run_dir = out / "runs" / ("ddp" if dist.rank == 0 else "ddp-rank1")
    trainer = make_trainer(run_dir, processes=2)
    trainer.fit()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, results / f"trainer_rank{dist.rank}.pt")

    # a model with two times trained by plain flow matching (r never passed: its r-embedding idles)
    run_dir = out / "runs" / ("cfm" if dist.rank == 0 else "cfm-rank1")
    trainer = make_cfm_trainer(run_dir, processes=2)
    trainer.fit()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, results / f"cfm_rank{dist.rank}.pt")

    # guidance as a model input: each example's omega reaches the model inside DDP's forward
    run_dir = out / "runs" / ("gi" if dist.rank == 0 else "gi-rank1")
    trainer = make_guidance_input_trainer(run_dir, processes=2)
    trainer.fit()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, results / f"gi_rank{dist.rank}.pt")
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "core"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_meanflow")
    (out / "results").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HERE),
           "--worker", str(out)]
    r = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def single_grads() -> dict[str, torch.Tensor]:
    """One process, the same global batch as two micro-batches with the ranks' random streams: the
    gradient of the mean of the two halves' losses, what DDP's average must give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        obj, model, batch = make_objective(), make_model(), global_batch()
        x0 = torch.randn(GLOBAL, 2, generator=torch.Generator().manual_seed(9))
        for k in range(2):
            torch.manual_seed(100 + k)
            (obj(model, shard(batch, k), {"x": x0[k * GLOBAL // 2:(k + 1) * GLOBAL // 2]})[0] / 2).backward()
        return _grads(model)
    finally:
        torch.set_num_threads(threads)


def _max_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_gradients_of_two_ranks_equal_one_process_on_the_global_batch(ddp_out: Path, single_grads) -> None:
    g0 = torch.load(ddp_out / "results" / "engine_rank0.pt")
    g1 = torch.load(ddp_out / "results" / "engine_rank1.pt")
    assert _max_err(g0, g1) == 0.0, "the ranks hold different gradients: they were not synchronised"
    scale = max(float(v.abs().max()) for v in single_grads.values())
    err = _max_err(g0, single_grads)
    assert err <= 1e-6 * max(scale, 1.0), f"DDP gradients differ from one process's by {err:.2e} (scale {scale:.2e})"
    assert scale > 1e-3, "no gradient to compare"


def test_a_jvp_on_the_inner_module_leaves_the_gradients_unsynchronised(ddp_out: Path, single_grads) -> None:
    """The trap this design avoids, shown on the same batch: the comparison above would catch it."""
    g0 = torch.load(ddp_out / "results" / "inner_rank0.pt")
    g1 = torch.load(ddp_out / "results" / "inner_rank1.pt")
    assert _max_err(g0, g1) > 1e-4, "the inner-module route synchronised after all: the negative control is moot"
    assert _max_err(g0, single_grads) > 1e-4


def fit_one_process(make, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The weights ``make(run_dir, processes=1)``'s Trainer ends with, trained on one thread as each rank is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make(tmp_path / "single", processes=1).fit().model.state_dict()
    finally:
        torch.set_num_threads(threads)


def test_the_trainer_under_ddp_trains_the_weights_of_one_process(ddp_out: Path, tmp_path: Path) -> None:
    p0 = torch.load(ddp_out / "results" / "trainer_rank0.pt")
    p1 = torch.load(ddp_out / "results" / "trainer_rank1.pt")
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"ranks diverged at {k}"
    single = fit_one_process(make_trainer, tmp_path)
    init = make_model().state_dict()
    for k, v in single.items():
        err = (p0[k] - v).abs().max().item()
        assert err <= 1e-5, f"{k} differs from the single process by {err:.2e}"
    assert any((single[k] - init[k]).abs().max() > 1e-3 for k in single), "the model did not train"


def test_a_two_time_model_trained_by_flow_matching_under_ddp(ddp_out: Path, tmp_path: Path) -> None:
    """Plain CFM never passes r, so the r-embedding gets no gradient: DDP is told to expect it (without
    that, its reducer fails at the second step), and the weights still equal one process's."""
    p0 = torch.load(ddp_out / "results" / "cfm_rank0.pt")
    p1 = torch.load(ddp_out / "results" / "cfm_rank1.pt")
    single = fit_one_process(make_cfm_trainer, tmp_path)
    init = make_model().state_dict()
    for k, v in single.items():
        assert torch.equal(p0[k], p1[k]), f"ranks diverged at {k}"
        assert (p0[k] - v).abs().max().item() <= 1e-5, k
    interval = [k for k in init if k.startswith("interval.")]
    assert interval and all(torch.equal(single[k], init[k]) for k in interval), "the r-embedding should idle"


def test_a_guidance_input_model_under_ddp_trains_the_weights_of_one_process(ddp_out: Path, tmp_path: Path) -> None:
    """objective.guidance_range: omega drawn per example and given to the model; the guidance embedding
    trains, and two ranks end with one process's weights."""
    p0 = torch.load(ddp_out / "results" / "gi_rank0.pt")
    p1 = torch.load(ddp_out / "results" / "gi_rank1.pt")
    single = fit_one_process(make_guidance_input_trainer, tmp_path)
    init = make_guidance_input_trainer(None, 1).model.state_dict()
    for k, v in single.items():
        assert torch.equal(p0[k], p1[k]), f"ranks diverged at {k}"
        assert (p0[k] - v).abs().max().item() <= 1e-5, k
    embedding = [k for k in init if k.startswith("guidance.")]
    assert embedding and any((single[k] - init[k]).abs().max() > 1e-4 for k in embedding), "omega never trained"


def test_the_engine_expects_idle_parameters_only_where_r_is_never_fed() -> None:
    from fmkit import MLP
    from fmkit.engine.setup import idle_r_embedding

    two, one = make_model(), MLP(2, hidden=8, depth=1, time_dim=8)
    assert idle_r_embedding(two, None) and idle_r_embedding(two, object())
    assert not idle_r_embedding(two, make_objective()) and not idle_r_embedding(one, None)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    _worker(Path(sys.argv[2]))
