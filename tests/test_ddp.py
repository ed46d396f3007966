"""DDP on CPU: 2 processes (gloo, launched by torchrun) train exactly what 1 process trains.

The contract (fmkit.distributed, docs/scale.md): a step's global batch is cut into
``grad_accum x world_size`` strided shards and shard j draws its randomness from a stream seeded by
(seed, step, j). So 2 processes x ``grad_accum=a`` must give the weights of 1 process x
``grad_accum=2a`` with the same global batch — here to 1e-5 (in practice bit for bit: the shards,
their noise and the gradient average are the same numbers). Both ranks must hold identical weights,
the logged loss must be the global one, and only rank 0 may write files.

This file is also the worker: ``torchrun --nproc-per-node 2 tests/test_ddp.py --worker OUT``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
STEPS = 12
# name -> (coupling, grad_accum per process, trainer.pairing); "loader_ot" pairs in the data pipeline
CONFIGS = {"independent": ("independent", 1, "step"), "exact_ot": ("exact_ot", 1, "step"),
           "accum2": ("independent", 2, "step"), "loader_ot": ("exact_ot", 1, "loader")}


def make_trainer(name: str, run_dir: Path | None, processes: int):
    """The trainer of config ``name``; a single process (processes=1) reproducing a 2-process run
    gets ``grad_accum x 2`` so that the number of shards, hence the random streams, match."""
    import fmkit
    from fmkit.models import MLP
    from fmkit.toy import ToyDataset, ToySource

    coupling, accum, pairing = CONFIGS[name]
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2, time_dim=16)
    opts = fmkit.TrainerOptions(steps=STEPS, batch_size=64, grad_accum=accum * (2 // processes), lr=1e-2,
                                warmup_steps=2, schedule="cosine", grad_clip=1.0, ema_decay=None, progress=False,
                                device="cpu", checkpoint_every=5, log_every=4, pairing=pairing)
    return fmkit.Trainer(model, ToyDataset("moons", n=2048, seed=0), source=ToySource("eight_gaussians"),
                         coupling=fmkit.ExactOTCoupling() if coupling == "exact_ot" else fmkit.IndependentCoupling(),
                         solver=fmkit.FixedStepSolver("euler", 10), options=opts,
                         eval_options=fmkit.EvalOptions(batch_size=64, use_ema=False), run_dir=run_dir, seed=3)


# ------------------------------------------------------------------------------------------------
# worker (one per rank, under torchrun)
# ------------------------------------------------------------------------------------------------
def _worker(out: Path) -> None:
    from fmkit.distributed import init_from_env

    dist = init_from_env("gloo")
    assert dist.world_size == 2, dist
    out = out.resolve()
    results = out / "results"
    writes: list[str] = []
    if dist.rank != 0:  # record every file-system write of this rank (Python-level; safetensors is
        # Rust, so rank 1 also gets its own run directory below, which must stay absent)
        def audit(event: str, args: tuple) -> None:
            if event == "open":
                path, mode, flags = args
                writing = (mode is not None and any(c in mode for c in "wax+")) or \
                    (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree"):
                path, writing = args[0], True
            else:
                return
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                p = os.path.abspath(os.fsdecode(path))
                if p.startswith(str(out)) and not p.startswith(str(results)):
                    writes.append(f"{event} {p}")

        sys.addaudithook(audit)
    for name in CONFIGS:
        run_dir = out / "runs" / (name if dist.rank == 0 else f"{name}-rank{dist.rank}")
        trainer = make_trainer(name, run_dir, processes=2)
        trainer.fit()
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()},
                   results / f"{name}_rank{dist.rank}.pt")
        if name == "independent":  # evaluation sampling split over the ranks: chunks 0,2,4 | 1,3
            torch.save(trainer.sample(300, seed=5, distributed=True), results / f"samples_rank{dist.rank}.pt")
    (results / f"writes_rank{dist.rank}.json").write_text(json.dumps(writes))
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
    out = tmp_path_factory.mktemp("ddp")
    (out / "results").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HERE),
           "--worker", str(out)]
    r = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["name"] == "loss"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_match_one_process(ddp_out: Path, name: str, tmp_path: Path) -> None:
    p0 = torch.load(ddp_out / "results" / f"{name}_rank0.pt")
    p1 = torch.load(ddp_out / "results" / f"{name}_rank1.pt")
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"ranks diverged at {k}"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): same kernels, same rounding
    try:
        ref = make_trainer(name, tmp_path / "single", processes=1).fit()
    finally:
        torch.set_num_threads(threads)
    single = ref.model.state_dict()
    init = make_trainer(name, None, processes=1).model.state_dict()
    for k, v in single.items():
        moved = (v - init[k]).abs().max().item()
        err = (p0[k] - v).abs().max().item()
        assert err <= 1e-5, f"{name}: {k} differs from the single process by {err:.2e} (moved {moved:.2e})"
    assert any((single[k] - init[k]).abs().max() > 1e-3 for k in single), "the model did not train"

    # rank 0 logs the loss averaged over ranks, i.e. the single process's loss
    ddp_loss, single_loss = _losses(ddp_out / "runs" / name), _losses(tmp_path / "single")
    assert sorted(ddp_loss) == sorted(single_loss) == [4, 8, 12]
    for s in ddp_loss:
        assert ddp_loss[s] == pytest.approx(single_loss[s], rel=1e-5, abs=1e-6)


def test_distributed_sampling_matches_one_process(ddp_out: Path) -> None:
    s0 = torch.load(ddp_out / "results" / "samples_rank0.pt")
    s1 = torch.load(ddp_out / "results" / "samples_rank1.pt")
    assert s0["x"].shape == (300, 2) and torch.equal(s0["x"], s1["x"])  # every rank holds all samples
    trainer = make_trainer("independent", None, processes=1)
    trainer.model.load_state_dict(torch.load(ddp_out / "results" / "independent_rank0.pt"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = trainer.sample(300, seed=5)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(s0["x"], single["x"], rtol=0, atol=1e-6)


def test_only_rank0_writes(ddp_out: Path) -> None:
    runs = ddp_out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(CONFIGS), "rank 1 created a run directory"
    for name in CONFIGS:
        d = runs / name
        assert (d / "metrics.csv").is_file()
        assert sorted(p.name for p in (d / "checkpoints").glob("step_*")) == ["step_000000010", "step_000000012"]
        meta = json.loads((d / "checkpoints" / "step_000000012" / "meta.json").read_text())
        assert meta["world_size"] == 2 and meta["step"] == STEPS and meta["finished"]
    assert json.loads((ddp_out / "results" / "writes_rank1.json").read_text()) == []
    assert sorted(p.name for p in ddp_out.iterdir()) == ["results", "runs"]  # nothing in the cwd either


def test_cli_nproc_per_node_end_to_end(tmp_path: Path) -> None:
    """`fmkit train --nproc-per-node 2` re-launches itself under torchrun (2 CPU processes)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fmkit.cli", "train", str(ROOT / "recipes" / "toy_moons.yaml"),
           "--nproc-per-node", "2", "--set", "trainer.steps=20", "--set", "trainer.checkpoint_every=10",
           "--set", "trainer.log_every=10", "--set", "trainer.progress=false", "--set", "trainer.device=cpu",
           "--set", "eval.num_samples=200", "--set", "eval.writers=[]", "--set", "solver.steps=20",
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.count("run directory:") == 1  # rank 0 alone prints (and writes)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "curves.png", "metrics.csv", "recipe.yaml",
                                                     "samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    meta = json.loads((out / "checkpoints" / "step_000000020" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["finished"]
    with open(out / "metrics.csv", newline="") as f:
        names = {(int(r["step"]), r["name"]) for r in csv.DictReader(f)}
    assert {(10, "loss"), (20, "loss"), (20, "eval/w2")} <= names


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
