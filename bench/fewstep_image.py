"""Few-step figures of MNIST runs: guided class-conditional samples labelled by the image plugin's
classifier, classifier-Fréchet distance beside its floor at the same N.

    python bench/fewstep_image.py --guidance 2.0 -n 500 --out fewstep_mnist.json \
        rf1=/work/runs/mnist_cpu:euler:1,2,4:midpoint:10 rf2=/work/runs/rf2_mnist:euler:1,2,4 ...

Each spec is NAME=RUN:METHOD:STEPS[:METHOD:STEPS...]; NFE = steps (euler) or 2 x steps (midpoint).
Newest checkpoint, EMA weights (the recipe's eval.use_ema), seed 0 for every row (same x0 noise
and labels across runs at equal N).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from fmkit.app.inference import inference_device, load_for_inference
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.flow.guidance import with_guidance
from fmkit.flow.solvers import FixedStepSolver

NFE_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from fmkit_image.metrics import ClassifierMetric

    metric = ClassifierMetric()
    rows = []
    for spec in a.specs:
        name, rest = spec.split("=", 1)
        parts = rest.split(":")
        run, pairs = Path(parts[0]), parts[1:]
        # evaluate every run against MNIST itself (a pairs run's data is the teacher's pairs; same model info)
        loaded = load_for_inference(run, ["data={name: mnist}", "coupling.name=independent"])
        rec, comps = loaded.recipe, loaded.components
        dev = inference_device(rec)
        model = comps.model.to(dev).eval()
        guided = with_guidance(model, a.guidance, comps.dataset.info.null_class)
        for method, steps_list in zip(pairs[0::2], pairs[1::2]):
            for steps in [int(s) for s in steps_list.split(",")]:
                t0 = time.time()
                torch.manual_seed(0)
                s = FixedStepSolver(method, steps)
                with torch.no_grad():
                    samples = sample_in_chunks(guided, comps.path, comps.source, s, comps.dataset, a.n, 500, dev, 0)
                dt = time.time() - t0
                res = metric(samples, comps.dataset)
                row = {"name": name, "run": str(run), "checkpoint": loaded.checkpoint.name, "method": method,
                       "steps": steps, "nfe": steps * NFE_PER_STEP[method], "guidance_scale": a.guidance,
                       "sampling_s": round(dt, 1), **res}
                rows.append(row)
                print(json.dumps(row), flush=True)
                a.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
