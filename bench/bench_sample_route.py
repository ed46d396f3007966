"""Images/s of guided sampling through ``fmkit sample``'s route against the bench's bare loop, on the same run's
model, in one process: interleaved rounds, the order alternating, the same threads and the same images.

    python bench/bench_sample_route.py RUN                     # writes bench/results/sample_route.{json,md}
    python bench/bench_sample_route.py RUN --train-steps 3     # RUN made first if absent: images_mnist_cpu, 3 steps
    python bench/bench_sample_route.py RUN --quick --out /tmp/x

The routes:
  cli    :func:`fmkit.app.inference.sample_loaded`, what ``fmkit sample RUN -n N`` runs between loading the run and
         writing the files: the run's EMA weights under its guidance, ``sample_in_chunks`` in chunks of the
         recipe's ``eval.chunk_size`` with the recipe's solver
  bench  ``bench/bench_image.py``'s sampling loop on the same network: batches of ``--bench-batch`` images, the
         recipe's fixed-step solver written out by hand (midpoint: x + dt v(x + dt/2 v(x, t), t + dt/2)),
         classifier-free guidance as one batch of 2B, ``torch.no_grad``

Each round samples ``--n`` images by each route; the ratio (cli images/s / bench images/s) is the median of
per-round paired ratios with a bootstrap 95 % interval. Per route the process's user and system CPU seconds
and minor page faults (``getrusage``) are summed over the rounds: the kernel time this bench was made to find.
The process-wide CPU settings the CLI makes (``trainer.cpu_threads``, the allocator:
:mod:`fmkit.engine.host_memory`) are made once before timing, then ``--threads`` applies to both routes.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, table, write_results  # noqa: E402
from bench_image import bootstrap_median  # noqa: E402


def make_run(run: Path, steps: int) -> None:
    """``fmkit train images_mnist_cpu`` for ``steps`` steps into ``run`` (real MNIST from $FMKIT_DATA_DIR)."""
    import subprocess

    sets = [f"trainer.steps={steps}", f"trainer.checkpoint_every={steps}", "trainer.warmup_steps=0",
            "trainer.progress=false", "eval.metrics=[]", "eval.writers=[]"]
    subprocess.run([sys.executable, "-m", "fmkit", "train", "images_mnist_cpu", "--out", str(run),
                    *[x for kv in sets for x in ("--set", kv)]], check=True)


@torch.no_grad()
def bare_loop(model: torch.nn.Module, labels: torch.Tensor, shape: tuple, method: str, steps: int, scale: float,
              null_class: int, batch: int) -> torch.Tensor:
    """bench_image.py's sampling loop (its TorchCFM engine's) on an fmkit model: ``labels`` in batches of ``batch``."""
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i:i + batch]
        n = len(y)
        y2 = torch.cat([y, torch.full_like(y, null_class)])
        x = torch.randn(n, *shape)

        def v(x: torch.Tensor, t: float) -> torch.Tensor:
            o = model({"x": torch.cat([x, x])}, torch.full((2 * n,), t), y2)["x"]
            return o[n:] + scale * (o[:n] - o[n:])

        dt = 1.0 / steps
        for k in range(steps):
            t = k * dt
            x = x + dt * (v(x + 0.5 * dt * v(x, t), t + 0.5 * dt) if method == "midpoint" else v(x, t))
        out.append(x)
    return torch.cat(out)


def measured(fn) -> dict[str, float]:
    """Wall, user and system seconds and minor page faults of ``fn()``."""
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"wall": w1 - w0, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
            "faults": r1.ru_minflt - r0.ru_minflt}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run of an image recipe (made when absent with --train-steps)")
    p.add_argument("--train-steps", type=int, default=None, help="make RUN first: images_mnist_cpu for this many steps")
    p.add_argument("--n", type=int, default=64, help="images per route per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--bench-batch", type=int, default=16, help="images per batch of the bare loop (bench_image's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="set_", action="append", default=[], help="recipe override for the cli route")
    p.add_argument("--quick", action="store_true", help="a check of the script: 2 rounds of 4 images, 2 steps")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default="sample_route")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.n, a.set_ = 2, 4, a.set_ + ["solver.steps=2"]
    load_before = os.getloadavg()
    from fmkit.app.inference import build_solver, inference_device, load_for_inference, sample_loaded

    if not a.run.exists() and a.train_steps:
        make_run(a.run, a.train_steps)
    loaded = load_for_inference(a.run, a.set_)
    rec, comps = loaded.recipe, loaded.components
    dev = inference_device(rec)  # the CLI's process-wide settings, once
    torch.set_num_threads(a.threads)
    solver, about = build_solver(rec, None, None)
    scale, null = rec.eval.guidance_scale, comps.dataset.info.null_class
    assert dev.type == "cpu" and scale is not None and getattr(solver, "method", "") in ("euler", "midpoint"), \
        "a guided CPU run with a fixed-step euler/midpoint solver"
    model = comps.model.eval()
    shape = tuple(comps.dataset.info.fields["x"].shape)
    labels = comps.dataset.template(a.n, seed=0)["cond"]
    routes = {
        "cli": lambda n=a.n: sample_loaded(loaded, n, solver, dev, seed=0),
        "bench": lambda n=a.n: bare_loop(model, labels[:n], shape, solver.method, solver.steps, scale, null,
                                         a.bench_batch)}
    for fn in routes.values():
        fn(min(a.n, a.bench_batch))  # warm-up: one batch
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in routes}
    for r in range(a.rounds):
        for k in (list(routes) if r % 2 == 0 else list(routes)[::-1]):
            rows[k].append(measured(routes[k]))
        speeds = ", ".join(f"{k} {a.n / rows[k][-1]['wall']:.2f} img/s wall" for k in rows)
        print(f"round {r + 1}/{a.rounds}: {speeds}", flush=True)
    results = {}
    for clock in ("wall", "cpu"):
        t = {k: [m["wall"] if clock == "wall" else m["user"] + m["sys"] for m in v] for k, v in rows.items()}
        paired = [b / c for c, b in zip(t["cli"], t["bench"], strict=True)]  # cli speed / bench speed
        results[clock] = {"images_per_s": {k: a.n / median(v) for k, v in t.items()}, "ratio_median": median(paired),
                          "ratio_ci95": list(bootstrap_median(paired)), "paired_ratios": paired, "seconds": t}
    totals = {k: {q: sum(m[q] for m in v) for q in ("user", "sys", "faults")} for k, v in rows.items()}
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    md = render(a, rec, about, results, totals, load)
    print(md)
    if not a.quick or a.out is not None:
        j, m = write_results(a.name, {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                                      "chunk_size": rec.eval.chunk_size, "solver": about, "results": results,
                                      "totals": totals, "load_avg": load}, md, a.out)
        print(f"wrote {j} and {m}")
    return results


def render(a, rec, about: str, results: dict, totals: dict, load: dict) -> str:
    lines = [f"Run `{a.run.name}` (recipe `{rec.name}`): {a.n} guided images (scale {rec.eval.guidance_scale}, "
             f"{about}) per route per round, {a.rounds} interleaved rounds, {a.threads} torch thread(s); cli: chunks "
             f"of eval.chunk_size = {rec.eval.chunk_size}; bench: batches of {a.bench_batch}.",
             "Ratio = cli images/s / bench images/s, median of per-round paired ratios [bootstrap 95 % CI]. Load "
             f"average (1, 5, 15 min) before {'/'.join(f'{x:.2f}' for x in load['before'])}, after "
             f"{'/'.join(f'{x:.2f}' for x in load['after'])}.", ""]
    rows = [[c, f"{r['images_per_s']['cli']:.2f}", f"{r['images_per_s']['bench']:.2f}",
             f"{r['ratio_median']:.3f} [{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]"]
            for c, r in results.items()]
    lines.append(table(["clock", "cli img/s", "bench img/s", "ratio (median) [95% CI]"], rows))
    lines += ["", table(["route", "user s", "sys s", "minor faults"],
                        [[k, f"{v['user']:.1f}", f"{v['sys']:.1f}", f"{v['faults']:,}"] for k, v in totals.items()])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
