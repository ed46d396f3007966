#!/usr/bin/env bash
# Issue 27's CPU bar, side by side in one script, one arm after the other with nothing else running:
#   1. recipes/molecules_qm9_cpu.yaml as shipped (bonds + charges generated with the atoms);
#      1,000 samples at 20, 50 and 100 NFE (EMA, Euler), both protocols on the same samples, and the
#      learning curve (300 samples at 20 NFE at every kept checkpoint, in wall-clock minutes);
#   2. the pipeline before it (positions + atom types, bench/recipes/molecules_qm9_cpu_positions.yaml)
#      for the SAME training seconds: a 200-step pilot measures its steps/s, and its trainer.steps is
#      set to (arm 1's training seconds) x (that rate); 1,000 samples at 20 NFE, EDM protocol.
# Training seconds of an arm = sum over its metrics.csv log windows of log_every / steps_per_s.
# The load average before and after each phase goes to $OUT/session.log.
#
#   FMKIT_DATA_DIR=../shared/data bash bench/molecules_cpu.sh            # ~1.7 h on the 2-core CPU
#   FMKIT_DATA_DIR=../shared/data bash bench/molecules_cpu.sh --quick    # minutes: checks the script
#
# PHASES (default: all of them, in this order) runs a part, e.g. over two sittings of a session:
#   train1   arm 1's training (timed: nothing else may run)
#   eval1    arm 1's samples and learning curve (sampling only: may run beside other work)
#   train2   arm 2's pilot and training (the pilot is timed: nothing else may run)
#   eval2    arm 2's samples, then the report
#   PHASES="train1 eval1" bash bench/molecules_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
PHASES=" ${PHASES:-train1 eval1 train2 eval2} "
phase() { [[ "$PHASES" == *" $1 "* ]]; }
OUT="${OUT:-bench/results/molecules_qm9_cpu}"
RUNS="${RUNS:-runs/bench_molecules_cpu}"
export FMKIT_NO_PROGRESS=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/session.log"
if phase train1; then rm -rf "$RUNS"; : > "$LOG"; fi
say() { echo "== $* [$(date -u +%FT%TZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)]" | tee -a "$LOG"; }
if [ $QUICK = 1 ]; then
  GRAPH_SETS=(--set trainer.steps=60 --set trainer.checkpoint_every=30 --set trainer.log_every=10
              --set eval.num_samples=20 --set trainer.warmup_steps=5)
  N=40; NFE=(5 10); CURVE_N=20; PILOT=30; BASE_SETS=(--set trainer.log_every=10 --set trainer.warmup_steps=5)
else
  GRAPH_SETS=(); N=1000; NFE=(20 50 100); CURVE_N=300; PILOT=200; BASE_SETS=()
fi
GRAPH_SETS+=(--set trainer.keep_checkpoints=100)  # every checkpoint stays: the learning curve reads them
BASE_SETS+=(--set trainer.keep_checkpoints=100)
train_seconds() {  # sum of log_every / steps_per_s over the run's log windows (the first one included)
  python3 - "$1" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")) if r["name"] == "steps_per_s"]
steps = [int(r["step"]) for r in rows]
gaps = [b - a for a, b in zip([0] + steps[:-1], steps)]
print(round(sum(g / float(r["value"]) for g, r in zip(gaps, rows)), 1))
EOF
}

if phase train1; then
  say "arm 1: recipes/molecules_qm9_cpu.yaml"
  t0=$(date +%s)
  fmkit train recipes/molecules_qm9_cpu.yaml --out "$RUNS/graph" "${GRAPH_SETS[@]}" 2>&1 | tee -a "$LOG"
  say "arm 1 trained and evaluated in $(( $(date +%s) - t0 )) s (whole command)"
fi
GRAPH_S=$(train_seconds "$RUNS/graph")
if phase eval1; then
  say "arm 1 training seconds: $GRAPH_S"
  python3 bench/molecules_quality.py "$RUNS/graph" -n "$N" --nfe "${NFE[@]}" --out "$OUT/graph" 2>&1 | grep '^{' | tee -a "$LOG"
  python3 bench/molecules_quality.py "$RUNS/graph" --curve -n "$CURVE_N" --nfe "${NFE[0]}" --out "$OUT/graph_curve" 2>&1 \
    | grep '^{' | tee -a "$LOG"
  cp "$RUNS/graph/metrics.csv" "$OUT/graph_metrics.csv"
  cp "$RUNS/graph/recipe.yaml" "$OUT/graph_recipe.yaml"
  find "$RUNS/graph/samples" -name '*.png' -newer "$RUNS/graph/recipe.yaml" 2>/dev/null | sort | tail -1 \
    | xargs -r -I{} cp {} "$OUT/graph_grid.png"
fi

if phase train2; then
  say "arm 2 pilot: $PILOT steps of the positions-only pipeline"
  fmkit train bench/recipes/molecules_qm9_cpu_positions.yaml --out "$RUNS/pilot" --set trainer.steps="$PILOT" \
    --set eval.num_samples=1 --set "eval.metrics=[]" --set "eval.writers=[]" "${BASE_SETS[@]}" 2>&1 | tail -3 | tee -a "$LOG"
  RATE=$(python3 - "$RUNS/pilot" <<'EOF'
import csv, sys
v = [float(r["value"]) for r in csv.DictReader(open(f"{sys.argv[1]}/metrics.csv")) if r["name"] == "steps_per_s"]
print(sum(v[1:]) / len(v[1:]) if len(v) > 1 else v[0])
EOF
  )
  BASE_STEPS=$(python3 -c "print(max(1, round($GRAPH_S * $RATE)))")
  say "arm 2: $BASE_STEPS steps = $GRAPH_S s x $RATE steps/s"
  fmkit train bench/recipes/molecules_qm9_cpu_positions.yaml --out "$RUNS/positions" --set trainer.steps="$BASE_STEPS" \
    --set trainer.checkpoint_every="$(( BASE_STEPS / 6 > 0 ? BASE_STEPS / 6 : 1 ))" "${BASE_SETS[@]}" 2>&1 | tee -a "$LOG"
fi
if phase eval2; then
  say "arm 2 training seconds: $(train_seconds "$RUNS/positions")"
  python3 bench/molecules_quality.py "$RUNS/positions" -n "$N" --nfe "${NFE[0]}" --out "$OUT/positions" 2>&1 \
    | grep '^{' | tee -a "$LOG"
  cp "$RUNS/positions/metrics.csv" "$OUT/positions_metrics.csv"
  cp "$RUNS/positions/recipe.yaml" "$OUT/positions_recipe.yaml"
  say "done"
  python3 bench/molecules_report.py "$OUT" | tee "$OUT/README.md"
fi
