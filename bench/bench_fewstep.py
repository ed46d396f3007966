"""Few-step generation on the 2-D toy: 1-RF, 2-RF (reflow) and 2-RF + one-step distillation,
8 gaussians -> two moons, exact W2 at 1, 2, 4 and 100 NFE (Liu et al. 2022, "Flow Straight and Fast").

Per seed, all through fmkit's library:

  1-RF     ``fmkit.Trainer`` from the 8-gaussian source to moons with the independent coupling
           (rectified flow's first flow), MLP, AdamW, cosine lr; a run directory in a temp folder
  reflow   ``fmkit.app.reflow.write_pairs``: N pairs (x0 ~ 8 gaussians, x1 = Euler-100 solve of 1-RF)
           into a pairs folder (safetensors shards + manifest)
  2-RF     ``Trainer`` on ``PairsDataset`` with the ``given`` coupling (x0 from the pairs, not the
           source), uniform t, ``init_from`` the 1-RF run (as in the paper)
  distill  the same pairs at the fixed time t = 0 (``time_sampler: grid``, ``time_grid: [0]``): the
           target is x1 - x0, so one Euler step maps x0 to x1; ``init_from`` the 2-RF run

Sampling: Euler with 1, 2, 4 and 100 steps (NFE = steps) from the same 8-gaussian draws for every
model; columns "sway c" use the sway-sampling grid of coefficient c (F5-TTS; -1 puts the steps near
the source, +1 near the data) instead of the uniform one at 2 and 4 NFE. W2 by ``fmkit.app.builtin.metrics.wasserstein2`` (exact assignment) against a held-out moons
sample; the floor is W2 between two independent moons samples of the same size.

Bar (issue 17): 2-RF + distillation at 1 NFE within 1.5x of 1-RF's 100-NFE W2 (mean over seeds),
and 2-RF at 2 NFE better than 1-RF at 2 NFE on every seed.

    nice -n 5 python bench/bench_fewstep.py      # 5 seeds, writes bench/results/fewstep.{json,md}
    python bench/bench_fewstep.py --quick        # CI size (one seed, a few hundred steps)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import table, write_results  # noqa: E402
from fmkit import MLP  # noqa: E402
from fmkit.app.builtin.metrics import wasserstein2  # noqa: E402
from fmkit.app.builtin.pairs import PairsDataset  # noqa: E402
from fmkit.app.builtin.toy import ToyDataset, ToySource, eight_gaussians, moons  # noqa: E402
from fmkit.app.reflow import write_pairs  # noqa: E402
from fmkit.flow.paths import StatePath  # noqa: E402
from fmkit.flow.sampling import generate  # noqa: E402
from fmkit.flow.solvers import sway_grid  # noqa: E402
from fmkit.flow.sources import StateSource  # noqa: E402

NFES = (1, 2, 4, 100)


def options(a: argparse.Namespace, steps: int, lr: float, **extra) -> fmkit.TrainerOptions:
    return fmkit.TrainerOptions(steps=steps, batch_size=a.batch, lr=lr, warmup_steps=0, schedule="cosine",
                                min_lr_ratio=0.0, grad_clip=1.0, ema_decay=None, progress=False, device="cpu",
                                checkpoint_every=10**9, cpu_threads=a.threads, **extra)


def source() -> StateSource:
    return StateSource(ToySource("eight_gaussians"))


def train(model: torch.nn.Module, ds, opts: fmkit.TrainerOptions, coupling, run_dir: Path, seed: int) -> tuple:
    tr = fmkit.Trainer(model, ds, source=source(), coupling=coupling, options=opts, run_dir=run_dir, seed=seed)
    t0 = time.process_time()
    tr.fit()
    return tr.model, time.process_time() - t0


@torch.no_grad()
def sample(model: torch.nn.Module, x0: torch.Tensor, steps: int, sway: float | None = None) -> torch.Tensor:
    """Euler from the given source points (the same for every model); NFE = steps."""
    model.eval()
    path = StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()))

    class Fixed(StateSource):  # hands generate() the shared source draw
        def __init__(self) -> None:
            super().__init__({})

        def sample(self, like):
            return {"x": x0.clone()}

    grid = sway_grid(steps, sway) if sway is not None else None
    sol = generate(model, path, Fixed(), fmkit.FixedStepSolver("euler", steps, grid), {"x": torch.zeros_like(x0)})
    assert sol.nfe == steps, sol.nfe
    return sol.x["x"]


def rectified(a: argparse.Namespace, ds, seed: int, root: Path, steps: tuple[int, int, int],
              cpu_s: dict[str, list[float]] | None = None) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """1-RF, 2-RF and 2-RF + distillation of one seed (the module doc's pipeline): ``steps`` = (1-RF, 2-RF,
    distillation) training steps, run directories and the pairs under ``root``; ``a`` holds the model size,
    learning rates, batch, threads, pairs and teacher steps. CPU seconds per stage go to ``cpu_s`` if given."""
    cost = cpu_s if cpu_s is not None else {}

    def mlp() -> torch.nn.Module:
        return MLP(2, hidden=a.hidden, depth=a.depth, time_dim=a.time_dim)

    torch.manual_seed(1000 + seed)
    rf1, c = train(mlp(), ds, options(a, steps[0], a.lr), fmkit.IndependentCoupling(), root / "rf1", seed)
    cost.setdefault("1-RF", []).append(c)
    t0 = time.process_time()
    torch.manual_seed(seed)
    res = write_pairs(root / "pairs", rf1, StatePath(fmkit.AffinePath(fmkit.CondOTScheduler())), source(),
                      fmkit.FixedStepSolver("euler", a.teacher_steps), ds, a.pairs, seed=seed,
                      teacher={"run": "rf1", "seed": seed}, progress=False)
    cost.setdefault("reflow", []).append(time.process_time() - t0)
    assert res.num_pairs == a.pairs
    pairs = PairsDataset(root / "pairs")
    torch.manual_seed(2000 + seed)
    rf2, c = train(mlp(), pairs, options(a, steps[1], a.lr_finetune, init_from=str(root / "rf1")),
                   fmkit.GivenCoupling(), root / "rf2", seed)
    cost.setdefault("2-RF", []).append(c)
    torch.manual_seed(3000 + seed)
    dist, c = train(mlp(), pairs, options(a, steps[2], a.lr_finetune, init_from=str(root / "rf2"),
                                          time_sampler="grid", time_grid=[0.0]),
                    fmkit.GivenCoupling(), root / "distill", seed)
    cost.setdefault("distill", []).append(c)
    return rf1, rf2, dist


def add_shared_options(p: argparse.ArgumentParser, *, batch: int, name: str) -> None:
    """The options every few-step toy bench takes: reflow pairs and solve, network size, seeds, W2
    sample size, threads, --quick and where the results go."""
    p.add_argument("--teacher-steps", type=int, default=100, help="Euler steps of the reflow solve")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--time-dim", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-eval", type=int, default=2000, help="samples and reference points for W2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CI size: one seed, a few hundred steps")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--name", default=name)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps-1rf", type=int, default=8000)
    p.add_argument("--steps-2rf", type=int, default=4000)
    p.add_argument("--steps-distill", type=int, default=6000)
    p.add_argument("--lr", type=float, default=1e-3, help="1-RF's peak lr")
    p.add_argument("--lr-finetune", type=float, default=5e-4, help="2-RF's and the student's peak lr")
    p.add_argument("--pairs", type=int, default=50000, help="reflow pairs per seed")
    p.add_argument("--sway", type=float, nargs="*", default=[-1.0, 1.0], help="sway coefficients also measured at 2, 4 NFE")
    add_shared_options(p, batch=256, name="fewstep")
    a = p.parse_args(argv)
    if a.quick:
        a.steps_1rf, a.steps_2rf, a.steps_distill, a.pairs, a.seeds, a.n_eval = 200, 100, 100, 2048, [0], 300
        a.name = a.name if a.name != "fewstep" else "fewstep_quick"
    torch.set_num_threads(a.threads)
    ds = ToyDataset("moons", n=100_000, seed=0)
    g = torch.Generator().manual_seed(12345)
    ref, _ = moons(a.n_eval, g)  # held out: generated apart from the training set
    ref2, _ = moons(a.n_eval, g)
    floor = wasserstein2(ref2, ref)
    methods = ["1-RF", "2-RF", "2-RF + distill"]
    w2: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    cpu_s: dict[str, list[float]] = {k: [] for k in ("1-RF", "reflow", "2-RF", "distill")}
    t_all = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            root = Path(tmp) / f"seed{seed}"
            rf1, rf2, dist = rectified(a, ds, seed, root, (a.steps_1rf, a.steps_2rf, a.steps_distill), cpu_s)
            x0, _ = eight_gaussians(a.n_eval, torch.Generator().manual_seed(777 + seed))
            for name, m in zip(methods, (rf1, rf2, dist)):
                for nfe in NFES:
                    w2[name].setdefault(str(nfe), []).append(wasserstein2(sample(m, x0, nfe), ref))
                for nfe in (2, 4):
                    for c in a.sway:
                        w2[name].setdefault(f"{nfe} sway {c:g}", []).append(
                            wasserstein2(sample(m, x0, nfe, c), ref))
            print(f"  seed {seed}: " + "; ".join(
                f"{n} " + " ".join(f"{k}:{w2[n][k][-1]:.3f}" for k in map(str, NFES)) for n in methods), flush=True)
    total = time.process_time() - t_all

    def mean_sd(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"

    cols = [str(n) for n in NFES] + [f"{n} sway {c:g}" for n in (2, 4) for c in a.sway]
    rows = [[n] + [mean_sd(w2[n][c]) for c in cols] for n in methods]
    rows.append(["data vs data (floor)"] + [f"{floor:.4f}"] * len(cols))
    per_seed = [[n, c, " ".join(f"{x:.4f}" for x in w2[n][c])] for n in methods for c in cols]
    bar1 = statistics.mean(w2["2-RF + distill"]["1"]) / statistics.mean(w2["1-RF"]["100"])
    wins = [b < c for b, c in zip(w2["2-RF"]["2"], w2["1-RF"]["2"])]
    ratios = [d / r for d, r in zip(w2["2-RF + distill"]["1"], w2["1-RF"]["100"])]
    bars = [["2-RF + distill @ 1 NFE / 1-RF @ 100 NFE (mean W2)", f"{bar1:.3f}", "<= 1.5",
             "PASS" if bar1 <= 1.5 else "FAIL"],
            ["the same ratio per seed (not the bar; for the record)", " ".join(f"{r:.3f}" for r in ratios),
             "<= 1.5", f"{sum(r <= 1.5 for r in ratios)}/{len(ratios)} seeds"],
            ["2-RF @ 2 NFE < 1-RF @ 2 NFE, seeds", f"{sum(wins)}/{len(wins)}", "every seed",
             "PASS" if all(wins) else "FAIL"]]
    costs = [[k, f"{statistics.mean(v):.1f}"] for k, v in cpu_s.items()]
    text = "\n".join([
        f"8 gaussians -> moons; MLP {a.hidden}x{a.depth} (time dim {a.time_dim}), batch {a.batch}, AdamW, cosine lr, "
        f"clip 1, no EMA. 1-RF: independent coupling, {a.steps_1rf} steps, lr {a.lr}. Reflow: {a.pairs} pairs, "
        f"Euler {a.teacher_steps} steps of 1-RF. 2-RF: {a.steps_2rf} steps on the pairs (given coupling, uniform t), "
        f"init from 1-RF, lr {a.lr_finetune}. Distill: {a.steps_distill} steps on the same pairs at t = 0, init from "
        f"2-RF, lr {a.lr_finetune}. Euler sampling at NFE = steps from the same 8-gaussian draws; 'sway c' = the "
        f"sway grid of coefficient c instead of the uniform one. Exact W2 on {a.n_eval} points vs held-out moons; seeds {a.seeds}.", "",
        "W2 (mean +- sd over seeds, lower is better):", "",
        table(["method"] + [f"NFE {c}" for c in cols], rows), "",
        table(["bar (issue 17)", "measured", "target", "result"], bars), "",
        f"CPU seconds per seed (process time, {a.threads} thread(s)); whole script {total:.0f} s:", "",
        table(["stage", "CPU s (mean per seed)"], costs), "",
        "Per seed:", "", table(["method", "NFE", "W2 per seed"], per_seed)])
    print(text)
    payload = {"config": {k: v for k, v in vars(a).items() if not isinstance(v, Path)}, "w2": w2, "floor": floor,
               "bars": {"distill_1nfe_over_1rf_100nfe": bar1, "per_seed_ratio": ratios, "rf2_beats_rf1_at_2nfe": wins},
               "cpu_seconds": cpu_s, "cpu_seconds_total": total}
    if not a.quick or a.out is not None:
        j, m = write_results(a.name, payload, text, a.out)
        print(f"wrote {j} and {m}")
    return payload


if __name__ == "__main__":
    main()
