"""Class-conditional MNIST quality at equal wall-clock: fmkit's recipe against TorchCFM's example (issue 30).

    pip install --no-deps torchcfm                 # the peer (its U-Net and ConditionalFlowMatcher)
    fmkit image train-classifier --dataset mnist   # the judge (cached)
    python bench/mnist_vs_torchcfm.py --seeds 0 1 2 --out bench/results/mnist_vs_torchcfm
    python bench/mnist_vs_torchcfm.py --seeds 1 --out DIR     # one seed per call; the table reads every seed in DIR
    python bench/mnist_vs_torchcfm.py --quick --out /tmp/x    # minutes: checks the script end to end

Per seed, one after the other on the same machine (nothing else should run; the load average is recorded
before and after each training):

  fmkit     ``fmkit train images_mnist_cpu --set seed=S`` as shipped (its steps, threads, EMA, guidance
            training). Its training seconds (the sum of its log windows: data waits included, start-up,
            checkpoints and the final evaluation excluded) become the peer's budget.
  TorchCFM  the setup of TorchCFM's ``examples/images/conditional_mnist.ipynb``, written from its published
            description with the ``torchcfm`` package: ``UNetModel(dim=(1, 28, 28), num_channels=32,
            num_res_blocks=1, num_classes=10, class_cond=True)``, ``ConditionalFlowMatcher(sigma=0.0)``,
            ``torch.optim.Adam`` at its defaults, torchvision's MNIST with ``ToTensor`` and ``Normalize(0.5,
            0.5)``, a ``DataLoader`` of 128 (shuffle, drop_last), the plain MSE loop (no EMA, no label
            dropout), trained until it has used fmkit's training seconds, with the same torch thread count.

Both are sampled at the same NFE with the same guidance convention: midpoint 10 steps (20 NFE), the plain
conditional velocity (w = 1: the example trains no null class, so it cannot be guided), the same noise and
labels (100 per class). fmkit is also sampled guided (``--guidance``, default 1, 1.4 and 2; the recipe's is
1.4). The plugin's classifier
scores every set: class accuracy, classifier-Fréchet distance to as many test images, and the real
test-vs-train floor at that N. Writes ``<arm>_seed<S>.json`` per arm and seed, and ``README.md`` with the
table and the per-seed ratios TorchCFM / fmkit of the Fréchet distance (above 1: fmkit better).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NFE_STEPS = 10  # midpoint: 2 NFE per step
PER_CLASS = 100


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def train_seconds(run: Path) -> tuple[float, int]:
    """(training seconds, steps) of a run from its metrics.csv: the sum over log windows of steps / steps_per_s."""
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    rates = [(int(r[0]), float(r[2])) for r in rows if len(r) >= 3 and r[1] == "steps_per_s"]
    total, prev = 0.0, 0
    for step, rate in rates:
        total += (step - prev) / rate
        prev = step
    return total, prev


def midpoint(v, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Midpoint rule from t = 0 (noise) to t = 1 (data): the same integrator for both arms."""
    h = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * h)
        x_mid = x + 0.5 * h * v(x, t)
        x = x + h * v(x_mid, t + 0.5 * h)
    return x


def noise_and_labels(seed: int, per_class: int = PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + seed)
    y = torch.arange(10).repeat_interleave(per_class)
    return torch.randn(len(y), 1, 28, 28, generator=g), y


def sample_in_batches(v_of, x0: torch.Tensor, y: torch.Tensor, batch: int = 100) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(y), batch):
            yb = y[i:i + batch]
            out.append(midpoint(lambda x, t: v_of(x, t, yb), x0[i:i + batch], NFE_STEPS))
    return torch.cat(out)


def score(x: torch.Tensor, y: torch.Tensor, dataset) -> dict[str, float]:
    from fmkit_image.metrics import ClassifierMetric

    return ClassifierMetric()({"x": x, "cond": y}, dataset)


def mnist_dataset():
    from fmkit_image.data import build_mnist

    return build_mnist()


def ema_model(run: Path):
    """(recipe, components, the EMA weights' model in eval mode) of a run's newest checkpoint."""
    from fmkit.app.run import build_components, load_run_recipe
    from fmkit.engine.checkpoint import load_checkpoint
    from fmkit.engine.train_state import load_model_state

    rec = load_run_recipe(run, [])
    comps = build_components(rec)
    ck = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    load_model_state(comps.model, load_checkpoint(ck).tensors["ema"], str(ck))
    return rec, comps, comps.model.eval()


