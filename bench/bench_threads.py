"""Training steps/s of the shipped CPU recipes with 1 vs 2 torch threads, alone and beside busy processes:
the measurement behind ``trainer.cpu_threads``'s default (docs/recipes.md).

    python bench/bench_threads.py                       # all CPU recipes, load 0 and 1, writes results/threads.*
    python bench/bench_threads.py --quick --out /tmp/x     # seconds: checks the script

Each cell runs in its own process (``torch.set_num_threads`` is process-wide): the recipe is built with
``trainer.cpu_threads`` set, trains ``--warmup`` steps, then ``--steps`` timed steps by wall clock (the time a
user waits; under load the CPU time hides the threads' waiting). "Load L" runs L busy Python processes
(``while True: pass``) beside it, each wanting a whole core, as another user's job would. Cells are
interleaved over ``--rounds`` rounds; a cell's figure is the median of its rounds. Needs FMKIT_DATA_DIR for
the recipes' real data (MNIST, QM9, spoken digits); a recipe whose data is missing is skipped and named.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CPU_RECIPES = ["toy_moons", "images_mnist_cpu", "molecules_qm9_cpu", "audio_digits_cpu"]


def _busy() -> None:
    while True:
        pass


def _cell(recipe: str, threads: int, warmup: int, steps: int) -> dict:
    """One measurement in a fresh interpreter: wall seconds of ``steps`` training steps after ``warmup``."""
    code = f"""
import json, os, time
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_trainer
from fmkit.engine.callbacks import Callback
stamps = {{}}
class Clock(Callback):
    def on_step_end(self, trainer, step):
        if step in ({warmup}, {warmup + steps}):
            stamps[step] = time.perf_counter()
        if step == {warmup + steps}:  # timed steps done: skip the final evaluation and checkpoint
            print("RESULT " + json.dumps({{"seconds": stamps[step] - stamps[{warmup}]}}), flush=True)
            os._exit(0)
rec = load_recipe({str(ROOT / 'recipes' / (recipe + '.yaml'))!r}, overrides=[
    "trainer.cpu_threads={threads}", "trainer.steps={warmup + steps}", "trainer.progress=false",
    "eval.every=0", "trainer.log_every=1000000"])
tr = build_trainer(rec, None, callbacks=[Clock()])
tr.fit()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    said = (p.stderr or p.stdout).strip().splitlines()
    return {"error": " / ".join(ln.strip() for ln in said[-4:]) if said else f"exit {p.returncode}"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=CPU_RECIPES)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--loads", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per cell (0: each recipe's default below)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="threads")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="seconds: toy_moons, 20 steps, alone, 1 round (checks it)")
    a = ap.parse_args(argv)
    if a.quick:
        a.recipes, a.loads, a.rounds, a.steps, a.warmup, a.name = ["toy_moons"], [0], 1, 20, 2, a.name + "_quick"
    default_steps = {"toy_moons": 300, "images_mnist_cpu": 15, "molecules_qm9_cpu": 40, "audio_digits_cpu": 15}
    secs: dict[tuple[str, int, int], list[float]] = {}
    skipped: dict[str, str] = {}
    load_before = os.getloadavg()
    for r in range(a.rounds):
        for load in a.loads:
            hogs = [mp.Process(target=_busy, daemon=True) for _ in range(load)]
            for h in hogs:
                h.start()
            try:
                time.sleep(1.0 if load else 0.0)
                for recipe in a.recipes:
                    if recipe in skipped:
                        continue
                    order = a.threads if r % 2 == 0 else list(reversed(a.threads))
                    for th in order:
                        n = a.steps or default_steps.get(recipe, 20)
                        got = _cell(recipe, th, a.warmup, n)
                        if "error" in got:
                            skipped[recipe] = got["error"]
                            print(f"[skip] {recipe}: {got['error']}", flush=True)
                            break
                        secs.setdefault((recipe, load, th), []).append(got["seconds"] / n)
                        print(f"round {r} load {load} {recipe} threads {th}: {n / got['seconds']:.2f} steps/s",
                              flush=True)
            finally:
                for h in hogs:
                    h.terminate()
                    h.join()
    load_after = os.getloadavg()
    rows = []
    for recipe in a.recipes:
        if recipe in skipped:
            continue
        for load in a.loads:
            cells = {th: median(secs[(recipe, load, th)]) for th in a.threads}
            best = min(cells, key=cells.get)
            rows.append({"recipe": recipe, "load": load, **{f"steps_per_s_{th}t": 1 / s for th, s in cells.items()},
                         "fastest_threads": best,
                         "ratio_1t_over_2t": (cells[2] / cells[1]) if 1 in cells and 2 in cells else None})
    head = "| recipe | busy processes beside it | " + " | ".join(f"steps/s, {t} thread(s)" for t in a.threads)
    md = [head + " | 1 thread / 2 threads (speed) |", "|" + "---|" * (3 + len(a.threads))]
    for row in rows:
        ratio = f"{row['ratio_1t_over_2t']:.2f}x" if row["ratio_1t_over_2t"] else "-"
        md.append(f"| {row['recipe']} | {row['load']} | "
                  + " | ".join(f"{row[f'steps_per_s_{t}t']:.2f}" for t in a.threads) + f" | {ratio} |")
    md.append("")
    md.append(f"Load average before {load_before}, after {load_after} (the after figure includes the busy "
              f"processes of the loaded cells). Wall-clock steps/s, median of {a.rounds} round(s).")
    for recipe, why in skipped.items():
        md.append(f"Skipped {recipe}: {why}")
    j, m = write_results(a.name, {"rows": rows, "skipped": skipped, "load_before": load_before,
                                  "load_after": load_after}, "\n".join(md) + "\n", a.out)
    print("\n".join(md))
    print(f"wrote {j} and {m}")
    return {"rows": rows, "skipped": skipped}


if __name__ == "__main__":
    main()
