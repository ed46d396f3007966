#!/usr/bin/env bash
# The GPU work that issues 3 and 4 leave for a session with a device machine, as phases that each fit
# one `run` call of the device tool. Budget: 30 minutes of device time a session, the machine's start
# and the transfers included; 10 minutes a call; the machine stays warm ~30 s between calls (keeping
# /tmp/site, the editable installs, ~/.cache and runs/). Plan and reasons: bench/README.md section 4.
#
#   here, once:  bash bench/gpu_prep.sh        # .whl .whl_rdkit .whl_bench .gpu_data (ignored by git)
#   call 1  carry [".whl", ".gpu_data"]  bash bench/gpu_session.sh train 570
#   call 2  carry [".whl_rdkit"]         bash bench/gpu_session.sh train 420 && bash bench/gpu_session.sh evaluate
#   call 3  carry [".whl_bench"]         bash bench/gpu_session.sh bench 500   # or what the budget leaves
#
# Training first: issue 3's figures need >= 15 minutes of it on one warm machine (checkpoints stay on
# it), the benchmarks can take whatever is left. A call that finds a fresh machine (the last one went
# idle) must carry .whl again, and `train` starts over.
# `--dry` (first argument) runs every phase on the CPU at toy sizes, to check this script here:
#   OUT=/tmp/gpu_dry bash bench/gpu_session.sh --dry train 40   (then train 20, evaluate, bench 240)
# Every phase appends its output to $OUT/session.log; at most 8 files come back from a call.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
PHASE="${1:?usage: gpu_session.sh [--dry] train SECONDS | evaluate | bench SECONDS}"
OUT="${OUT:?set OUT (the device tool sets it) to the folder whose files come back}"
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 FMKIT_NO_PROGRESS="${FMKIT_NO_PROGRESS:-1}"
T0=$(date +%s)
left() { local l=$(($1 - ($(date +%s) - T0))); echo $((l > 1 ? l : 1)); }  # seconds left of allowance $1 (timeout 0 = none)

