"""One-step MNIST by MeanFlow against the flow-matching recipe at the same wall-clock (issue 29).

    fmkit image train-classifier --dataset mnist                    # the judge (cached)
    python bench/mnist_vs_torchcfm.py --seeds 0 --arms fmkit --out DIR          # the FM run and its scores
    python bench/mnist_meanflow.py --seed 0 --fm DIR/fmkit_seed0.json --out bench/results/mnist_meanflow
    python bench/mnist_meanflow.py --quick --fm FM_JSON --out /tmp/x  # minutes: checks the script end to end
    # guidance as a model input (improved MeanFlow): trained over a range of scales, sampled at several
    python bench/mnist_meanflow.py --seed 0 --fm DIR/fmkit_seed0.json --out OUT --set model.guidance_input=true \
        --set 'objective={name: meanflow, equal_fraction: 0.75, adaptive_p: 1.0, guidance_range: [1, 3]}' \
        --guidance 1 1.4 2 2.5

Trains ``fmkit train images_mnist_meanflow_cpu --set seed=S`` as shipped (nothing else should run; the load
average is recorded before and after), then samples its EMA weights with the noise and labels that
``bench/mnist_vs_torchcfm.py`` gives the flow-matching run of the same seed (100 per class): MeanFlow jumps
x_r = x_t + (r - t) u(x_t, r, t) on a uniform grid at 1, 2 and 4 NFE, and the ODE of u(z, t, t) by the same
midpoint rule at 20 NFE. Guidance is the one folded into training (objective.guidance_scale); nothing is
guided again at sampling. A run whose model takes the scale as an input (``--set`` of
``objective.guidance_range`` and ``model.guidance_input``) is sampled at each ``--guidance`` scale, handed to
the model (one call per jump; the ODE at the first scale). The plugin's classifier scores every set (class
accuracy, classifier-Fréchet distance, its real floor at the same N). Writes ``meanflow_seed<S>.json`` and
``README.md``: the table with the flow-matching run's rows from its JSON and the ratio of Fréchet distances,
MeanFlow at 1 NFE over flow matching at 20 NFE (the bar: at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_vs_torchcfm import NFE_STEPS, PER_CLASS, ema_model, loadavg, noise_and_labels, sample_in_batches, \
    score, train_seconds  # noqa: E402

RECIPE = "images_mnist_meanflow_cpu"
JUMPS = (1, 2, 4)


def jumps(u_of, x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` MeanFlow jumps from t = 0 (noise) to t = 1 (data) on a uniform grid: x_r = x_t + (r - t) u."""
    grid = torch.linspace(0.0, 1.0, n + 1).tolist()
    for t, r in zip(grid[:-1], grid[1:]):
        x = x + (r - t) * u_of(x, torch.full((x.shape[0],), t), torch.full((x.shape[0],), r))
    return x


