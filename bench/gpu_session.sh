#!/usr/bin/env bash
# The GPU work that issues 3 and 4 leave for a session with a device machine, as phases that each fit
# one `run` call of the device tool (10 minutes at most; the machine stays warm ~30 s between calls,
# keeping /tmp/site, the editable installs and runs/). Plan and limits: bench/README.md section 4.
#
#   here, once:  bash ../shared/gpu/fetch-wheels.sh                        # .whl/ (~35 MB)
#                mkdir -p .gpu_data/qm9 && cp ../shared/data/qm9/qm9_hcno.xyz.xz .gpu_data/qm9/
#                grep -qx /.gpu_data/ .git/info/exclude || echo /.gpu_data/ >> .git/info/exclude
#   call 1  carry [".whl"]       bash bench/gpu_session.sh bench mlp && bash bench/gpu_session.sh ot
#   call 1b (no carry)           bash bench/gpu_session.sh bench molecules egnn   # e3nn model + EGNN
#   call 2  carry [".gpu_data"]  bash bench/gpu_session.sh train 540    # QM9 recipe, SIGINT after 540 s
#   call 3  (no carry)           bash bench/gpu_session.sh train 540    # resumes runs/qm9
#   call 4  (no carry)           bash bench/gpu_session.sh evaluate     # metrics at 50 and 100 NFE -> $OUT
#
# A call that finds a fresh machine (the last one went idle) must carry .whl again; `train` then
# starts over unless $OUT of the last call held the checkpoint (it does not: too large to travel).
# `--dry` (first argument) runs every phase on the CPU at toy sizes, to check this script here:
#   OUT=/tmp/gpu_dry bash bench/gpu_session.sh --dry bench   (and train 30, evaluate)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
PHASE="${1:?usage: gpu_session.sh [--dry] bench [WORKLOAD ...]|ot|train SECONDS|evaluate}"
OUT="${OUT:?set OUT (the device tool sets it) to the folder whose files come back}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FMKIT_NO_PROGRESS="${FMKIT_NO_PROGRESS:-0}"

setup() {  # idempotent: a warm machine keeps what an earlier call installed
  if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site; fi
  if ! python3 -c "import fmkit_molecules, rdkit, pydantic" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site
    fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/molecules
  fi
  python3 - <<'EOF'
import torch, e3nn, rdkit, fmkit, fmkit_molecules
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; e3nn {e3nn.__version__}; "
      f"rdkit {rdkit.__version__}; cores {len(__import__('os').sched_getaffinity(0))}")
EOF
}

data_dir() {  # the carried copy of QM9, else ../shared/data (here)
  if [ -f .gpu_data/qm9/qm9_hcno.xyz.xz ]; then echo "$PWD/.gpu_data"; else echo "$(cd ../shared/data && pwd)"; fi
}

case "$PHASE" in
  bench)  # bench [WORKLOAD ...]: mlp, molecules, egnn (default: all); results after every variant
    shift
    workloads=("${@:-mlp molecules egnn}"); workloads=(${workloads[*]})
    name="gpu_cuda_$(IFS=_; echo "${workloads[*]}")"
    setup
    if [ $DRY = 1 ]; then
      python3 bench/bench_gpu.py --dry-run --workloads "${workloads[@]}" --name "$name" --out "$OUT" 2>&1 | tee "$OUT/$name.log"
    else
      python3 bench/bench_gpu.py --kernel-profile --workloads "${workloads[@]}" --name "$name" --out "$OUT" 2>&1 | tee "$OUT/$name.log"
    fi
    ;;
  ot)
    setup
    if [ $DRY = 1 ]; then python3 bench/bench_ot.py --quick --out "$OUT" 2>&1 | tee "$OUT/bench_ot.log"
    else python3 bench/bench_ot.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench_ot.log"; fi
    ;;
  train)
    secs="${2:?train needs the seconds to train in this call}"
    setup
    export FMKIT_DATA_DIR="$(data_dir)"
    args=(recipes/molecules_qm9.yaml --out runs/qm9)
    if [ $DRY = 1 ]; then
      args=(recipes/molecules_qm9_smoke.yaml --out runs/qm9 --set trainer.steps=100000 --set trainer.checkpoint_every=50)
    fi
    if [ -f runs/qm9/checkpoints/latest ]; then args=(--resume runs/qm9); fi
    # SIGINT saves a checkpoint of the step reached and exits 130: a planned stop, not a failure
    rc=0; timeout -s INT "$secs" python3 -m fmkit.cli train "${args[@]}" 2>&1 | tee -a "$OUT/train.log" || rc=$?
    cp runs/qm9/metrics.csv "$OUT/metrics.csv" 2>/dev/null || true
    du -sh runs/qm9/checkpoints 2>/dev/null || true
    [ "$rc" = 0 ] || [ "$rc" = 130 ] || [ "$rc" = 124 ] || exit "$rc"
    ;;
  evaluate)
    setup
    export FMKIT_DATA_DIR="$(data_dir)"
    n=1000; steps=(50 100)
    if [ $DRY = 1 ]; then n=16; steps=(5 10); fi
    for s in "${steps[@]}"; do
      python3 -m fmkit.cli evaluate runs/qm9 -n "$n" --steps "$s" 2>&1 | tee "$OUT/evaluate_${s}nfe.txt"
    done
    python3 -m fmkit.cli sample runs/qm9 -n 100 --steps 100 --out gpu_samples 2>&1 | tee "$OUT/sample.log"
    for f in runs/qm9/samples/gpu_samples/*.sdf runs/qm9/samples/gpu_samples/*.png; do
      [ -f "$f" ] && cp "$f" "$OUT/"
    done
    cp runs/qm9/metrics.csv "$OUT/metrics.csv" 2>/dev/null || true
    ;;
  *) echo "unknown phase $PHASE (bench [WORKLOAD ...] | ot | train SECONDS | evaluate)" >&2; exit 2 ;;
esac
