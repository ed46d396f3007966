"""GPU throughput of the fmkit Trainer: steps/s, samples/s, GPU busy fraction, peak memory, for
fp32 / bf16 autocast and with / without torch.compile.

Workloads
  mlp        the toy MLP (8 gaussians -> moons), batch sizes --mlp-batches, independent coupling
             (--mlp-coupling exact_ot: then the host's assignment, not the GPU, sets the pace at B=4096)
  molecules  fmkit-molecules' E(3) model (e3nn_flow, the sizes of recipes/molecules_qm9.yaml) on
             synthetic QM9-sized molecules (~N(18, 3) atoms of H,C,N,O,F; geometry irrelevant to speed),
             with the recipe's path (condot + discrete mask path for atoms), source and coupling;
             skipped when fmkit_molecules (or e3nn) does not import
  egnn       the same molecules, path, source and coupling with the EGNN baseline (its registry
             defaults: hidden 128, 6 layers)

Per variant: ``fit(until=)`` for --steps steps after --warmup steps (compile variants warm up until
--compile-settle steps in a row built no new graph: molecule batches change size, and each new size
class can recompile; "graphs built while timed" > 0 says a compile still fell inside the timing);
  steps/s     optimizer steps per second of the whole engine (data, coupling, path, model, optimizer)
  samples/s   steps/s x global batch
  busy        model fwd+bwd alone (fixed batch, same precision/compile) / whole step: the share of
              the step spent in the network; the rest is data, coupling, python overhead
  kernel      (CUDA, with --kernel-profile) summed CUDA kernel time / wall time over a few steps
  peak MiB    torch.cuda.max_memory_allocated during the timed steps
  warm-up s   wall time before the timed steps (for compile variants: compiling, to the last new graph)

    python bench/bench_gpu.py                    # on a GPU machine: everything
    python bench/bench_gpu.py --dry-run          # CPU, tiny sizes, 3 steps: checks the script runs
    python bench/bench_gpu.py --workloads mlp --mlp-batches 256 4096 --no-compile
    python bench/bench_gpu.py --budget 420       # start no variant that would end after 420 s

Variants run breadth first (every workload fp32 eager, then bf16, then bf16 + compile, then fp32 +
compile) and the result files are rewritten after each, so a run cut short keeps the most wanted.

No GPU figures exist yet; see bench/README.md.
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
from _common import synthetic_molecules, table, write_results  # noqa: E402
from fmkit.engine.stopping import TrainingInterrupted  # noqa: E402
from fmkit.flow.state import fields  # noqa: E402


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ------------------------------------------------------------------------------------------------
# workloads: (model, dataset, trainer keyword arguments)
# ------------------------------------------------------------------------------------------------
def mlp_workload(a: argparse.Namespace):
    from fmkit import MLP
    from fmkit.app.builtin.toy import ToyDataset, ToySource

    ds = ToyDataset("moons", n=200_000 if not a.dry_run else 4096, seed=0)
    hidden = 8 if a.dry_run else a.mlp_hidden
    return (lambda: MLP(2, hidden=hidden, depth=3, time_dim=16 if a.dry_run else 64)), ds, \
        {"source": ToySource("eight_gaussians"), "coupling": fmkit.ExactOTCoupling() if a.mlp_coupling == "exact_ot"
         else fmkit.IndependentCoupling()}


def molecules_workload(a: argparse.Namespace, model: str = "e3nn_flow"):
    from fmkit_molecules.coupling import EquivariantOTCoupling
    from fmkit_molecules.data import from_records
    from fmkit_molecules.models.e3nn_flow import E3nnFlow
    from fmkit_molecules.models.egnn import EGNN
    from fmkit_molecules.source import ComFreeGaussian

    ds = from_records(synthetic_molecules(512 if a.dry_run else 20_000), atom_encoding="categorical")
    size = dict(scalars=8, vectors=2, lmax=1, layers=1, num_basis=4, radial_hidden=8) if a.dry_run else \
        dict(scalars=128, vectors=32, lmax=2, layers=6, num_basis=20, radial_hidden=128)
    path = fmkit.StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()), {"atoms": fmkit.DiscretePath("mask")})
    source = fmkit.StateSource(ComFreeGaussian(), {"atoms": fmkit.CategoricalSource(ds.num_classes, "mask")})
    coupling = EquivariantOTCoupling(iters=1, max_group=64) if a.mol_coupling == "equivariant_ot" \
        else fmkit.IndependentCoupling()
    if model == "egnn":
        egnn = dict(hidden=8, layers=1) if a.dry_run else dict(hidden=128, layers=6)
        return (lambda: EGNN(data_info=ds.info, **egnn)), ds, {"path": path, "source": source, "coupling": coupling}
    return (lambda: E3nnFlow(r_max=10.0, data_info=ds.info, **size)), ds, \
        {"path": path, "source": source, "coupling": coupling}


# the order variants run in, so that a run cut short (a device call's time limit, --budget) has the
# figures most wanted: every workload as its recipe trains it (fp32 eager), then bf16, then bf16 + compile
# (the fast configuration), then fp32 + compile
ORDER = [("fp32", False), ("bf16", False), ("bf16", True), ("fp32", True)]
# within a compile setting, cheapest compile first, so a budget that cannot hold the e3nn model's compile
# still gets the others' figures (cold CPU inductor compile at recipe sizes, to the last new graph: MLP 23 s,
# EGNN 81 s, e3nn_flow 195 s; bench/results/compile_cpu.md)
COMPILE_COST = ["mlp", "egnn", "molecules"]


# ------------------------------------------------------------------------------------------------
def model_only_step(tr: fmkit.Trainer, reps: int) -> float:
    """Seconds of the network's fwd + loss + bwd on one fixed batch (no data, coupling, optimizer)."""
    x0, batch = tr.next_batch()
    if x0 is None:  # paired inside the step (trainer.pairing): pair it here, outside the timing
        x0, x1 = tr.coupling.pair(tr.source.sample(batch), batch)
    else:
        x1 = batch
    b = next(iter(fields(x1).values())).shape[0]
    t = torch.rand(b, device=tr.device)
    ps = tr.path.sample(x0, x1, t)
    x_t = {k: v for k, v in ps.x_t.items() if k != "cond"}
    cond = x1.get("cond")

    def once() -> None:
        with torch.autocast(tr.device.type, dtype=torch.bfloat16, enabled=tr.autocast):
            pred = tr.train_model(x_t, t, cond)
        loss = sum(tr.path.losses(pred, ps, x1, reduce=True).values())  # the trainer's loss (unit weights)
        loss.backward()
        tr.optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        once()
    ts = []
    for _ in range(reps):
        t0 = now(tr.device)
        once()
        ts.append(now(tr.device) - t0)
    return statistics.median(ts)


