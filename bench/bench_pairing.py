"""Equivariant OT for molecules: its CPU cost per batch, and training throughput with the pairing
inside the step vs in the data pipeline (``trainer.pairing``).

1. ``EquivariantOTCoupling.pair`` on one batch of B same-size molecules (iters 2, groups of <= 64,
   so 64^2 candidate alignments per group; the QM9 recipe now uses iters 1, part 3), CPU time on one thread, for
   the rotation-invariant start by sorting radii (fmkit) and by a Hungarian solve per pair (the
   earlier form; same optimum, tested) — their ratio is measured in the same run.
2. Training steps/s of the molecule recipe's pipeline (e3nn model, discrete atom path, CoM-free
   source, equivariant OT) with a tiny network, so the step is mostly pairing as it would be next
   to a GPU's fast network: ``pairing=step`` vs ``pairing=loader`` in the main process vs
   ``pairing=loader`` with W DataLoader workers; rounds interleaved, ratios against ``step``.

3. The coupling's settings (``iters``, ``max_group``) on real QM9 training batches when
   ``$FMKIT_DATA_DIR/qm9`` holds them (else the synthetic molecules): mean aligned cost per molecule
   (A^2; the quantity the coupling minimises, so lower means straighter paths) against CPU time
   per batch; the independent pairing's cost for reference.

Molecules in 1 and 2 are synthetic with QM9's sizes (atom counts ~ N(18, 3), 3..29; geometry does not change
the cost). Run:

    python bench/bench_pairing.py              # results/pairing_cpu.{json,md}
    python bench/bench_pairing.py --quick
    FMKIT_DATA_DIR=../shared/data python bench/bench_pairing.py --parts settings --name pairing_settings
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import synthetic_molecules, table, write_results  # noqa: E402


def pair_cost(a: argparse.Namespace) -> list[dict]:
    import fmkit_molecules.coupling as mod
    from fmkit_molecules.source import ComFreeGaussian

    torch.set_num_threads(1)
    sort_start = mod.align_pairs

    def hungarian_start(x0: torch.Tensor, x1: torch.Tensor, **kw):
        """The earlier start: with (all-equal) element types align_pairs solves the radial match by
        a Hungarian solve per pair instead of sorting."""
        same = torch.zeros(x0.shape[:2], dtype=torch.long)
        return sort_start(x0, x1, types0=same, types1=same, **kw)

    rows = []
    for n in a.sizes:
        g = torch.Generator().manual_seed(n)
        x1 = torch.randn(a.batch, n, 3, generator=g, dtype=torch.float64)
        x1 = x1 - x1.mean(1, keepdim=True)
        mask = torch.ones(a.batch, n, dtype=torch.bool)
        torch.manual_seed(n)
        s0, s1 = {"pos": ComFreeGaussian().sample(x1, mask)}, {"pos": x1, "mask": mask}
        couplings = {"sort": mod.EquivariantOTCoupling(iters=2, max_group=64),
                     "hungarian": mod.EquivariantOTCoupling(iters=2, max_group=64)}
        ts: dict[str, list[float]] = {"sort": [], "hungarian": []}
        for r in range(a.reps + 1):
            for name in (("sort", "hungarian") if r % 2 == 0 else ("hungarian", "sort")):
                mod.align_pairs = hungarian_start if name == "hungarian" else sort_start
                try:
                    t0 = time.process_time()
                    couplings[name].pair(s0, s1)
                    dt = time.process_time() - t0
                finally:
                    mod.align_pairs = sort_start
                if r:  # the first round warms up
                    ts[name].append(dt)
        c_sort, c_hung = couplings["sort"].last_cost, couplings["hungarian"].last_cost
        assert abs(c_sort - c_hung) <= 1e-6 * c_hung, f"the two starts disagree: {c_sort} vs {c_hung}"
        s, h = statistics.median(ts["sort"]), statistics.median(ts["hungarian"])
        rows.append({"atoms": n, "batch": a.batch, "sort_ms": s * 1e3, "hungarian_ms": h * 1e3, "speedup": h / s,
                     "alignments": a.batch * min(a.batch, 64)})
    return rows


def throughput(a: argparse.Namespace) -> list[dict]:
    from fmkit_molecules.coupling import EquivariantOTCoupling
    from fmkit_molecules.data import from_records
    from fmkit_molecules.models.e3nn_flow import E3nnFlow
    from fmkit_molecules.source import ComFreeGaussian

    ds = from_records(synthetic_molecules(a.molecules), atom_encoding="categorical")
    from fmkit.engine.stream import usable_cores

    workers = a.workers or usable_cores()
    variants = {"step": ("step", 0), "loader, main process": ("loader", 0), f"loader, {workers} workers": ("loader", workers)}
    path = fmkit.StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()), {"atoms": fmkit.DiscretePath("mask")})
    source = fmkit.StateSource(ComFreeGaussian(), {"atoms": fmkit.CategoricalSource(ds.num_classes, "mask")})

    def rate(pairing: str, nw: int) -> float:
        """steps/s in steady state: a fresh trainer (its workers start now, so none prefetched while
        another variant ran), warm-up steps that also drain the prefetch queue, then timed steps."""
        torch.manual_seed(0)
        opts = fmkit.TrainerOptions(steps=10**9, batch_size=a.batch, lr=5e-4, schedule="constant", progress=False,
                                    device="cpu", cpu_threads=1, checkpoint_every=10**9, log_every=10**6,
                                    num_workers=nw, pairing=pairing, loss_weights={"pos": 1.0, "atoms": 0.5})
        model = E3nnFlow(scalars=8, vectors=2, layers=1, num_basis=4, radial_hidden=8, data_info=ds.info)
        tr = fmkit.Trainer(model, ds, path=path, source=source, coupling=EquivariantOTCoupling(iters=2, max_group=64),
                           options=opts)
        tr.fit(until=2 + 4 * nw)  # the consumer outpaces the workers: the queue drains to <= 1 batch each
        t0 = time.perf_counter()
        tr.fit(until=tr.step + a.steps)
        dt = time.perf_counter() - t0
        tr.stream.close()
        return a.steps / dt

    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        order = list(variants)[r % 3:] + list(variants)[: r % 3]
        for name in order:
            rates[name].append(rate(*variants[name]))
    base = rates["step"]
    rows = []
    for name in variants:
        ratios = sorted(x / b for x, b in zip(rates[name], base, strict=True))
        rows.append({"variant": name, "steps_per_s": statistics.median(rates[name]),
                     "ratio_vs_step": statistics.median(ratios), "ratio_q1": ratios[len(ratios) // 4],
                     "ratio_q3": ratios[(3 * len(ratios)) // 4], "workers": variants[name][1]})
    return rows


SETTINGS = [(2, 64), (1, 64), (2, 32), (1, 32), (0, 64)]  # (iters, max_group); iters 0 = the radial match alone


def settings(a: argparse.Namespace) -> dict:
    from fmkit_molecules.coupling import EquivariantOTCoupling
    from fmkit_molecules.data import build_qm9, from_records
    from fmkit_molecules.source import ComFreeGaussian

    torch.set_num_threads(1)
    try:
        ds, data = build_qm9("train"), "QM9 training split"
    except Exception as exc:  # noqa: BLE001 - no QM9 here: the synthetic molecules
        print(f"[settings] no QM9 ({type(exc).__name__}); synthetic molecules")
        ds, data = from_records(synthetic_molecules(a.molecules), atom_encoding="categorical"), "synthetic QM9-sized molecules"
    batches = ds.batches(0, a.batch, 0)[: a.settings_batches]
    pairs, indep = [], []
    for i, b in enumerate(batches):
        x1 = ds.collate([ds[j] for j in b])
        torch.manual_seed(i)
        x0 = {"pos": ComFreeGaussian().sample(x1["pos"], x1["mask"])}
        pairs.append((x0, {"pos": x1["pos"], "mask": x1["mask"]}))
        indep.append(float(((x0["pos"] - x1["pos"]) ** 2).sum()) / len(b))
    rows = []
    for iters, group in SETTINGS:
        c = EquivariantOTCoupling(iters=iters, max_group=group)
        costs, ts = [], []
        for x0, x1 in pairs:
            t0 = time.process_time()
            c.pair(x0, x1)
            ts.append(time.process_time() - t0)
            costs.append(c.last_cost / x1["pos"].shape[0])
        rows.append({"iters": iters, "max_group": group, "cost_per_molecule": float(np.mean(costs)),
                     "cpu_ms_per_batch": statistics.median(ts) * 1e3})
    return {"data": data, "batches": len(pairs), "batch": a.batch, "independent_cost_per_molecule": float(np.mean(indep)),
            "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[9, 18, 27])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--molecules", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=None, help="default: every visible core")
    p.add_argument("--steps", type=int, default=30,
                   help="timed steps per round and variant (the <= 1 batch per worker ready when timing starts "
                        "is a bias of <= workers/steps)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", nargs="+", default=["cost", "throughput", "settings"],
                   choices=["cost", "throughput", "settings"])
    p.add_argument("--settings-batches", type=int, default=6, help="batches per setting in part 3")
    p.add_argument("--quick", action="store_true", help="CI size: batch 32, 2 rounds")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.sizes, a.reps, a.molecules, a.steps, a.rounds = 32, [9], 2, 512, 3, 2
        a.settings_batches = 1
    threads = torch.get_num_threads()
    try:
        cost = pair_cost(a) if "cost" in a.parts else []
        thr = throughput(a) if "throughput" in a.parts else []
        sets = settings(a) if "settings" in a.parts else None
        return report(a, cost, thr, sets)  # while torch runs one thread, which the results record
    finally:
        torch.set_num_threads(threads)


def report(a: argparse.Namespace, cost: list[dict], thr: list[dict], sets: dict | None) -> dict:
    md = []
    if cost:
        md += ["### Equivariant OT, one batch, CPU time on one thread",
               table(["atoms", "batch", "sorted-radii start (ms)", "Hungarian start (ms)", "speedup"],
                     [[r["atoms"], r["batch"], f"{r['sort_ms']:.0f}", f"{r['hungarian_ms']:.0f}",
                       f"{r['speedup']:.2f}x"] for r in cost]), ""]
    if thr:
        md += [f"### Training steps/s, tiny e3nn model, batch {a.batch}, QM9-sized molecules "
               f"({a.rounds} rounds x {a.steps} steps, paired medians [quartiles])",
               table(["pairing", "steps/s", "vs step"],
                     [[r["variant"], f"{r['steps_per_s']:.2f}",
                       f"{r['ratio_vs_step']:.2f}x [{r['ratio_q1']:.2f}, {r['ratio_q3']:.2f}]"] for r in thr]), ""]
    if sets:
        md += [f"### Coupling settings: {sets['data']}, {sets['batches']} batches of {sets['batch']}, "
               f"CPU time on one thread (median); independent pairing: "
               f"{sets['independent_cost_per_molecule']:.1f} A^2 per molecule",
               table(["iters", "max_group", "aligned cost per molecule (A^2)", "CPU ms per batch"],
                     [[r["iters"], r["max_group"], f"{r['cost_per_molecule']:.2f}", f"{r['cpu_ms_per_batch']:.0f}"]
                      for r in sets["rows"]])]
    text = "\n".join(md)
    print(text)
    stem = a.name or ("pairing_cpu_quick" if a.quick else "pairing_cpu")
    out = {"pair_cost": cost, "throughput": thr, "settings": sets}
    write_results(stem, out | {"args": vars(a) | {"out": str(a.out)}}, text, a.out)
    return out


if __name__ == "__main__":
    main()
