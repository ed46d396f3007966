"""Sample quality: fmkit OT-CFM vs TorchCFM OT-CFM on 8 gaussians -> two moons, exact W2.

Both train the same MLP (``fmkit.MLP``, same init per seed) on the same data (100k moons
points, fresh permutation per epoch) from the same source (8 gaussians, radius 5, std 0.5), with
equal steps, batch, AdamW lr and schedule (cosine to 0 by default, computed by fmkit's
``lr_factor`` for both), gradient clipping (norm 1) and no EMA. They differ only
in what each library does for a training pair:

  fmkit     ``fmkit.Trainer`` with ``ExactOTCoupling`` (the minibatch OT plan is a permutation:
            every source point is paired with exactly one data point) and the condot path
  torchcfm  ``ExactOptimalTransportConditionalFlowMatcher(sigma)`` (POT ``emd`` plan, pairs drawn
            from it with replacement); sigma=0 is the same path as fmkit's, and sigma=0.1 (the
            value of TorchCFM's own 2-D examples) is shown as well

Sampling is identical for all: the same 8-gaussian draws integrated by Euler with 100 steps
(NFE 100, fmkit's FixedStepSolver), W2 by ``fmkit.app.builtin.metrics.wasserstein2`` (exact assignment)
against the same held-out moons sample. The floor is W2 between two independent moons samples
of the same size (what a perfect model would score).

    python bench/bench_w2.py             # 5 seeds x 4000 steps, writes bench/results/w2.{json,md}
    python bench/bench_w2.py --quick     # CI size
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import Batches, table, write_results  # noqa: E402
from fmkit import MLP  # noqa: E402
from fmkit.app.builtin.metrics import wasserstein2  # noqa: E402
from fmkit.app.builtin.toy import ToyDataset, ToySource, eight_gaussians, moons  # noqa: E402
from fmkit.engine.optim import lr_factor  # noqa: E402
from fmkit.flow.paths import StatePath  # noqa: E402
from fmkit.flow.sampling import generate  # noqa: E402
from fmkit.flow.sources import StateSource  # noqa: E402


def make_model(a: argparse.Namespace, seed: int) -> MLP:
    torch.manual_seed(1000 + seed)
    return MLP(2, hidden=a.hidden, depth=a.depth, time_dim=a.time_dim)


def options(a: argparse.Namespace) -> fmkit.TrainerOptions:
    return fmkit.TrainerOptions(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup_steps=0, schedule=a.schedule,
                                min_lr_ratio=0.0, grad_clip=1.0, ema_decay=None, progress=False, device="cpu",
                                checkpoint_every=10**9)


def train_fmkit(a: argparse.Namespace, ds: ToyDataset, seed: int) -> torch.nn.Module:
    opts = options(a)
    tr = fmkit.Trainer(make_model(a, seed), ds, source=ToySource("eight_gaussians"),
                       coupling=fmkit.ExactOTCoupling(), options=opts, run_dir=None, seed=seed)
    return tr.fit().model


def train_torchcfm(a: argparse.Namespace, ds: ToyDataset, seed: int, sigma: float) -> torch.nn.Module:
    import numpy as np
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    torch.manual_seed(seed)
    np.random.seed(seed)  # TorchCFM's plan sampler draws with numpy's global RNG
    model = make_model(a, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    fm = ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    batches = Batches(ds.x, a.batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    params = list(model.parameters())
    opts = options(a)
    for step in range(a.steps):
        for group in opt.param_groups:  # the same schedule as fmkit's, by its own function
            group["lr"] = a.lr * lr_factor(step, opts)
        x1 = next(batches)
        x0, _ = eight_gaussians(a.batch, g)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = (model({"x": xt}, t)["x"] - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return model


@torch.no_grad()
def sample(model: torch.nn.Module, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """Euler from the given source points (the same for every model)."""
    model.eval()
    path = StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()))

    class Fixed(StateSource):  # hands generate() the shared source draw
        def __init__(self) -> None:
            super().__init__({})

        def sample(self, like):
            return {"x": x0.clone()}

    sol = generate(model, path, Fixed(), fmkit.FixedStepSolver("euler", steps), {"x": torch.zeros_like(x0)})
    assert sol.nfe == steps, sol.nfe
    return sol.x["x"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--time-dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="lr schedule of both (cosine to 0, fmkit's lr_factor; no warm-up)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-eval", type=int, default=2000, help="samples and reference points for W2")
    p.add_argument("--euler-steps", type=int, default=100)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1], help="TorchCFM sigma values")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CI size: 1 seed x 200 steps, 300 eval points")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default="w2")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.seeds, a.n_eval, a.sigmas = 200, [0], 300, [0.0]
        a.name = a.name if a.name != "w2" else "w2_quick"
    torch.set_num_threads(a.threads)
    try:
        import torchcfm  # noqa: F401
    except ImportError:
        print("[skip] torchcfm is not installed (pip install -e '.[bench]'): fmkit only")
        a.sigmas = []
    ds = ToyDataset("moons", n=100_000, seed=0)
    g = torch.Generator().manual_seed(12345)
    ref, _ = moons(a.n_eval, g)  # held out: generated apart from the training set
    ref2, _ = moons(a.n_eval, g)
    floor = wasserstein2(ref2, ref)
    names = ["fmkit"] + [f"torchcfm(sigma={s:g})" for s in a.sigmas]
    w2: dict[str, list[float]] = {n: [] for n in names}
    for seed in a.seeds:
        x0, _ = eight_gaussians(a.n_eval, torch.Generator().manual_seed(777 + seed))
        models = {"fmkit": train_fmkit(a, ds, seed)}
        for s in a.sigmas:
            models[f"torchcfm(sigma={s:g})"] = train_torchcfm(a, ds, seed, s)
        for n, m in models.items():
            w2[n].append(wasserstein2(sample(m, x0, a.euler_steps), ref))
        print(f"  seed {seed}: " + ", ".join(f"{n} {w2[n][-1]:.4f}" for n in names), flush=True)
    rows = []
    for n in names:
        v = w2[n]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        rows.append([n, f"{statistics.mean(v):.4f} +- {sd:.4f}", " ".join(f"{x:.4f}" for x in v)])
    rows.append(["data vs data (floor)", f"{floor:.4f}", "-"])
    text = "\n".join([
        f"8 gaussians -> moons, OT-CFM, {a.steps} steps x batch {a.batch}, MLP {a.hidden}x{a.depth}, AdamW lr {a.lr}, "
        f"{a.schedule} lr, clip 1, no EMA; Euler {a.euler_steps} steps (NFE {a.euler_steps}); "
        f"exact W2 on {a.n_eval} points; "
        f"seeds {a.seeds}.", "",
        table(["method", "W2 mean +- sd (lower is better)", "per seed"], rows)])
    print(text)
    if not a.quick or a.out is not None:
        j, m = write_results(a.name, {"config": {k: v for k, v in vars(a).items() if not isinstance(v, Path)},
                                      "w2": w2, "floor": floor}, text, a.out)
        print(f"wrote {j} and {m}")
    return {"w2": w2, "floor": floor}


if __name__ == "__main__":
    main()
