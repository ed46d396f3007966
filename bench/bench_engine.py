"""Training throughput of the fmkit engine against a bare PyTorch loop and two peer libraries.

Every engine trains the same velocity model (``fmkit.MLP``) on the same problem (8 gaussians
-> two moons, ``fmkit.app.builtin.toy``), same batch size, AdamW, one process, on the CPU or (``--device cuda``)
one GPU; they run in interleaved rounds, the order rotated every round (bare, fmkit, torchcfm,
flow_matching; fmkit, torchcfm, flow_matching, bare; ...) so that machine load and cache state hit
all of them alike. Per round
each engine trains ``--steps`` steps; the figures are medians over rounds, and every ratio is the
median of the per-round ratios (paired, same load).

Engines
  bare           a hand-written CFM loop doing exactly fmkit's math (below)
  fmkit          ``fmkit.Trainer`` used as a library (ToyDataset, ToySource, run_dir=None)
  torchcfm       TorchCFM ``ConditionalFlowMatcher`` / ``ExactOptimalTransportConditionalFlowMatcher``
  flow_matching  Meta ``flow_matching`` ``AffineProbPath(CondOTScheduler())`` (independent only:
                 the library has no minibatch-OT coupling)
  fmkit_fast     ``fmkit.Trainer`` with its speed options on: bf16 autocast (``precision: bf16``) and
                 ``torch.compile`` of the model (``compile: true``); in the default set on CUDA only, where
                 the issue's target (>= 1.5x the peers' usual loops) applies

What is matched: model and init seed, data (the same 100k moons points, a fresh permutation per
epoch), source (8 gaussians, radius 5, std 0.5), t ~ U(0, 1), x_t = t x1 + (1 - t) x0,
target x1 - x0, MSE, AdamW (lr 1e-3, betas 0.9/0.999, no weight decay), gradient clipping at
norm 1.0 in every loop (fmkit's default; ``--no-clip`` turns it off everywhere), constant lr, no
EMA (fmkit's is switched off: ``ema_decay=None``). fmkit keeps its per-step lr update and
NaN/Inf check and logs every 50 steps (in memory; ``run_dir=None``), as a library user gets it.
Optimizer implementation: fmkit's Trainer uses torch's fused AdamW kernel (CPU and CUDA); the bare
loop uses the same kernel, so bare vs fmkit measures the engine's overhead alone. The peers' loops
use torch's default AdamW, as their examples do (``--peer-fused`` gives them the fused kernel too).
Exact OT: bare and fmkit pair by ``fmkit.flow.couplings.assignment`` on the float64 squared-distance
matrix (scipy's assignment below 256 rows, POT ``emd`` from 256); TorchCFM solves the plan with
POT ``emd`` and samples pairs from it with replacement (its own method; it is what a TorchCFM
user gets).

    python bench/bench_engine.py            # full run, writes bench/results/engine.{json,md}
    python bench/bench_engine.py --quick    # CI size
    python bench/bench_engine.py --profile fmkit   # cProfile of one engine instead
    python bench/bench_engine.py --device cuda --name engine_cuda   # GPU: wall-clock ratios

On CUDA every loop keeps the data and noise where its usual loop does (the hand-written loops and the
peers draw batches and noise on the host and copy them, as TorchCFM's and flow_matching's examples do;
fmkit's Trainer does what it does for any in-memory dataset), the exact-OT solves run on the host in
every engine, each engine's round ends with ``torch.cuda.synchronize()``, and the ratios are taken
from wall time (the process's CPU time does not measure GPU work).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import Batches, median, table, timed2, write_results  # noqa: E402
from fmkit import MLP  # noqa: E402
from fmkit.app.builtin.toy import ToyDataset, ToySource, eight_gaussians  # noqa: E402
from fmkit.flow.couplings import assignment  # noqa: E402

SEED = 0


def make_model(a: argparse.Namespace) -> MLP:
    torch.manual_seed(SEED)
    return MLP(2, hidden=a.hidden, depth=a.depth, time_dim=a.time_dim).to(a.device)


def sync(a: argparse.Namespace) -> None:
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def make_opt(model: torch.nn.Module, a: argparse.Namespace, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.999), weight_decay=0.0,
                             fused=True if fused else None)


def assignment_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """x0 re-ordered so that x0[j] is x1[j]'s partner under exact OT (fmkit's assignment solver)."""
    cost = torch.cdist(x0.double(), x1.double()).pow(2)
    return x0[torch.as_tensor(assignment(cost.cpu().numpy()), device=x0.device)]


class Loop:
    """A hand-written training loop; ``pair_and_path`` is what differs between engines."""

    name = "loop"
    fused = False  # the usual loop: torch's default AdamW implementation

    def __init__(self, a: argparse.Namespace, data: torch.Tensor, ot: bool) -> None:
        self.a, self.ot = a, ot
        self.model = make_model(a)
        self.opt = make_opt(self.model, a, self.fused or a.peer_fused)
        self.params = list(self.model.parameters())
        self.batches = Batches(data, a.batch, seed=SEED)
        self.g = torch.Generator().manual_seed(SEED + 1)
        self.clip = a.clip

    def pair_and_path(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def run(self, steps: int) -> None:
        model, opt, params, clip, dev = self.model, self.opt, self.params, self.clip, self.a.device
        for _ in range(steps):
            x1 = next(self.batches).to(dev, non_blocking=True)
            x0, _ = eight_gaussians(x1.shape[0], self.g)
            x0 = x0.to(dev, non_blocking=True)
            t, x_t, u_t = self.pair_and_path(x0, x1)
            v = model({"x": x_t}, t)["x"]
            loss = (v - u_t).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        sync(self.a)


class Bare(Loop):
    name = "bare"
    fused = True  # the AdamW kernel fmkit's Trainer picks: the ratio is the engine's overhead alone

    def pair_and_path(self, x0, x1):
        if self.ot:
            x0 = assignment_pairing(x0, x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        tt = t[:, None]
        return t, tt * x1 + (1 - tt) * x0, x1 - x0


class TorchCFM(Loop):
    name = "torchcfm"

    def __init__(self, a, data, ot):
        super().__init__(a, data, ot)
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
        )

        self.fm = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0) if ot else ConditionalFlowMatcher(sigma=0.0)

    def pair_and_path(self, x0, x1):
        return self.fm.sample_location_and_conditional_flow(x0, x1)


class FlowMatching(Loop):
    name = "flow_matching"

    def __init__(self, a, data, ot):
        if ot:
            raise ValueError("flow_matching has no minibatch OT coupling")
        super().__init__(a, data, ot)
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        self.path = AffineProbPath(scheduler=CondOTScheduler())

    def pair_and_path(self, x0, x1):
        t = torch.rand(x1.shape[0], device=x1.device)
        ps = self.path.sample(t=t, x_0=x0, x_1=x1)
        return ps.t, ps.x_t, ps.dx_t


class Fmkit:
    """``fmkit.Trainer`` as a library user writes it; rounds continue the same run with ``fit(until=)``."""

    name = "fmkit"
    fast = False  # fmkit_fast: bf16 autocast + torch.compile

    def __init__(self, a: argparse.Namespace, dataset: ToyDataset, ot: bool) -> None:
        self.a = a
        opts = fmkit.TrainerOptions(
            steps=10**9, batch_size=a.batch, lr=a.lr, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0,
            schedule="constant", grad_clip=a.clip or None, ema_decay=None, progress=False, device=a.device,
            precision="bf16" if self.fast else "fp32", compile=self.fast, checkpoint_every=10**9)
        self.trainer = fmkit.Trainer(make_model(a), dataset, source=ToySource("eight_gaussians"),
                                     coupling=fmkit.ExactOTCoupling() if ot else fmkit.IndependentCoupling(),
                                     options=opts, run_dir=None, seed=SEED)

    def run(self, steps: int) -> None:
        self.trainer.fit(until=self.trainer.step + steps)
        sync(self.a)


class FmkitFast(Fmkit):
    name = "fmkit_fast"
    fast = True


ENGINES = {"bare": Bare, "fmkit": Fmkit, "torchcfm": TorchCFM, "flow_matching": FlowMatching,
           "fmkit_fast": FmkitFast}
CPU_DEFAULT = ["bare", "fmkit", "torchcfm", "flow_matching"]  # compile + CPU bf16 would only slow a CPU run


def build(name: str, a: argparse.Namespace, dataset: ToyDataset, ot: bool):
    if name in ("fmkit", "fmkit_fast"):
        return ENGINES[name](a, dataset, ot)
    return ENGINES[name](a, dataset.x, ot)


def available(names: list[str]) -> list[str]:
    out = []
    for n in names:
        mod = {"torchcfm": "torchcfm", "flow_matching": "flow_matching"}.get(n)
        if mod is not None:
            try:
                __import__(mod)
            except ImportError:
                print(f"[skip] {n}: not installed (pip install -e '.[bench]')")
                continue
        out.append(n)
    return out


def bench_coupling(a: argparse.Namespace, dataset: ToyDataset, coupling: str) -> dict:
    ot = coupling == "exact_ot"
    names = [n for n in available(a.engines) if not (ot and n == "flow_matching")]
    engines = {n: build(n, a, dataset, ot) for n in names}
    for e in engines.values():  # warm-up: allocator, autograd graph caches, first epoch's permutation
        e.run(a.warmup)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        k = r % len(names)  # rotate the order each round: no engine always runs first or after another
        for n in names[k:] + names[:k]:
            e = engines[n]
            w, c = timed2(lambda e=e: e.run(a.steps))
            wall[n].append(w)
            cpu[n].append(c)
        if not a.quiet:
            print(f"  [{coupling}] round {r + 1}/{a.rounds} (steps/s by CPU time): " +
                  ", ".join(f"{n} {a.steps / cpu[n][-1]:.0f}" for n in names), flush=True)

    def summary(times: dict[str, list[float]]) -> dict:
        sps = {n: a.steps / median(ts) for n, ts in times.items()}
        q = {n: _quartiles([a.steps / t for t in ts]) for n, ts in times.items()}
        out = {"steps_per_s": sps, "steps_per_s_quartiles": q, "round_seconds": times}
        for ref in ("fmkit", "fmkit_fast"):
            # paired: speed of ref / speed of X within the same round (same load), median over rounds
            per_round = {n: [times[n][i] / times[ref][i] for i in range(a.rounds)] for n in names if n != ref} \
                if ref in names else {}
            out[f"{ref}_speed_ratio_vs"] = {n: median(r) for n, r in per_round.items()}
            out[f"{ref}_speed_ratio_quartiles"] = {n: _quartiles(r) for n, r in per_round.items()}
        return out

    return {"coupling": coupling, "engines": names, "cpu_time": summary(cpu), "wall_time": summary(wall)}


def _quartiles(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    return s[len(s) // 4], s[(3 * len(s)) // 4]


def profile(a: argparse.Namespace, dataset: ToyDataset) -> None:
    ot = a.couplings[0] == "exact_ot"
    e = build(a.profile, a, dataset, ot)
    e.run(a.warmup)
    pr = cProfile.Profile()
    pr.enable()
    e.run(a.steps)
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--time-dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-clip", dest="clip", action="store_const", const=0.0, default=1.0,
                   help="no gradient clipping in any engine")
    p.add_argument("--steps", type=int, default=50, help="steps per engine per round")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = steadier on a shared machine)")
    p.add_argument("--engines", nargs="+", default=None, choices=list(ENGINES),
                   help=f"default: {' '.join(CPU_DEFAULT)} (+ fmkit_fast on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: one GPU, wall-clock ratios")
    p.add_argument("--couplings", nargs="+", default=["independent", "exact_ot"], choices=["independent", "exact_ot"])
    p.add_argument("--peer-fused", action="store_true",
                   help="give TorchCFM and flow_matching loops the fused AdamW kernel too (default: torch's "
                        "default AdamW, as their examples use)")
    p.add_argument("--quick", action="store_true", help="CI size: 3 rounds of 30 steps")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    p.add_argument("--profile", choices=list(ENGINES), help="cProfile one engine (first coupling) and exit")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--name", default="engine", help="results file stem")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.rounds, a.warmup = 30, 3, 5
        a.name = a.name if a.name != "engine" else "engine_quick"
    if a.engines is None:
        a.engines = CPU_DEFAULT + (["fmkit_fast"] if a.device.startswith("cuda") else [])
    torch.set_num_threads(a.threads)
    dataset = ToyDataset("moons", n=100_000, seed=SEED)
    if a.profile:
        profile(a, dataset)
        return {}

    res: list[dict] = []
    for c in a.couplings:  # results written after each coupling: a run cut short keeps the finished ones
        res.append(bench_coupling(a, dataset, c))
        text = render(a, res, final=len(res) == len(a.couplings))
        if not a.quick or a.out is not None:
            j, m = write_results(a.name, {"config": {k: v for k, v in vars(a).items() if k != "out" and
                                                     not isinstance(v, Path)}, "results": res,
                                          "complete": len(res) == len(a.couplings)}, text, a.out)
    print(text)
    if not a.quick or a.out is not None:
        print(f"wrote {j} and {m}")
    return {"results": res}


def render(a: argparse.Namespace, res: list[dict], final: bool) -> str:
    """The markdown tables of the couplings measured so far."""
    cuda = a.device.startswith("cuda")
    where = f"device {a.device} ({torch.cuda.get_device_name(0)})" if cuda else f"CPU, {a.threads} torch thread(s)"
    md = [f"Config: batch {a.batch}, MLP hidden {a.hidden} x depth {a.depth} (time_dim {a.time_dim}), "
          f"AdamW lr {a.lr} (fmkit and bare: fused kernel; peers: "
          f"{'fused kernel' if a.peer_fused else 'torch default implementation'}), "
          f"clip {a.clip or 'off'}, {a.rounds} interleaved rounds x {a.steps} steps per engine "
          f"(+{a.warmup} warm-up), {where}; fmkit fp32 eager, fmkit_fast bf16 autocast + torch.compile.",
          ("Speeds from wall time (each round ends with torch.cuda.synchronize()); the CPU-time table only "
           "counts host work." if cuda else
           "Speeds from CPU time of the process (steady on a shared machine); wall-clock figures are in the JSON.")
          + " Ratios are medians of per-round paired ratios, [quartiles]."
          + ("" if final else " PARTIAL: the run had not finished when this was written."), ""]
    refs = [ref for ref in ("fmkit", "fmkit_fast") if ref in res[0]["engines"]] if res else []
    for r in res:
        names = r["engines"]
        for clock in (("wall_time", "cpu_time") if cuda else ("cpu_time", "wall_time")):
            c = r[clock]
            bare = c["steps_per_s"].get("bare")
            rows = []
            for n in names:
                lo, hi = c["steps_per_s_quartiles"][n]
                ratios = []
                for ref in refs:
                    if n in c[f"{ref}_speed_ratio_vs"]:
                        rlo, rhi = c[f"{ref}_speed_ratio_quartiles"][n]
                        ratios.append(f"{c[f'{ref}_speed_ratio_vs'][n]:.3f} [{rlo:.3f}, {rhi:.3f}]")
                    else:
                        ratios.append("-")
                rows.append([n, f"{c['steps_per_s'][n]:.1f}", f"{lo:.1f}-{hi:.1f}",
                             f"{c['steps_per_s'][n] / bare:.3f}" if bare else "-", *ratios])
            md += [f"### coupling: {r['coupling']} ({clock.replace('_', ' ')})", "",
                   table(["engine", "steps/s (median)", "quartiles", "speed / bare"] +
                         [f"{ref} speed / this engine (paired)" for ref in refs], rows), ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
