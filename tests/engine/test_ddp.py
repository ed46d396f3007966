"""DDP on CPU: 2 processes (gloo, launched by torchrun) train exactly what 1 process trains.

The contract (fmkit.engine.distributed, docs/scale.md): a step's global batch is cut into
``grad_accum x world_size`` strided shards and shard j draws its randomness from a stream seeded by
(seed, step, j). So 2 processes x ``grad_accum=a`` must give the weights of 1 process x
``grad_accum=2a`` with the same global batch — here to 1e-5 (in practice bit for bit: the shards,
their noise and the gradient average are the same numbers). Both ranks must hold identical weights,
the logged loss must be the global one, and only rank 0 may write files.

This file is also the worker: ``torchrun --nproc-per-node 2 tests/engine/test_ddp.py --worker OUT``.
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
ROOT = HERE.parents[2]
STEPS = 12
# name -> (coupling, grad_accum per process, trainer.pairing); "loader_ot" pairs in the data pipeline
CONFIGS = {"independent": ("independent", 1, "step"), "exact_ot": ("exact_ot", 1, "step"),
           "accum2": ("independent", 2, "step"), "loader_ot": ("exact_ot", 1, "loader")}


def make_trainer(name: str, run_dir: Path | None, processes: int):
    """The trainer of config ``name``; a single process (processes=1) reproducing a 2-process run
    gets ``grad_accum x 2`` so that the number of shards, hence the random streams, match."""
    import fmkit
    from fmkit import MLP
    from fmkit.app.builtin.toy import ToyDataset, ToySource

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
    from fmkit.engine.distributed import init_from_env

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


def _torchrun_this_file(out: Path, role: str, timeout: int) -> Path:
    """Run this file as the ``role`` worker (``--worker``, ``--stop-worker``) on 2 gloo ranks, in ``out``."""
    (out / "results").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(HERE),
           role, str(out)]
    r = subprocess.run(cmd, cwd=out, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> Path:
    return _torchrun_this_file(tmp_path_factory.mktemp("ddp"), "--worker", timeout=180)


def _losses(run_dir: Path) -> dict[int, float]:
    from fmkit.engine.metrics_log import read_metrics

    return dict(read_metrics(run_dir)["loss"])


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
    cmd = [sys.executable, "-m", "fmkit", "train", str(ROOT / "recipes" / "toy_moons.yaml"),
           "--nproc-per-node", "2", "--set", "trainer.steps=20", "--set", "trainer.checkpoint_every=10",
           "--set", "trainer.log_every=10", "--set", "trainer.progress=false", "--set", "trainer.device=cpu",
           "--set", "eval.num_samples=200", "--set", "eval.writers=[]", "--set", "solver.steps=20",
           "--out", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.count("run directory:") == 1  # rank 0 alone prints (and writes)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoints", "curves.png", "evaluated.json",
                                                     "metrics.csv", "provenance.json", "recipe.yaml", "samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    meta = json.loads((out / "checkpoints" / "step_000000020" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["finished"]
    with open(out / "metrics.csv", newline="") as f:
        names = {(int(r["step"]), r["name"]) for r in csv.DictReader(f)}
    assert {(10, "loss"), (20, "loss"), (20, "eval/w2")} <= names


# ------------------------------------------------------------------------------------------------
# stops: a signal that reaches one rank, NaN in one rank's shard, a stop between log steps
# ------------------------------------------------------------------------------------------------
def _stop_worker(out: Path) -> None:
    import signal

    import fmkit
    from fmkit.engine.distributed import init_from_env

    dist = init_from_env("gloo")
    res = out / "results"

    def trainer(tag: str, steps: int, data=None, coupling="independent", **kw):
        from fmkit import MLP
        from fmkit.app.builtin.toy import ToyDataset, ToySource

        torch.manual_seed(0)
        opts = fmkit.TrainerOptions(steps=steps, batch_size=64, lr=1e-2, ema_decay=None, progress=False,
                                    device="cpu", **{"checkpoint_every": 1000, "log_every": 4, **kw})
        ds = fmkit.TensorDataset(data) if data is not None else ToyDataset("moons", n=2048, seed=0)
        return fmkit.Trainer(MLP(2, hidden=32, depth=2, time_dim=16), ds, source=ToySource("eight_gaussians"),
                             coupling=fmkit.ExactOTCoupling() if coupling == "exact_ot" else fmkit.IndependentCoupling(),
                             options=opts, run_dir=out / "runs" / tag, seed=3)  # rank 0 alone writes

    class SignalRank1(fmkit.Callback):  # as a launcher whose signal reaches one rank first
        def on_step_end(self, tr, step):
            if dist.rank == 1 and step == 7:
                os.kill(os.getpid(), signal.SIGINT)

    tr = trainer("signal", 10_000)
    tr.callbacks.append(SignalRank1())
    try:
        tr.fit()
        outcome = "finished"
    except fmkit.errors.FmkitError as exc:
        outcome = type(exc).__name__
    (res / f"signal_rank{dist.rank}.json").write_text(json.dumps({"step": tr.step, "outcome": outcome}))

    data = torch.randn(1024, 2)
    data[100] = float("nan")  # in one rank's shard of one batch only
    tr = trainer("nan", 200, data=data, coupling="exact_ot")
    try:
        tr.fit()
        msg = "finished"
    except fmkit.errors.TrainingError as exc:
        msg = exc.what
    (res / f"nan_rank{dist.rank}.json").write_text(json.dumps({"step": tr.step, "msg": msg}))

    trainer("whole", 8).fit()  # uninterrupted, then stopped at 6 (between the log steps 4 and 8) and resumed
    trainer("parts", 8).fit(until=6)
    trainer("parts", 8).fit(resume=True)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def stop_out(tmp_path_factory) -> Path:
    return _torchrun_this_file(tmp_path_factory.mktemp("ddp_stop"), "--stop-worker", timeout=240)


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(stop_out: Path) -> None:
    """Each rank used to act on its own signal at its own step: one waited in the checkpoint's barrier
    while the other ran the next step's collectives (a hang, and no checkpoint)."""
    got = [json.loads((stop_out / "results" / f"signal_rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1] == {"step": 8, "outcome": "TrainingInterrupted"}  # agreed one step after the signal
    ck = stop_out / "runs" / "signal" / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_000000008"


def test_nan_in_one_ranks_shard_under_ot_stops_every_rank_with_the_same_diagnosis(stop_out: Path) -> None:
    """Only the rank whose shard held the NaN used to stop (and wait forever in a barrier); the others'
    message blamed divergence."""
    got = [json.loads((stop_out / "results" / f"nan_rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["step"] == got[1]["step"] < 200
    for g in got:
        assert "the batch holds NaN/Inf in field(s) ['x']: the data is broken" in g["msg"], g["msg"]
        assert "was saved as a checkpoint" in g["msg"]


def test_a_ddp_resume_between_log_steps_logs_the_global_loss(stop_out: Path) -> None:
    """The checkpoint kept rank 0's own losses of the log window: the resumed log line differed."""
    whole, parts = _losses(stop_out / "runs" / "whole"), _losses(stop_out / "runs" / "parts")
    assert sorted(whole) == sorted(parts) == [4, 8]
    assert parts[8] == pytest.approx(whole[8], rel=1e-6)


def test_resuming_a_2x1_checkpoint_as_1x2_continues_the_same_training(ddp_out: Path, tmp_path: Path) -> None:
    """8 GPUs x 1 -> 4 GPUs x grad_accum 2 (docs/scale.md): the data position counts this rank's
    micro-batches, so it must be converted, not reused (it replayed 100 batches in the trial)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ddp_out / "runs" / "independent", run)
    shutil.rmtree(run / "checkpoints" / "step_000000012")
    (run / "checkpoints" / "latest").write_text("step_000000010")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = make_trainer("independent", run, processes=1)  # grad_accum 2
        resumed.fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    ddp = torch.load(ddp_out / "results" / "independent_rank0.pt")
    for k, v in resumed.model.state_dict().items():
        assert (v - ddp[k]).abs().max().item() <= 1e-5, k


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stopping_a_cli_ddp_run_saves_one_checkpoint_and_exits_cleanly(tmp_path: Path, sig: str) -> None:
    """Ctrl-C (or a scheduler's SIGTERM) of `fmkit train --nproc-per-node 2`: every rank stops at the
    same step with a checkpoint, rank 0 alone reports it, the launcher exits 128 + signal (it used to
    hang in 2 of 5 tries, then print 'internal error: SignalException ... please report it')."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fmkit", "train", str(ROOT / "recipes" / "toy_moons.yaml"),
           "--nproc-per-node", "2", "--set", "trainer.progress=false", "--set", "trainer.device=cpu",
           "--set", "trainer.log_every=20", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 120
        log = out / "metrics.csv"
        while time.time() < deadline and not (log.exists() and ",loss," in log.read_text()):
            time.sleep(0.5)
        os.killpg(p.pid, getattr(signal, sig))
        stdout, stderr = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    num = getattr(signal, sig).value
    assert p.returncode == 128 + num, f"{p.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    assert stderr.count(f"training stopped by {sig}") == 1, stderr
    assert "internal error" not in stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((out / "checkpoints" / latest / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] > 0 and not meta["finished"]


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
if __name__ == "__main__" and "--stop-worker" in sys.argv:
    _stop_worker(Path(sys.argv[sys.argv.index("--stop-worker") + 1]))
