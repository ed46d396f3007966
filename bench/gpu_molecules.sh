#!/usr/bin/env bash
# Issue 27's GPU check in ONE device call (600 s a call; the defaults end by DEADLINE=570 s):
# recipes/molecules_qm9.yaml (bonds + charges generated with the atoms, GPU size) trained for TRAIN_MIN
# minutes (SIGINT then: a checkpoint of the step reached), then 1,000 samples at 20, 50 and 100 NFE
# (EMA, Euler) timed on the GPU and saved as safetensors. The GPU machine has no RDKit and the
# device's carry limit (64 MiB) cannot take RDKit (32 MB) beside QM9 (38 MB), so the chemistry
# metrics are computed back here from the returned samples:
#
#   here, once:   bash bench/gpu_molecules.sh --prep    # .whl (pydantic & co.) + .gpu_data (QM9 + its graph), ~58 MB
#   device call:  run(carry [".whl", ".gpu_data"], timeout_s 600, command "bash bench/gpu_molecules.sh 6")
#   then here:    python bench/molecules_score_samples.py FILES_AT --out bench/results/molecules_qm9_gpu
#   check here:   OUT=/tmp/gpu_mol_dry bash bench/gpu_molecules.sh --dry   # CPU, toy sizes, the same steps
#
# Files back (<= 8): session.log, metrics.csv, timing.json, samples_nfe{20,50,100}.safetensors.
# The graph cache is carried (perceiving QM9 needs RDKit): its file name depends on where the source
# lies, so the script renames it for the path it has there; its content is checked against the data.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --prep)  # .whl and .gpu_data are ignored by .gitignore: they travel only when carried
    rm -rf .whl .gpu_data && mkdir -p .whl .gpu_data/qm9
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64 -d .whl \
      pydantic pydantic-core annotated-types typing-inspection typing-extensions
    cp ../shared/data/qm9/qm9_hcno.xyz.xz .gpu_data/qm9/
    # the graph of that file, built here (RDKit) once and cached: copied as a portable file
    FMKIT_DATA_DIR="$PWD/.gpu_data" python3 - <<'EOF'
import shutil
from pathlib import Path
from fmkit_molecules import qm9
src = qm9.find_source(Path(".gpu_data/qm9"))
qm9.load_graph(src, qm9.load(src))
shutil.copy(qm9.graph_cache_file(src), ".gpu_data/qm9_graph.pt")
EOF
    for d in .whl .gpu_data; do
      git check-ignore -q "$d" || { echo "$d is not ignored by git: it would travel in every call" >&2; exit 1; }
    done
    du -sh .whl .gpu_data
    exit 0 ;;
  --dry) DRY=1; shift ;;
esac
TRAIN_MIN="${1:-6}"
DEADLINE="${DEADLINE:-570}"
OUT="${OUT:?set OUT (the device tool sets it) to the folder whose files come back}"
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 FMKIT_NO_PROGRESS=1
T0=$(date +%s)
left() { local l=$((DEADLINE - ($(date +%s) - T0) - ${1:-0})); echo $((l > 5 ? l : 5)); }
phase() { echo "== $1 (t=$(( $(date +%s) - T0 )) s)" | tee -a "$LOG"; }
FAILED=()
failed() { FAILED+=("$1"); echo "!! $1 failed or ran out of time" | tee -a "$LOG"; }
RUN=runs/gpu_molecules
NO_RDKIT=(--set "eval.metrics=[]" --set "eval.writers=[{name: xyz}]" --set eval.every=0)

if [ $DRY = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/molecules 2>&1 | tail -2 | tee -a "$LOG"
  export FMKIT_DATA_DIR="$PWD/.gpu_data" FMKIT_CACHE_DIR=/tmp/fmkit_cache
  DEV=cuda
  SETS=(--set trainer.device=cuda --set trainer.num_workers=12 --set trainer.log_every=100
        --set trainer.checkpoint_every=100000)
  N=1000; CHUNK=1000
else
  export FMKIT_DATA_DIR="${FMKIT_DATA_DIR:-$(cd ../shared/data && pwd)}"
  DEV=cpu
  SETS=(--set trainer.device=cpu --set trainer.steps=6 --set trainer.batch_size=16 --set model.hidden=32
        --set model.message=16 --set model.edge=8 --set model.layers=2 --set trainer.num_workers=1
        --set trainer.log_every=2 --set trainer.checkpoint_every=1000 --set trainer.cpu_threads=2
        --set eval.num_samples=8 --set eval.batch_size=8)
  N=16; CHUNK=16
fi
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import os, shutil, torch, fmkit, fmkit_molecules
from pathlib import Path
from fmkit_molecules import qm9
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; cores {len(os.sched_getaffinity(0))}; "
      f"data {os.environ['FMKIT_DATA_DIR']}")
carried = Path(".gpu_data/qm9_graph.pt")
if carried.is_file():  # the carried graph, named for this machine's path of the source
    src = qm9.find_source(Path(os.environ["FMKIT_DATA_DIR"]) / "qm9")
    dst = qm9.graph_cache_file(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(carried, dst)
    print(f"graph cache -> {dst}")
EOF

phase "train recipes/molecules_qm9.yaml for at most $TRAIN_MIN min"
rm -rf "$RUN"
secs=$((TRAIN_MIN * 60)); [ "$secs" -lt "$(left 150)" ] || secs=$(left 150)
rc=0
timeout -s INT -k 30 "$secs" python3 -m fmkit train recipes/molecules_qm9.yaml --out "$RUN" \
  --set trainer.progress=false "${NO_RDKIT[@]}" "${SETS[@]}" 2>&1 | tee -a "$LOG" || rc=$?
cp "$RUN/metrics.csv" "$OUT/" 2>/dev/null || true
echo "training exit $rc (0 = all steps, 124/130 = the time limit with a checkpoint)" | tee -a "$LOG"
[ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 130 ] || failed training

phase "sampling: $N molecules at 20, 50, 100 NFE"
timeout "$(left 10)" python3 - "$RUN" "$OUT" "$DEV" "$N" "$CHUNK" <<'EOF' 2>&1 | tee -a "$LOG" || failed sampling
import json, sys, time
from pathlib import Path

import torch
from fmkit.app.inference import load_for_inference
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.engine.files import save_tensors
from fmkit.flow.solvers import FixedStepSolver
from fmkit.flow.state import flat_tensors

run, out, dev, n, chunk = Path(sys.argv[1]), Path(sys.argv[2]), torch.device(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lr = load_for_inference(run, [])
comps, step = lr.components, int(lr.data.meta["step"])
model = comps.model.to(dev).eval()
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
res = {"run": str(run), "step": step, "device": str(dev), "n": n,
       "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None, "rows": []}
for nfe in (20, 50, 100):
    sync(); t0 = time.time()
    samples = sample_in_chunks(model, comps.path, comps.source, FixedStepSolver("euler", nfe), comps.dataset, n,
                               chunk, dev, 0)
    sync(); dt = time.time() - t0
    save_tensors(flat_tensors(samples), out / f"samples_nfe{nfe}.safetensors")
    res["rows"].append({"nfe": nfe, "sampling_s": round(dt, 3), "molecules_per_s": round(n / dt, 1)})
    print(json.dumps(res["rows"][-1]), flush=True)
(out / "timing.json").write_text(json.dumps(res, indent=2))
EOF
phase "gpu_molecules.sh ($DEV) done"
ls "$OUT" | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}" | tee -a "$LOG"; exit 1; fi
