"""One-step generation on the 2-D toy (issue 29): MeanFlow at 1 NFE vs flow matching at 100 NFE vs
2-RF + distillation at 1 NFE, 8 gaussians -> two moons, the same total number of training steps for
every method, 5 seeds. Quality only (exact W2); no timings are reported.

Per seed, all through fmkit's library, from the same MLP size, batch, optimizer and schedule:

  FM             ``fmkit.Trainer`` with the CFM objective for T steps, once per coupling in
                 ``--fm-couplings`` (independent: rectified flow's first flow; exact_ot: OT-CFM);
                 sampled by Euler at 1, 2, 4, 100 NFE
  2-RF + distill ``bench_fewstep.rectified``: 1-RF, reflow pairs, 2-RF, distillation at t = 0, the three
                 trainings splitting T as ``--rf-split`` (bench_fewstep's 8 : 4 : 6 by default)
  MeanFlow       ``objective: meanflow`` for T steps, one run per ``--meanflow`` variant
                 (coupling:adaptive_p:equal_fraction:time_sampler), an MLP with ``two_times``; sampled by
                 1, 2, 4 jumps (solver meanflow) and, for the record, by Euler 100 on u(z, t, t)

W2 by ``fmkit.app.builtin.metrics.wasserstein2`` (exact assignment) on ``--n-eval`` points against a
held-out moons sample, from the same 8-gaussian draws for every model (bench_fewstep's seeds); floor:
W2 between two independent moons samples of that size.

Bars (issue 29), on the first ``--meanflow`` variant (the recipe's, recipes/toy_meanflow.yaml): mean W2
at 1 NFE within 1.2x of FM's (first coupling) mean W2 at 100 NFE; and below 2-RF + distillation's
mean W2 at 1 NFE.

    nice -n 5 python bench/fewstep_toy_meanflow.py        # writes bench/results/fewstep_toy_meanflow.{json,md}
    python bench/fewstep_toy_meanflow.py --quick          # CI size
    nice -n 5 python bench/fewstep_toy_meanflow.py --seeds 0 1 --fm-couplings exact_ot --time-mean 0.4 \
        --name fewstep_toy_meanflow_ablation --meanflow exact_ot:0:0.75:uniform exact_ot:1:0.75:uniform \
        exact_ot:0:0.75:logit_normal exact_ot:0:0.5:uniform independent:0:0.75:uniform independent:1:0.75:uniform
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import table, write_results  # noqa: E402
from bench_fewstep import add_shared_options, options, rectified, sample, source  # noqa: E402
from fmkit import MLP  # noqa: E402
from fmkit.app.builtin.metrics import wasserstein2  # noqa: E402
from fmkit.app.builtin.toy import ToyDataset, eight_gaussians, moons  # noqa: E402
from fmkit.flow.paths import StatePath  # noqa: E402
from fmkit.flow.sampling import generate  # noqa: E402
from fmkit.flow.sources import StateSource  # noqa: E402

NFES = (1, 2, 4, 100)
COUPLINGS = {"independent": fmkit.IndependentCoupling, "exact_ot": fmkit.ExactOTCoupling}


def wait_quiet() -> None:
    """A timed measurement elsewhere on this machine holds /tmp/QUIET: wait until it is gone."""
    while os.path.exists("/tmp/QUIET"):
        time.sleep(60)


def parse_variant(spec: str) -> dict:
    """``coupling:p:equal_fraction:time_sampler`` -> the MeanFlow run's settings."""
    coupling, p, ef, ts = spec.split(":")
    if coupling not in COUPLINGS or ts not in ("uniform", "logit_normal"):
        raise SystemExit(f"--meanflow {spec!r}: coupling in {sorted(COUPLINGS)}, sampler uniform|logit_normal")
    return {"coupling": coupling, "adaptive_p": float(p), "equal_fraction": float(ef), "time_sampler": ts}


def label(v: dict) -> str:
    return f"MeanFlow ({v['coupling']}, p={v['adaptive_p']:g}, r=t {v['equal_fraction']:g}, {v['time_sampler']})"


