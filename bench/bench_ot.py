"""Cost of minibatch OT couplings against batch size, alone and as a share of a training step.

For each batch size B: 8-gaussian x0 and moons x1 (2-D, as the toy recipe) on the chosen device;
time of ``coupling.pair(x0, x1)`` for fmkit's ``exact_ot`` (float64 squared distances on the
device; the assignment on the CPU — scipy below 256 rows, POT ``emd`` from 256 — so a GPU run pays
the copy both ways) and ``sinkhorn`` (on the device, epsilon 0.05 relative to the mean cost, <= 200
iterations), plus scipy's ``linear_sum_assignment`` and POT's ``emd`` network simplex alone on the
same cost matrix for reference (emd is what TorchCFM's exact OT uses); then
the time of a whole fmkit training step with each coupling (toy MLP 256 x 3, AdamW, clip 1) and
the coupling's share of it. The share shrinks as the model grows: for an image U-Net the model
step costs 100x more and exact OT at B=256 is noise; for the 2-D toy it dominates.

    python bench/bench_ot.py                   # CPU, B = 64 ... 1024 (sinkhorn to 2048)
    python bench/bench_ot.py --device cuda     # GPU session (exact OT still runs on the CPU)
    python bench/bench_ot.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import table, write_results  # noqa: E402
from fmkit import MLP  # noqa: E402
from fmkit.app.builtin.toy import ToyDataset, ToySource, eight_gaussians, moons  # noqa: E402
from fmkit.flow.couplings import pairwise_cost  # noqa: E402


def clock(device: torch.device):
    """CPU time on the CPU (steady on a shared machine), synchronised wall time on a GPU."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.process_time


def time_it(fn, reps: int, now) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = now()
        fn()
        ts.append(now() - t0)
    return statistics.median(ts)


def step_time(coupling: fmkit.Coupling, batch: int, device: torch.device, steps: int, ds: ToyDataset, now) -> float:
    torch.manual_seed(0)
    opts = fmkit.TrainerOptions(steps=10**9, batch_size=batch, lr=1e-3, schedule="constant", warmup_steps=0,
                                grad_clip=1.0, ema_decay=None, progress=False, device=str(device),
                                checkpoint_every=10**9, precision="fp32")
    tr = fmkit.Trainer(MLP(2, 256, 3, 64), ds, source=ToySource("eight_gaussians"), coupling=coupling,
                       options=opts, run_dir=None)
    tr.fit(until=2)
    t0 = now()
    tr.fit(until=tr.step + steps)
    return (now() - t0) / steps


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--sinkhorn-batches", type=int, nargs="*", default=[2048],
                   help="extra sizes for sinkhorn/independent only (exact OT is O(B^3))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="training steps timed per configuration")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CI size: B = 64, 128; 2 reps, 3 steps")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="results file stem (default ot_<device type>)")
    a = p.parse_args(argv)
    if a.quick:
        a.batches, a.sinkhorn_batches, a.reps, a.steps = [64, 128], [], 2, 3
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    name = a.name or f"ot_{device.type}" + ("_quick" if a.quick else "")
    now = clock(device)
    try:
        import ot as pot
    except ImportError:
        pot = None
    ds = ToyDataset("moons", n=100_000, seed=0)
    exact, sink = fmkit.ExactOTCoupling(), fmkit.SinkhornCoupling(epsilon=0.05)
    rows, res = [], []
    for b in sorted(set(a.batches) | set(a.sinkhorn_batches)):
        with_exact = b in a.batches
        g = torch.Generator().manual_seed(b)
        x0 = {"x": eight_gaussians(b, g)[0].to(device)}
        x1 = {"x": moons(b, g)[0].to(device)}
        r: dict[str, float | int | None] = {"batch": b}
        r["exact_s"] = time_it(lambda: exact.pair(x0, x1), a.reps, now) if with_exact else None
        r["sinkhorn_s"] = time_it(lambda: sink.pair(x0, x1), a.reps, now)
        r["scipy_lsa_s"] = r["pot_emd_s"] = None
        if with_exact:  # the two solvers alone on fmkit's cost matrix
            c = pairwise_cost(x0, x1).cpu().numpy()
            r["scipy_lsa_s"] = time_it(lambda: linear_sum_assignment(c), a.reps, now)
            if pot is not None:
                u = np.full(b, 1.0 / b)
                r["pot_emd_s"] = time_it(lambda: pot.emd(u, u, c), a.reps, now)
        r["step_independent_s"] = step_time(fmkit.IndependentCoupling(), b, device, a.steps, ds, now)
        r["step_exact_s"] = step_time(exact, b, device, max(2, a.steps // 2), ds, now) if with_exact else None
        r["step_sinkhorn_s"] = step_time(sink, b, device, a.steps, ds, now)
        r["exact_share"] = r["exact_s"] / r["step_exact_s"] if with_exact else None
        r["sinkhorn_share"] = r["sinkhorn_s"] / r["step_sinkhorn_s"]
        res.append(r)
        ms = lambda v: "-" if v is None else f"{v * 1e3:.2f}"  # noqa: E731
        pct = lambda v: "-" if v is None else f"{100 * min(v, 1.0):.0f}%"  # noqa: E731
        rows.append([b, ms(r["exact_s"]), ms(r["scipy_lsa_s"]), ms(r["pot_emd_s"]), ms(r["sinkhorn_s"]),
                     ms(r["step_independent_s"]),
                     ms(r["step_exact_s"]), pct(r["exact_share"]), ms(r["step_sinkhorn_s"]), pct(r["sinkhorn_share"])])
        print(f"  B={b} done", flush=True)
    text = "\n".join([
        f"device {device}; {'CPU time' if device.type == 'cpu' else 'synchronised wall time'}, median of {a.reps} "
        f"(couplings) / mean over {a.steps} steps (training); toy MLP 256x3; milliseconds.", "",
        table(["batch", "exact_ot (ms)", "scipy LSA (ms)", "POT emd (ms)", "sinkhorn (ms)", "step, independent",
               "step, exact_ot",
               "exact share", "step, sinkhorn", "sinkhorn share"], rows)])
    print(text)
    if not a.quick or a.out is not None:
        j, m = write_results(name, {"config": {k: v for k, v in vars(a).items() if not isinstance(v, Path)},
                                    "results": res}, text, a.out)
        print(f"wrote {j} and {m}")
    return {"results": res}


if __name__ == "__main__":
    main()