# ------------------------------------------------------------------------------------------------ fmkit
def run_fmkit(seed: int, out: Path, quick: bool, threads: int | None, per_class: int, reuse: bool,
              scales: list[float]) -> dict:
    run = out / "runs" / f"fmkit_seed{seed}"
    cmd = [sys.executable, "-m", "fmkit", "train", "images_mnist_cpu", "--out", str(run), "--set", f"seed={seed}",
           "--set", "trainer.progress=false", "--set", "eval.num_samples=100", "--set", "eval.metrics=[]"]
    if quick:
        cmd += ["--set", "trainer.steps=6", "--set", "trainer.warmup_steps=2", "--set", "trainer.log_every=2",
                "--set", "trainer.checkpoint_every=6", "--set", "eval.num_samples=10"]
    env = dict(os.environ)
    if threads:
        env["FMKIT_CPU_THREADS"] = str(threads)
    log = out / "runs" / f"fmkit_seed{seed}.log"
    before, wall = loadavg(), None
    if not (reuse and (run / "checkpoints" / "latest").is_file() and log.is_file()):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        log.write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise SystemExit(f"fmkit train failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    after = loadavg()
    secs, steps = train_seconds(run)
    thread_line = next((ln for ln in log.read_text().splitlines() if "device:" in ln), "")

    from fmkit.flow.guidance import with_guidance

    rec, comps, model = ema_model(run)
    x0, y = noise_and_labels(seed, per_class)
    res = {"arm": "fmkit", "seed": seed, "recipe": "images_mnist_cpu", "steps": steps, "train_s": secs,
           "command_wall_s": wall, "load_before": before, "load_after": after, "device_line": thread_line,
           "weights": "EMA", "nfe": 2 * NFE_STEPS, "n": len(y), "recipe_guidance": rec.eval.guidance_scale}
    old = out / f"fmkit_seed{seed}.json"
    if wall is None and old.is_file():  # a rescore: keep the scales measured before
        prev = json.loads(old.read_text())
        res.update({k: v for k, v in prev.items() if k.startswith("w") and k[1:2].isdigit()})
        res.update({k: prev[k] for k in ("command_wall_s", "load_before", "load_after") if k in prev})
    for w in scales:
        guided = with_guidance(model, w, comps.dataset.info.null_class)
        t0 = time.perf_counter()
        x = sample_in_batches(lambda x, t, c: guided({"x": x}, t, c)["x"], x0, y)
        res[f"w{w:g}"] = {**score(x, y, comps.dataset), "sampling_s": time.perf_counter() - t0}
    return res


# ------------------------------------------------------------------------------------------------ TorchCFM
def run_torchcfm(seed: int, out: Path, budget_s: float, threads: int, quick: bool, per_class: int) -> dict:
    import importlib.util
    import types

    if importlib.util.find_spec("ot") is None:  # torchcfm's package imports POT for samplers not used here
        sys.modules.setdefault("ot", types.ModuleType("ot"))
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchcfm.models.unet import UNetModel
    from torchvision import datasets, transforms

    from fmkit_image.data import data_root, layout_mnist

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tvroot = layout_mnist(data_root(None, "mnist"), "MNIST")
    trainset = datasets.MNIST(str(tvroot), train=True, download=False,
                              transform=transforms.Compose([transforms.ToTensor(),
                                                            transforms.Normalize((0.5,), (0.5,))]))
    loader = torch.utils.data.DataLoader(trainset, batch_size=128, shuffle=True, drop_last=True)
    model = UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1, num_classes=10, class_cond=True)
    optimizer = torch.optim.Adam(model.parameters())
    fm = ConditionalFlowMatcher(sigma=0.0)
    before = loadavg()
    steps, loss = 0, float("nan")
    t0 = time.perf_counter()
    done = False
    while not done:
        for x1, y in loader:
            optimizer.zero_grad()
            x0 = torch.randn_like(x1)
            t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
            vt = model(t, xt, y)
            loss_t = torch.mean((vt - ut) ** 2)
            loss_t.backward()
            optimizer.step()
            steps += 1
            if (steps >= 6) if quick else (time.perf_counter() - t0 >= budget_s):
                loss, done = float(loss_t), True
                break
    train_s = time.perf_counter() - t0
    res = {"arm": "torchcfm", "seed": seed, "steps": steps, "train_s": train_s, "budget_s": budget_s,
           "threads": threads, "batch": 128, "final_loss": loss, "load_before": before, "load_after": loadavg(),
           "weights": "raw (the example keeps no EMA)", "nfe": 2 * NFE_STEPS}
    torch.save(model.state_dict(), out / "runs" / f"torchcfm_seed{seed}.pt")
    model.eval()
    x0, y = noise_and_labels(seed, per_class)
    res["n"] = len(y)
    t0 = time.perf_counter()
    x = sample_in_batches(lambda x, t, c: model(t, x, c), x0, y)
    res["w1"] = {**score(x, y, mnist_dataset()), "sampling_s": time.perf_counter() - t0}
    return res