@torch.no_grad()
def jumps(model: torch.nn.Module, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` MeanFlow jumps from the given source points (NFE = steps)."""
    model.eval()

    class Fixed(StateSource):  # hands generate() the shared source draw
        def __init__(self) -> None:
            super().__init__({})

        def sample(self, like):
            return {"x": x0.clone()}

    path = StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()))
    sol = generate(model, path, Fixed(), fmkit.MeanFlowSolver(steps), {"x": torch.zeros_like(x0)})
    assert sol.nfe == steps, sol.nfe
    return sol.x["x"]


def train_meanflow(a: argparse.Namespace, ds, v: dict, seed: int, run_dir: Path) -> torch.nn.Module:
    torch.manual_seed(4000 + seed)
    model = MLP(2, hidden=a.hidden, depth=a.depth, time_dim=a.time_dim, two_times=True)
    opts = options(a, a.steps, a.lr, time_sampler=v["time_sampler"], time_mean=a.time_mean)
    tr = fmkit.Trainer(model, ds, source=source(), coupling=COUPLINGS[v["coupling"]](), options=opts,
                       run_dir=run_dir, seed=seed,
                       objective={"name": "meanflow", "adaptive_p": v["adaptive_p"],
                                  "equal_fraction": v["equal_fraction"]})
    tr.fit()
    return tr.model


def train_fm(a: argparse.Namespace, ds, coupling: str, seed: int, run_dir: Path) -> torch.nn.Module:
    torch.manual_seed(5000 + seed)
    tr = fmkit.Trainer(MLP(2, hidden=a.hidden, depth=a.depth, time_dim=a.time_dim), ds, source=source(),
                       coupling=COUPLINGS[coupling](), options=options(a, a.steps, a.lr), run_dir=run_dir, seed=seed)
    tr.fit()
    return tr.model


def split(total: int, ratio: list[float]) -> tuple[int, int, int]:
    """``total`` steps cut in the ratio (1-RF, 2-RF, distillation), the rounding left to 1-RF."""
    s = sum(ratio)
    rf2, dist = round(total * ratio[1] / s), round(total * ratio[2] / s)
    return total - rf2 - dist, rf2, dist


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4500, help="training steps of every method (T)")
    p.add_argument("--rf-split", type=float, nargs=3, default=[8, 4, 6], help="1-RF : 2-RF : distill share of T")
    p.add_argument("--meanflow", nargs="+", default=["exact_ot:0:0.75:uniform"],
                   help="MeanFlow variants coupling:adaptive_p:equal_fraction:time_sampler (the first is the bars')")
    p.add_argument("--fm-couplings", nargs="+", default=["independent", "exact_ot"], choices=sorted(COUPLINGS))
    p.add_argument("--time-mean", type=float, default=0.0, help="logit_normal's mean (fmkit's time: data at 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr of FM, MeanFlow and 1-RF")
    p.add_argument("--lr-finetune", type=float, default=5e-4, help="2-RF's and the student's peak lr")
    p.add_argument("--pairs", type=int, default=50000, help="reflow pairs per seed")
    add_shared_options(p, batch=128, name="fewstep_toy_meanflow")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.pairs, a.seeds, a.n_eval = 180, 1024, [0], 300
        a.name = a.name if a.name != "fewstep_toy_meanflow" else "fewstep_toy_meanflow_quick"
    variants = [parse_variant(s) for s in a.meanflow]
    rf_steps = split(a.steps, a.rf_split)
    torch.set_num_threads(a.threads)
    ds = ToyDataset("moons", n=100_000, seed=0)
    g = torch.Generator().manual_seed(12345)
    ref, _ = moons(a.n_eval, g)  # held out: generated apart from the training set
    floor = wasserstein2(moons(a.n_eval, g)[0], ref)
    fm_names = [f"FM ({c})" for c in a.fm_couplings]
    mf_names = [label(v) for v in variants]
    w2: dict[str, dict[str, list[float]]] = {n: {} for n in [*fm_names, "2-RF", "2-RF + distill", *mf_names]}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            root = Path(tmp) / f"seed{seed}"
            x0, _ = eight_gaussians(a.n_eval, torch.Generator().manual_seed(777 + seed))
            for name, coupling in zip(fm_names, a.fm_couplings):
                wait_quiet()
                m = train_fm(a, ds, coupling, seed, root / f"fm_{coupling}")
                for nfe in NFES:
                    w2[name].setdefault(str(nfe), []).append(wasserstein2(sample(m, x0, nfe), ref))
            wait_quiet()
            _, rf2, dist = rectified(a, ds, seed, root / "rf", rf_steps)
            for name, m in (("2-RF", rf2), ("2-RF + distill", dist)):
                for nfe in NFES:
                    w2[name].setdefault(str(nfe), []).append(wasserstein2(sample(m, x0, nfe), ref))
            for i, (name, v) in enumerate(zip(mf_names, variants)):
                wait_quiet()
                m = train_meanflow(a, ds, v, seed, root / f"mf{i}")
                for nfe in NFES[:3]:
                    w2[name].setdefault(str(nfe), []).append(wasserstein2(jumps(m, x0, nfe), ref))
                w2[name].setdefault("ODE 100", []).append(wasserstein2(sample(m, x0, 100), ref))
            print(f"  seed {seed}: " + "; ".join(f"{n} @1 {w2[n]['1'][-1]:.3f}" for n in w2), flush=True)

    def mean_sd(v: list[float] | None) -> str:
        if not v:
            return "-"
        return f"{statistics.mean(v):.4f} +- {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"

    cols = ["1", "2", "4", "100", "ODE 100"]
    rows = [[n] + [mean_sd(w2[n].get(c)) for c in cols] for n in w2]
    rows.append(["data vs data (floor)"] + [f"{floor:.4f}"] * len(cols))
    primary, fm, rf = mf_names[0], fm_names[0], "2-RF + distill"
    mean = statistics.mean
    ratio = mean(w2[primary]["1"]) / mean(w2[fm]["100"])
    wins = [m < d for m, d in zip(w2[primary]["1"], w2[rf]["1"])]
    bars = [[f"{primary} @ 1 NFE / {fm} @ 100 NFE (mean W2)", f"{ratio:.3f}", "<= 1.2",
             "PASS" if ratio <= 1.2 else "FAIL"],
            [f"{primary} @ 1 NFE vs {rf} @ 1 NFE (mean W2)", f"{mean(w2[primary]['1']):.4f} vs {mean(w2[rf]['1']):.4f}",
             "lower", "PASS" if mean(w2[primary]["1"]) < mean(w2[rf]["1"]) else "FAIL"],
            ["  the same, seeds where MeanFlow is lower (for the record)", f"{sum(wins)}/{len(wins)}", "-", "-"]]
    for other in fm_names[1:]:
        bars.append([f"  {primary} @ 1 NFE / {other} @ 100 NFE (for the record)",
                     f"{mean(w2[primary]['1']) / mean(w2[other]['100']):.3f}", "-", "-"])
    per_seed = [[n, c, " ".join(f"{x:.4f}" for x in w2[n][c])] for n in w2 for c in cols if c in w2[n]]
    text = "\n".join([
        f"8 gaussians -> moons; every method {a.steps} training steps in total; MLP {a.hidden}x{a.depth} (time dim "
        f"{a.time_dim}), batch {a.batch}, AdamW, cosine lr from {a.lr} (2-RF and distillation {a.lr_finetune}), "
        f"clip 1, no EMA. FM: CFM objective, Euler at NFE steps. 2-RF + distill: 1-RF {rf_steps[0]} steps, "
        f"{a.pairs} reflow pairs (Euler {a.teacher_steps}), 2-RF {rf_steps[1]} steps from 1-RF, distillation "
        f"{rf_steps[2]} steps at t = 0 from 2-RF (bench_fewstep.py's pipeline). MeanFlow: objective meanflow, MLP "
        f"with two_times (time features up to 20 rad), t and r the min and max of two draws of the time sampler "
        f"(logit_normal mean {a.time_mean}); NFE k = k jumps, 'ODE 100' = Euler 100 on u(z, t, t). Exact W2 on "
        f"{a.n_eval} points vs held-out moons; seeds {a.seeds}. No timings are reported.", "",
        "W2 (mean +- sd over seeds, lower is better; NFE columns):", "",
        table(["method"] + [f"NFE {c}" if c != "ODE 100" else c for c in cols], rows), "",
        table(["bar (issue 29)", "measured", "target", "result"], bars), "",
        "Per seed:", "", table(["method", "NFE", "W2 per seed"], per_seed)])
    print(text)
    payload = {"config": {k: v for k, v in vars(a).items() if not isinstance(v, Path)}, "rf_steps": rf_steps,
               "w2": w2, "floor": floor, "bars": {"ratio_1nfe_over_fm_100nfe": ratio, "beats_distill_per_seed": wins}}
    if not a.quick or a.out is not None:
        j, m = write_results(a.name, payload, text, a.out)
        print(f"wrote {j} and {m}")
    return payload


if __name__ == "__main__":
    main()
