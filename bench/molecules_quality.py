"""Sample quality of a trained molecules run: both protocols on the same samples, at several NFE and
(``--curve``) at every kept checkpoint, so a learning curve in wall-clock minutes comes with it.

    python bench/molecules_quality.py RUN -n 1000 --nfe 20 50 100 --out bench/results/x
    python bench/molecules_quality.py RUN --curve -n 300 --nfe 20 --out bench/results/x

EMA weights; the recipe's solver with ``--nfe`` steps (Euler: 1 NFE a step); sizes drawn from the
training set (EDM). The metrics are the recipe's own (``eval.metrics``): the EDM protocol (bonds from
distances) and, for runs that generate bonds, the generated-bond protocol and the geometry check.
Writes ``quality.json`` (one row per checkpoint x NFE) under ``--out``. A checkpoint's wall-clock
minutes are its file time minus the run's start (its ``recipe.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from fmkit.app.run import build_components, load_run_recipe
from fmkit.engine.checkpoint import load_checkpoint
from fmkit.engine.evaluation import sample_in_chunks, score
from fmkit.engine.train_state import load_model_state
from fmkit.flow.solvers import FixedStepSolver, sway_grid


def checkpoints(run: Path, curve: bool) -> list[Path]:
    root = run / "checkpoints"
    if not curve:
        return [root / (root / "latest").read_text().strip()]
    return sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("-n", type=int, default=1000, help="samples per row")
    ap.add_argument("--nfe", type=int, nargs="+", default=[20], help="Euler steps (1 NFE each)")
    ap.add_argument("--curve", action="store_true", help="every kept checkpoint, not only the latest")
    ap.add_argument("--chunk", type=int, default=250, help="samples per solver call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sway", type=float, default=None, help="a sway time grid of this coefficient (> 0: steps "
                    "denser near the data, t = 1); default: uniform")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (noise, sizes); 0 = the run's final evaluation")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for sampling, e.g. path.fields.bonds.stochasticity=10")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rec = load_run_recipe(a.run, a.overrides)
    comps = build_components(rec)
    start = (a.run / "recipe.yaml").stat().st_mtime
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ck in checkpoints(a.run, a.curve):
        data = load_checkpoint(ck)
        load_model_state(comps.model, data.tensors["ema"], str(ck))
        model = comps.model.eval()
        for nfe in a.nfe:
            t0 = time.time()
            grid = None if a.sway is None else sway_grid(nfe, a.sway)
            samples = sample_in_chunks(model, comps.path, comps.source, FixedStepSolver("euler", nfe, grid),
                                       comps.dataset, a.n, a.chunk, torch.device("cpu"), a.seed)
            t_sample = time.time() - t0
            results, err = score(comps.metrics, samples, comps.dataset)
            if err is not None:
                raise err
            row = {"checkpoint": ck.name, "step": int(data.meta["step"]), "seed": a.seed, "sway": a.sway,
                   "train_minutes": round((ck.stat().st_mtime - start) / 60.0, 2), "nfe": nfe, "n": a.n,
                   "sampling_s": round(t_sample, 2), **{k: round(float(v), 5) for k, v in results.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"run": str(a.run), "recipe": rec.name, "overrides": a.overrides, "solver": "euler", "weights": "ema",
            "hardware": f"{os.cpu_count()}-core CPU, no GPU", "torch_threads": a.threads,
            "loadavg_end": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None}
    (a.out / "quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