# ------------------------------------------------------------------------------------------------ report
def report(out: Path) -> str:
    rows = {}
    for p in sorted(out.glob("*_seed*.json")):
        if not re.fullmatch(r"(fmkit|torchcfm)_seed\d+\.json", p.name):
            continue  # copies beside the results
        r = json.loads(p.read_text())
        rows[(r["arm"], r["seed"])] = r
    seeds = sorted({s for _, s in rows})
    lines = ["# Class-conditional MNIST at equal wall-clock: fmkit's recipe vs TorchCFM's example",
             "", "Written by `python bench/mnist_vs_torchcfm.py` (its docstring says what each arm is). "
             f"Samples: n (n / 10 per class), midpoint {NFE_STEPS} steps = {2 * NFE_STEPS} NFE, the same noise "
             "and labels for both arms; scored by the image plugin's classifier (`fmkit image train-classifier`).",
             "",
             "| seed | arm | steps | train s | load average before / after | n | w | class acc | CFD | CFD floor "
             "| CFD / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for s in seeds:
        for arm in ("fmkit", "torchcfm"):
            r = rows.get((arm, s))
            if r is None:
                continue
            for w in sorted((k for k in r if k.startswith("w") and k[1:2].isdigit()), key=lambda k: float(k[1:])):
                m = r[w]
                lines.append(f"| {s} | {arm} | {r['steps']} | {r['train_s']:.0f} | {r['load_before']} / "
                             f"{r['load_after']} | {r['n']} | {w[1:]} | {m['class_acc']:.4f} | {m['cfd']:.2f} | "
                             f"{m['cfd_floor']:.2f} | {m['cfd'] / m['cfd_floor']:.2f} |")
        if ("fmkit", s) in rows and ("torchcfm", s) in rows:
            f, t = rows[("fmkit", s)], rows[("torchcfm", s)]
            g = f.get("recipe_guidance", 1.4)  # runs scored before it was recorded: the shipped recipe's 1.4
            ratios.append((s, t["w1"]["cfd"] / f["w1"]["cfd"], t["w1"]["cfd"] / f[f"w{g:g}"]["cfd"],
                           f["w1"]["class_acc"] - t["w1"]["class_acc"]))
    if ratios:
        lines += ["", "Per seed, TorchCFM / fmkit (above 1: fmkit better):", "",
                  "| seed | CFD ratio, both w = 1 | CFD ratio, fmkit at its recipe's guidance "
                  "| accuracy gap, both w = 1 (points) |",
                  "|---|---|---|---|"]
        for s, a, b, d in ratios:
            lines.append(f"| {s} | {a:.2f} | {b:.2f} | {100 * d:+.1f} |")
        if len(ratios) > 1:
            a = [r[1] for r in ratios]
            lines.append(f"| mean +- sd | {statistics.mean(a):.2f} +- {statistics.stdev(a):.2f} | | |")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", nargs="+", default=["fmkit", "torchcfm"], choices=["fmkit", "torchcfm"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: fmkit's choice, "
                    "which the peer then uses too)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.4, 2.0],
                    help="guidance scales of the fmkit arm (the peer is scored at 1: it has no null class)")
    ap.add_argument("--per-class", type=int, default=PER_CLASS, help="samples per class for the scores")
    ap.add_argument("--reuse", action="store_true",
                    help="score an fmkit run already trained in OUT/runs (no retraining)")
    ap.add_argument("--quick", action="store_true", help="a few steps each: checks the script")
    a = ap.parse_args(argv)
    (a.out / "runs").mkdir(parents=True, exist_ok=True)
    for s in a.seeds:
        f_path = a.out / f"fmkit_seed{s}.json"
        if "fmkit" in a.arms:
            res = run_fmkit(s, a.out, a.quick, a.threads, a.per_class, a.reuse, a.guidance)
            f_path.write_text(json.dumps(res, indent=1))
            print(f"seed {s} fmkit: {res['steps']} steps in {res['train_s']:.0f} s; "
                  f"{ {k: v for k, v in res.items() if k.startswith('w') and k[1:2].isdigit()} }",
                  flush=True)
        if "torchcfm" in a.arms:
            if not f_path.is_file():
                raise SystemExit(f"{f_path} is missing: the peer's budget is fmkit's training seconds "
                                 "(run --arms fmkit first)")
            f = json.loads(f_path.read_text())
            line = f.get("device_line", "")
            threads = a.threads or (int(line.split("(")[1].split()[0]) if "thread" in line else torch.get_num_threads())
            res = run_torchcfm(s, a.out, f["train_s"], threads, a.quick, a.per_class)
            (a.out / f"torchcfm_seed{s}.json").write_text(json.dumps(res, indent=1))
            print(f"seed {s} torchcfm: {res['steps']} steps in {res['train_s']:.0f} s; w1 {res['w1']}", flush=True)
    text = report(a.out)
    print(text)
    return text


if __name__ == "__main__":
    main()