def kernel_fraction(tr: fmkit.Trainer, steps: int) -> float | None:
    if tr.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    t0 = now(tr.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        tr.fit(until=tr.step + steps)
        torch.cuda.synchronize(tr.device)
    wall = now(tr.device) - t0
    busy_us = 0.0
    for e in prof.key_averages():
        if e.device_type is not None and str(e.device_type).endswith("CUDA"):
            busy_us += getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
    return busy_us * 1e-6 / wall


def compiled_graphs() -> int:
    """Graphs torch.compile has built so far in this process (dynamo's counter; 0 when unavailable)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return int(counters["stats"]["unique_graphs"])


def settle_compile(tr: fmkit.Trainer, quiet_steps: int, max_steps: int) -> int:
    """Train until ``quiet_steps`` steps in a row built no new graph (or ``max_steps`` more steps).

    Molecule batches change their atom count N from batch to batch: torch.compile recompiles on the
    first new N (then treats N as dynamic) and again whenever a size crosses a threshold one of its
    kernels was specialised on (e.g. N^2 <= 512 on CPU inductor), so a fixed short warm-up could leave
    recompiles, seconds each, inside the timed steps. Returns the steps taken."""
    start, quiet = tr.step, 0
    while quiet < quiet_steps and tr.step - start < max_steps:
        g = compiled_graphs()
        tr.fit(until=tr.step + 5)
        quiet = quiet + 5 if compiled_graphs() == g else 0
    return tr.step - start


def run_variant(a: argparse.Namespace, workload: str, batch: int, precision: str, compile_: bool) -> dict:
    make_model, ds, kw = mlp_workload(a) if workload == "mlp" else \
        molecules_workload(a, "egnn" if workload == "egnn" else "e3nn_flow")
    torch.manual_seed(0)
    opts = fmkit.TrainerOptions(steps=10**9, batch_size=batch, lr=1e-3, schedule="constant", warmup_steps=0,
                                grad_clip=1.0, ema_decay=0.999, progress=False, device=a.device, precision=precision,
                                compile=compile_, checkpoint_every=10**9, log_every=50, num_workers=a.num_workers,
                                loss_weights={"pos": 1.0, "atoms": 0.5} if workload != "mlp" else {})
    tr = fmkit.Trainer(make_model(), ds, options=opts, run_dir=None, **kw)
    dev = tr.device
    t0 = now(dev)
    tr.fit(until=a.warmup)
    if compile_:
        settle_compile(tr, quiet_steps=a.compile_settle, max_steps=10 * a.compile_settle)
    warm_s, warm_steps = now(dev) - t0, tr.step
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    graphs = compiled_graphs()
    t0 = now(dev)
    tr.fit(until=tr.step + a.steps)
    dt = now(dev) - t0
    recompiles = compiled_graphs() - graphs if compile_ else None  # > 0: a compile happened inside the timing
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    sps = a.steps / dt
    model_s = model_only_step(tr, reps=max(3, a.steps // 2))
    kern = None
    if a.kernel_profile:
        try:
            kern = kernel_fraction(tr, min(a.steps, 20))
        except Exception as exc:  # noqa: BLE001 - the profiler is optional; keep the variant's other figures
            print(f"  [kernel profile failed: {type(exc).__name__}: {exc}]")
    return {"workload": workload, "batch": batch, "precision": precision, "compile": compile_,
            "device": str(dev), "steps_per_s": sps, "samples_per_s": sps * batch,
            "busy_fraction": min(1.0, model_s * sps), "model_only_ms": model_s * 1e3,
            "kernel_busy_fraction": kern, "peak_mib": peak, "warmup_s": warm_s, "warmup_steps": warm_steps,
            "recompiles_timed": recompiles,
            "params": sum(p.numel() for p in tr.model.parameters())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--workloads", nargs="+", default=["mlp", "molecules", "egnn"],
                   choices=["mlp", "molecules", "egnn"])
    p.add_argument("--mlp-batches", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--mlp-hidden", type=int, default=256)
    p.add_argument("--mlp-coupling", default="independent", choices=["exact_ot", "independent"],
                   help="independent: the engine on the GPU; exact_ot adds the host assignment (seconds per "
                        "step at B=4096 on a CPU core), which then sets the pace (bench_ot.py measures OT)")
    p.add_argument("--mol-batches", type=int, nargs="+", default=[256])
    p.add_argument("--mol-coupling", default="equivariant_ot", choices=["equivariant_ot", "independent"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile-settle", type=int, default=20,
                   help="compile variants: after --warmup, train until this many steps in a row built no new "
                        "graph (at most 10x as many), so recompiles on new atom counts stay out of the timing")
    p.add_argument("--fresh-compile-cache", action="store_true",
                   help="compile into new, empty inductor/Triton cache folders, so 'warm-up s' is a cold compile "
                        "(a machine that compiled these graphs before otherwise loads them from its cache)")
    p.add_argument("--kernel-profile", action="store_true", help="also measure CUDA kernel time / wall (profiler)")
    p.add_argument("--dry-run", "--quick", dest="dry_run", action="store_true",
                   help="CPU-sized check: tiny models and batches, 3 steps, no compile")
    p.add_argument("--with-compile", action="store_true", help="keep the compile variants in --dry-run (slow)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=12,
                   help="DataLoader workers (capped at the visible cores); the molecules' equivariant OT runs in them")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds: start no variant that would not end within them (estimated by the longest "
                        "finished variant with the same compile flag); skipped ones are listed as such")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default=None, help="results file stem (default gpu_<device>)")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.fresh_compile_cache:  # inductor and Triton read these when they first touch their caches
        fresh = tempfile.mkdtemp(prefix="fmkit_compile_cache_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(fresh, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(fresh, "triton")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dry_run:
        a.mlp_batches, a.mol_batches, a.steps, a.warmup, a.num_workers = [64], [8], 3, 2, 0
        a.compile_settle = min(a.compile_settle, 5)
        a.no_compile = a.no_compile or not a.with_compile
    if a.device == "cpu" and not a.dry_run:
        print("note: no CUDA device; figures are CPU figures (bf16 here is CPU autocast, not a GPU figure)")
    work = []  # (workload, batch, precision, compile), most wanted first: see ORDER
    for w in a.workloads:
        if w in ("molecules", "egnn"):
            try:
                import fmkit_molecules.models.e3nn_flow  # noqa: F401
            except Exception as exc:  # noqa: BLE001 - any import problem means: skip
                print(f"[skip] {w}: fmkit_molecules does not import ({type(exc).__name__}: {exc})")
                continue
        for b in (a.mlp_batches if w == "mlp" else a.mol_batches):
            for prec in a.precisions:
                for comp in ([False] if a.no_compile else [False, True]):
                    work.append((w, b, prec, comp))
    # stable: eager settings keep the given workload order, compile settings go by COMPILE_COST; batches keep theirs
    work.sort(key=lambda v: (ORDER.index((v[2], v[3])), COMPILE_COST.index(v[0]) if v[3] else 0))
    res: list[dict] = []
    start = time.perf_counter()
    for w, b, prec, comp in work:
        key = {"workload": w, "batch": b, "precision": prec, "compile": comp}
        # a variant costs about what the longest finished one with the same compile flag cost
        est = max((r["wall_s"] for r in res if "wall_s" in r and r["compile"] == comp), default=0.0)
        if a.budget is not None and time.perf_counter() - start + est > a.budget:
            r = {**key, "error": f"skipped: would not finish within --budget {a.budget:g} s"}
        else:
            t0 = time.perf_counter()
            try:
                r = run_variant(a, w, b, prec, comp)
            except (TrainingInterrupted, KeyboardInterrupt):  # SIGINT/SIGTERM (Ctrl-C, a call's timeout): stop
                res.append({**key, "error": "interrupted (SIGINT/SIGTERM); no variant after it ran"})
                print(f"  {w} B={b} {prec} compile={comp}: interrupted; writing what was measured", flush=True)
                return report(a, res, interrupted=True)
            except Exception as exc:  # noqa: BLE001 - one failing variant (e.g. compile) must not lose the rest
                if a.dry_run:
                    raise
                r = {**key, "error": f"{type(exc).__name__}: {exc}"}
            r["wall_s"] = time.perf_counter() - t0
        res.append(r)
        print(f"  {w} B={b} {prec} compile={comp}: " + (r.get("error") or f"{r['steps_per_s']:.1f} steps/s")
              + (f" ({r['wall_s']:.0f} s)" if "wall_s" in r else ""), flush=True)
        if len(res) < len(work):
            report(a, res, final=False)  # a run cut short (a device call's time limit) keeps what it measured
    return report(a, res)


def report(a: argparse.Namespace, res: list[dict], final: bool = True, interrupted: bool = False) -> dict:
    complete = final and not interrupted
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    rows = [[r["workload"], r["batch"], r["precision"], "yes" if r["compile"] else "no"] +
            ([r["error"], "", "", "", "", "", "", ""] if "error" in r else
             [f(r["steps_per_s"], ".1f"), f(r["samples_per_s"], ",.0f"), f(r["busy_fraction"], ".0%"),
              f(r["kernel_busy_fraction"], ".0%"), f(r["peak_mib"], ",.0f"), f"{r['params']:,}",
              f(r.get("warmup_s"), ".0f"), f(r.get("recompiles_timed"), "d")]) for r in res]
    dev_name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "CPU"
    text = "\n".join([
        f"device {a.device} ({dev_name}); {a.steps} timed steps after {a.warmup} warm-up (compile variants: "
        f"and until {a.compile_settle} steps in a row built no new graph); EMA on, clip 1; "
        f"MLP coupling {a.mlp_coupling}, molecules coupling {a.mol_coupling}; {a.num_workers} DataLoader workers."
        + (" DRY RUN (tiny sizes): these numbers only show that the script works." if a.dry_run else "")
        + ("" if complete else " PARTIAL: the run had not finished when this was written."), "",
        table(["workload", "batch", "precision", "compile", "steps/s", "samples/s", "busy (model/step)",
               "kernel/wall", "peak MiB", "params", "warm-up s", "graphs built while timed"], rows)])
    if final:
        print(text)
    name = a.name or ("gpu_dry_run" if a.dry_run else f"gpu_{a.device.split(':')[0]}")
    if not a.dry_run or a.out is not None:
        j, m = write_results(name, {"config": {k: v for k, v in vars(a).items() if not isinstance(v, Path)},
                                    "results": res, "complete": complete}, text, a.out)
        if final:
            print(f"wrote {j} and {m}")
    return {"results": res}


if __name__ == "__main__":
    main()