def train(seed: int, run: Path, quick: bool, sets: list[str] = ()) -> tuple[float | None, str, str, Path]:
    """Train the recipe into ``run`` (skipped when it holds a finished run).

    Returns (command seconds or None when skipped, load average before, after, the log's path)."""
    log = run.parent / f"{run.name}.log"
    before = loadavg()
    if (run / "checkpoints" / "latest").is_file() and log.is_file():
        return None, before, loadavg(), log
    cmd = [sys.executable, "-m", "fmkit", "train", RECIPE, "--out", str(run), "--set", f"seed={seed}",
           "--set", "trainer.progress=false", "--set", "eval.num_samples=100"]
    cmd += [a for kv in sets for a in ("--set", kv)]
    if quick:
        cmd += ["--set", "trainer.steps=4", "--set", "trainer.warmup_steps=1", "--set", "trainer.log_every=2",
                "--set", "trainer.checkpoint_every=4", "--set", "eval.num_samples=10"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"fmkit train failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall, before, loadavg(), log


def run_meanflow(seed: int, out: Path, quick: bool, per_class: int, sets: list[str] = (),
                 scales: list[float] | None = None) -> dict:
    from fmkit.flow.guidance_input import takes_guidance

    run = out / "runs" / f"meanflow_seed{seed}"
    wall, before, after, log = train(seed, run, quick, sets)
    secs, steps = train_seconds(run)
    rec, comps, model = ema_model(run)
    if scales and not takes_guidance(model):
        raise SystemExit(f"--guidance {scales} needs a model that takes the scale (--set model.guidance_input=true "
                         "with objective.guidance_range); this run folds its guidance into training")
    stopped = run / "stopped.json"
    res = {"arm": "meanflow", "seed": seed, "recipe": RECIPE, "steps": steps, "train_s": secs,
           "command_wall_s": wall, "load_before": before, "load_after": after, "weights": "EMA",
           "stopped": json.loads(stopped.read_text())["message"] if stopped.is_file() else None,
           "device_line": next((ln for ln in log.read_text().splitlines() if "device:" in ln), ""),
           "folded_guidance": rec.objective.guidance_scale, "sets": list(sets),
           "guidance_range": getattr(rec.objective, "guidance_range", None), "scales": scales}
    x0, y = noise_and_labels(seed, per_class)
    res["n"] = len(y)

    def told(w: float | None, b: int) -> dict:
        return {} if w is None else {"guidance": torch.full((b,), float(w))}

    def u_of(yb, w):
        return lambda x, t, r: model({"x": x}, t, yb, r=r, **told(w, x.shape[0]))["x"]

    for w in scales or [None]:
        for n in JUMPS:
            t0 = time.perf_counter()
            with torch.no_grad():
                x = torch.cat([jumps(u_of(y[i:i + 100], w), x0[i:i + 100], n) for i in range(0, len(y), 100)])
            key = f"jump{n}" if w is None else f"jump{n}_w{w:g}"
            res[key] = {**score(x, y, comps.dataset), "nfe": n, "sampling_s": time.perf_counter() - t0, "guidance": w}
    w0 = scales[0] if scales else None
    t0 = time.perf_counter()  # the instantaneous velocity u(z, t, t) = v(z, t) as an ODE, as the FM run is sampled
    x = sample_in_batches(lambda x, t, c: model({"x": x}, t, c, **told(w0, x.shape[0]))["x"], x0, y)
    res["ode"] = {**score(x, y, comps.dataset), "nfe": 2 * NFE_STEPS, "sampling_s": time.perf_counter() - t0,
                  "guidance": w0}
    return res


def report(out: Path, mf: dict, fm: dict) -> str:
    fm_w = [k for k in fm if k.startswith("w") and k[1:2].isdigit()]
    g = fm.get("recipe_guidance", 1.4)
    lines = ["# One-step MNIST by MeanFlow vs the flow-matching recipe at the same wall-clock", "",
             "Written by `python bench/mnist_meanflow.py` (its docstring says what is sampled how). "
             f"n = {mf['n']} samples ({mf['n'] // 10} per class), the same noise and labels for every row; scored "
             "by the image plugin's classifier.", "",
             "| model | steps | train s | load average before / after | sampling | NFE | guidance | class acc | CFD "
             "| CFD floor | CFD / floor |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def row(name, r, how, nfe, w, m):
        return (f"| {name} | {r['steps']} | {r['train_s']:.0f} | {r['load_before']} / {r['load_after']} | {how} | "
                f"{nfe} | {w} | {m['class_acc']:.4f} | {m['cfd']:.2f} | {m['cfd_floor']:.2f} | "
                f"{m['cfd'] / m['cfd_floor']:.2f} |")

    fold = f"{mf['folded_guidance']:g} (trained in)"
    scales = mf.get("scales") or [None]
    for w in scales:
        how = fold if w is None else f"{w:g} (model input; trained on {mf['guidance_range']})"
        for n in JUMPS:
            key = f"jump{n}" if w is None else f"jump{n}_w{w:g}"
            lines.append(row("MeanFlow", mf, f"{n} jump{'s' if n > 1 else ''}", n, how, mf[key]))
    w0 = scales[0]
    lines.append(row("MeanFlow", mf, f"ODE of u(z, t, t), midpoint {NFE_STEPS}", 2 * NFE_STEPS,
                     fold if w0 is None else f"{w0:g} (model input)", mf["ode"]))
    for k in sorted(fm_w, key=lambda k: float(k[1:])):
        lines.append(row("flow matching", fm, f"midpoint {NFE_STEPS}", fm.get("nfe", 20), k[1:], fm[k]))
    one_keys = [k for k in mf if k == "jump1" or k.startswith("jump1_w")]
    one, base = min((mf[k] for k in one_keys), key=lambda m: m["cfd"]), fm[f"w{g:g}"]
    best = min(fm_w, key=lambda k: fm[k]["cfd"])
    lines += ["", f"MeanFlow at 1 NFE over flow matching at 20 NFE, classifier-Fréchet distance: "
              f"**{one['cfd'] / base['cfd']:.2f}** against FM at its recipe's guidance {g:g} "
              f"({one['cfd']:.2f} / {base['cfd']:.2f}); {one['cfd'] / fm[best]['cfd']:.2f} against FM's best scale "
              f"here (w {best[1:]}: {fm[best]['cfd']:.2f}). Class accuracy at 1 NFE: {one['class_acc']:.4f}"
              + ("." if one.get("guidance") is None else f" (the best 1-NFE row: scale {one['guidance']:g}).")]
    if mf.get("sets"):
        lines.append(f"Recipe overrides of the MeanFlow run: {' '.join(repr(k) for k in mf['sets'])}.")
    if mf.get("stopped"):
        lines.append(f"The MeanFlow run was {mf['stopped']}.")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fm", type=Path, required=True,
                    help="the flow-matching run's scores: fmkit_seed<S>.json of bench/mnist_vs_torchcfm.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help="samples per class for the scores")
    ap.add_argument("--quick", action="store_true", help="a few steps: checks the script")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for the MeanFlow run (repeatable), as fmkit train --set")
    ap.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                    help="sample at these scales, handed to a model trained with objective.guidance_range")
    a = ap.parse_args(argv)
    fm = json.loads(a.fm.read_text())
    if fm.get("seed") != a.seed or fm.get("n") != 10 * a.per_class:
        raise SystemExit(f"{a.fm} scored seed {fm.get('seed')} with n = {fm.get('n')}; this run is seed {a.seed} "
                         f"with n = {10 * a.per_class}: the rows would not share noise and labels")
    (a.out / "runs").mkdir(parents=True, exist_ok=True)
    res = run_meanflow(a.seed, a.out, a.quick, a.per_class, a.sets, a.guidance)
    (a.out / f"meanflow_seed{a.seed}.json").write_text(json.dumps(res, indent=1))
    text = report(a.out, res, fm)
    print(text)
    return text


if __name__ == "__main__":
    main()
