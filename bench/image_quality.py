"""Sample quality and bits/dim of a trained image run (the issue-20 CPU/GPU quality figures).

    python bench/image_quality.py RUN --guidance 2.0 --steps 10 -n 1000 --bpd-n 200 --bpd-draws 1 --out bench/results/x

Guided class-conditional samples (midpoint, 2 NFE per step) labelled by the plugin's classifier,
classifier-Fréchet distance to N test images beside the real test-vs-train floor at the same N, a
PNG grid (one row per class), and test bits/dim (uniform dequantisation, Hutchinson, dopri5 or a
fixed-step solver) with its draws and NFE. Writes quality.json and grid.png under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from fmkit.app.run import build_components, load_run_recipe
from fmkit.engine.checkpoint import load_checkpoint
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.engine.train_state import load_model_state
from fmkit.flow.guidance import with_guidance
from fmkit.flow.sampling import model_velocity
from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=10, help="midpoint steps (2 NFE each)")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--bpd-n", type=int, default=200)
    ap.add_argument("--bpd-draws", type=int, default=1)
    ap.add_argument("--bpd-rtol", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from fmkit_image.likelihood import bits_per_dim
    from fmkit_image.metrics import ClassifierMetric
    from fmkit_image.writers import GridWriter

    rec = load_run_recipe(a.run, [])
    comps = build_components(rec)
    ck = a.run / "checkpoints" / (a.run / "checkpoints" / "latest").read_text().strip()
    data = load_checkpoint(ck)
    load_model_state(comps.model, data.tensors["ema"], str(ck))
    model = comps.model.eval()
    guided = with_guidance(model, a.guidance, comps.dataset.info.null_class)
    a.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"run": str(a.run), "checkpoint": ck.name, "hardware": "2-core CPU, no GPU"}
    t0 = time.time()
    torch.manual_seed(0)
    solver = FixedStepSolver("midpoint", a.steps)
    samples = sample_in_chunks(guided, comps.path, comps.source, solver, comps.dataset, a.n, 500,
                               torch.device("cpu"), 0)
    res["sampling_s"] = time.time() - t0
    res["nfe"] = 2 * a.steps
    res["guidance_scale"] = a.guidance
    res.update(ClassifierMetric()(samples, comps.dataset))
    torch.manual_seed(0)
    grid_in = sample_in_chunks(guided, comps.path, comps.source, solver, comps.dataset, 300, 300,
                               torch.device("cpu"), 1)
    p = GridWriter(per_row=10)(grid_in, a.out, comps.dataset, int(data.meta["step"]))
    p[0].rename(a.out / "grid.png")
    if a.bpd_n:
        t0 = time.time()
        imgs, labels = comps.dataset.split("test")
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(imgs), generator=g)[: a.bpd_n]
        vel = model_velocity(model, comps.path, None, None)  # unconditional (null class): log p(x)
        b = bits_per_dim(vel, imgs[idx], comps.source, AdaptiveSolver("dopri5", rtol=a.bpd_rtol, atol=a.bpd_rtol),
                         draws=a.bpd_draws, estimator="hutchinson", batch_size=100)
        res.update({"bpd": b.bits_per_dim, "bpd_n": a.bpd_n, "bpd_draws": b.draws, "bpd_nfe": b.nfe,
                    "bpd_solver": f"dopri5 rtol=atol={a.bpd_rtol}", "bpd_estimator": "hutchinson (rademacher)",
                    "bpd_condition": "unconditional (null class)", "bpd_s": time.time() - t0})
    (a.out / "quality.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