setup() {  # idempotent: a warm machine keeps what an earlier call installed
  mkdir -p /tmp/site
  export PYTHONPATH=/tmp/site
  for d in .whl .whl_rdkit .whl_bench; do  # each carried folder once per machine (cp312 wheels: not in --dry)
    if [ $DRY = 0 ] && ls "$d"/*.whl >/dev/null 2>&1 && [ ! -f "/tmp/site/.installed$d" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$d"/*.whl
      touch "/tmp/site/.installed$d"
    fi
  done
  if ! python3 -c "import fmkit_molecules" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/molecules
  fi
  python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util as u, os, torch, e3nn, fmkit, fmkit_molecules
have = {m: u.find_spec(m) is not None for m in ("pydantic", "rdkit", "ot", "torchcfm", "flow_matching")}
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; e3nn {e3nn.__version__}; "
      f"cores {len(os.sched_getaffinity(0))}; carried: {', '.join(m for m, ok in have.items() if ok)}")
EOF
}

data_dir() {  # QM9 carried in call 1, kept in /tmp for later calls (whatever the tool does with .gpu_data); here
  # $FMKIT_DATA_DIR when it holds QM9, else ../shared/data
  local keep=/tmp/fmkit_data
  if [ $DRY = 1 ] && [ -n "${FMKIT_DATA_DIR:-}" ] && ls "$FMKIT_DATA_DIR"/qm9/* >/dev/null 2>&1; then
    echo "$FMKIT_DATA_DIR"; return
  fi
  if [ $DRY = 0 ] && [ -f .gpu_data/qm9/qm9_hcno.xyz.xz ] && [ ! -f $keep/qm9/qm9_hcno.xyz.xz ]; then
    mkdir -p $keep/qm9 && cp -p .gpu_data/qm9/qm9_hcno.xyz.xz $keep/qm9/  # -p: same mtime, same parse cache key
  fi
  if [ $DRY = 0 ] && [ -f $keep/qm9/qm9_hcno.xyz.xz ]; then echo $keep
  elif [ -f .gpu_data/qm9/qm9_hcno.xyz.xz ]; then echo "$PWD/.gpu_data"
  else echo "$(cd ../shared/data && pwd)"; fi
}

case "$PHASE" in
  train)  # train SECONDS: the QM9 recipe (or resume it), SIGINT after SECONDS (a checkpoint of the step reached)
    secs="${2:?train needs the seconds to train in this call}"
    setup
    export FMKIT_DATA_DIR="$(data_dir)"
    args=(recipes/molecules_qm9.yaml --out runs/qm9)
    if [ $DRY = 1 ]; then
      args=(recipes/molecules_qm9_smoke.yaml --out runs/qm9 --set trainer.steps=100000 --set trainer.checkpoint_every=50)
    fi
    if [ -f runs/qm9/checkpoints/latest ]; then args=(--resume runs/qm9); fi
    # SIGINT saves a checkpoint of the step reached and exits 130: a planned stop, not a failure
    rc=0; timeout -s INT "$(left "$secs")" python3 -m fmkit train "${args[@]}" 2>&1 | tee -a "$LOG" || rc=$?
    cp runs/qm9/metrics.csv runs/qm9/curves.png "$OUT/" 2>/dev/null || true
    du -sh runs/qm9/checkpoints 2>/dev/null | tee -a "$LOG" || true
    [ "$rc" = 0 ] || [ "$rc" = 130 ] || [ "$rc" = 124 ] || exit "$rc"
    ;;
  evaluate)  # the EDM and RDKit tables at 50 and 100 NFE on 1000 samples; 100 samples as SDF + PNG
    setup
    export FMKIT_DATA_DIR="$(data_dir)"
    n=1000; steps=(50 100); ns=100; ss=100  # the tables; the SDF + PNG sample
    if [ $DRY = 1 ]; then n=16; steps=(5 10); ns=8; ss=5; fi
    for s in "${steps[@]}"; do
      python3 -m fmkit evaluate runs/qm9 -n "$n" --steps "$s" 2>&1 | tee "$OUT/evaluate_${s}nfe.txt"
    done
    python3 -m fmkit sample runs/qm9 -n "$ns" --steps "$ss" --out gpu_samples --overwrite 2>&1 | tee -a "$LOG"
    for f in runs/qm9/samples/gpu_samples/*.sdf runs/qm9/samples/gpu_samples/*.png; do
      [ -f "$f" ] && cp "$f" "$OUT/"
    done
    cp runs/qm9/metrics.csv runs/qm9/curves.png "$OUT/" 2>/dev/null || true  # 7 files of the 8 a call returns
    ;;
  bench)  # bench SECONDS: bench_gpu (most wanted variants first), then the engine vs peers, then OT on the GPU
    total="${2:?bench needs the seconds it may take}"
    setup
    if [ $DRY = 1 ]; then
      gpu=(--dry-run); engine=(--quick --engines bare fmkit fmkit_fast torchcfm); ot=(--quick); dev=cpu
    else
      gpu=(--kernel-profile); engine=(--rounds 20 --warmup 30); ot=(--batches 128 256 512 1024 --reps 3 --steps 5)
      dev=cuda
    fi
    # bench_gpu takes ~60% (it rewrites its results after every variant, so a cut keeps what it measured),
    # the engine comparison up to 85% (written after each coupling), bench_ot the rest (written at its end)
    gpu_budget=$((total * 6 / 10 - 30)); [ $gpu_budget -ge 10 ] || gpu_budget=10
    timeout -s INT "$(left $((total * 6 / 10)))" python3 bench/bench_gpu.py "${gpu[@]}" --budget "$gpu_budget" \
      --workloads molecules egnn mlp --name "gpu_${dev}" --out "$OUT" 2>&1 | tee -a "$LOG" || true
    timeout -s INT "$(left $((total * 85 / 100)))" python3 bench/bench_engine.py --device "$dev" "${engine[@]}" \
      --quiet --name "engine_${dev}" --out "$OUT" 2>&1 | tee -a "$LOG" || true
    timeout -s INT "$(left $((total - 5)))" python3 bench/bench_ot.py --device "$dev" "${ot[@]}" \
      --name "ot_${dev}" --out "$OUT" 2>&1 | tee -a "$LOG" || true
    ;;
  *) echo "unknown phase $PHASE (train SECONDS | evaluate | bench SECONDS)" >&2; exit 2 ;;
esac
