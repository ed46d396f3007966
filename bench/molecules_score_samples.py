"""Score molecule samples saved as safetensors (by bench/gpu_molecules.sh on a machine without RDKit):
both protocols and the geometry check, against the recipe's training set read here.

    FMKIT_DATA_DIR=../shared/data python bench/molecules_score_samples.py DIR --out bench/results/molecules_qm9_gpu

DIR holds samples_nfe*.safetensors (and timing.json, copied beside the result). Writes quality.json
(one row per file) under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_components
from fmkit.engine.evaluation import score
from fmkit.flow.state import nest_tensors
from safetensors.torch import load_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--recipe", default="recipes/molecules_qm9.yaml", help="whose dataset and metrics score them")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    comps = build_components(load_recipe(a.recipe, []))
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in sorted(a.dir.glob("samples_nfe*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1])):
        samples = nest_tensors(load_file(str(f)))
        results, err = score(comps.metrics, samples, comps.dataset)
        if err is not None:
            raise err
        row = {"file": f.name, "nfe": int(re.findall(r"\d+", f.stem)[-1]),
               **{k: round(float(v), 5) for k, v in results.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    timing = a.dir / "timing.json"
    if timing.is_file():
        shutil.copy(timing, a.out / "timing.json")
    (a.out / "quality.json").write_text(json.dumps({"recipe": a.recipe, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
