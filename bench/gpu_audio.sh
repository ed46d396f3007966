#!/usr/bin/env bash
# Issue 21's whole GPU check in ONE device call (budget: 15 minutes of device time in all, the machine's
# start included): train recipes/audio_digits.yaml for TRAIN_MIN minutes (wall-clock limit; a checkpoint
# and the recipe's final evaluation follow), then bench/audio_quality.py at 32 NFE: accuracy (ceiling
# beside), FD (floor beside), RTF on the GPU (flow) with Griffin-Lim timed apart. Figures under $OUT.
#
#   here, once:   bash bench/gpu_audio.sh --prep        # .whl (pydantic, soundfile, ...) + .gpu_data/fsdd
#   device call:  run(carry [".whl", ".gpu_data"], timeout_s 600,
#                     command "bash bench/gpu_audio.sh 6")    # 6 minutes of training
#   check here:   OUT=/tmp/gpu_audio_dry bash bench/gpu_audio.sh --dry   # CPU, toy sizes, ~2-3 minutes
#
# At most 8 files come back: session.log, metrics.csv, curves.png, quality.json, mels.png, 3 WAVs.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --prep)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info)/exclude"
    grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> "$(git rev-parse --git-path info)/exclude"
    mkdir -p .whl .gpu_data/fsdd
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64 -d .whl \
      pydantic pydantic-core annotated-types typing-inspection typing-extensions soundfile cffi pycparser
    cp ../shared/data/fsdd/fsdd_recordings.tar.gz ../shared/data/fsdd/SOURCE.txt .gpu_data/fsdd/
    du -sh .whl .gpu_data
    exit 0 ;;
  --dry) DRY=1; shift ;;
esac
TRAIN_MIN="${1:-6}"
OUT="${OUT:?set OUT (the device tool sets it) to the folder whose files come back}"
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
T0=$(date +%s)

# -- set-up: carried wheels (GPU machine), editable installs without touching its torch -------------
if [ $DRY = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/audio 2>&1 | tail -2 | tee -a "$LOG"
  export FMKIT_DATA_DIR="$PWD/.gpu_data"
  export FMKIT_CACHE_DIR=/tmp/fmkit_cache
  DEV=cuda
  SETS=(--set trainer.device=cuda --set "callbacks=[{name: wall_clock_limit, minutes: $TRAIN_MIN}]")
  Q=(--steps 32 -n 300 --chunk 300 --device cuda)
else
  export FMKIT_DATA_DIR="${FMKIT_DATA_DIR:-$(cd ../shared/data && pwd)}"
  export FMKIT_CACHE_DIR="${FMKIT_CACHE_DIR:-/tmp/fmkit_cache_dry}"
  DEV=cpu
  # toy sizes: the same code paths (recipe, training, evaluation with the metric, writers, RTF) in minutes
  SETS=(--set trainer.device=cpu --set trainer.steps=20 --set trainer.batch_size=32 --set data.limit=200
        --set "model.channels=[32, 64]" --set model.heads=4 --set model.emb_dim=64 --set eval.num_samples=40
        --set eval.batch_size=40 --set trainer.checkpoint_every=1000 --set trainer.cpu_threads=2
        --set "eval.metrics=[{name: audio_digits, classifier_epochs: 10}]"
        --set "callbacks=[{name: wall_clock_limit, minutes: $TRAIN_MIN}]")
  Q=(--steps 8 -n 40 --chunk 40 --device cpu)
fi
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import os, torch, torchaudio, soundfile, fmkit, fmkit_audio
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; torchaudio {torchaudio.__version__}; "
      f"soundfile {soundfile.__version__}; cores {len(os.sched_getaffinity(0))}; data {os.environ['FMKIT_DATA_DIR']}")
EOF

# -- the metric's classifier first (CPU-sized, cached; the run's final evaluation then reads it) ------
python3 -m fmkit audio train-classifier recipes/audio_digits.yaml "${SETS[@]}" 2>&1 | tee -a "$LOG"

# -- training (wall-clock limited), its final evaluation -------------------------------------------
rm -rf runs/gpu_audio
rc=0
python3 -m fmkit train recipes/audio_digits.yaml --out runs/gpu_audio --set trainer.progress=false "${SETS[@]}" \
  2>&1 | tee -a "$LOG" || rc=$?
cp runs/gpu_audio/metrics.csv runs/gpu_audio/curves.png "$OUT/" 2>/dev/null || true
[ "$rc" = 0 ] || { echo "training failed (exit $rc)" | tee -a "$LOG"; exit "$rc"; }

# -- quality and RTF at 32 NFE (guided), Griffin-Lim timed apart -------------------------------------
python3 bench/audio_quality.py runs/gpu_audio "${Q[@]}" --out runs/gpu_audio/quality 2>&1 | tee -a "$LOG"
cp runs/gpu_audio/quality/quality.json runs/gpu_audio/quality/mels.png "$OUT/"
for d in 0 3 7; do cp "runs/gpu_audio/quality/digit$d.wav" "$OUT/" 2>/dev/null || true; done
echo "gpu_audio.sh ($DEV) done in $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
