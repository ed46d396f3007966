#!/usr/bin/env bash
# Issue 20's whole GPU check in ONE device call (the device tool allows 600 s a call; the defaults end by
# DEADLINE=570 s): the MNIST judge (classifier) trained on the GPU, recipes/images_mnist.yaml trained for
# TRAIN_MIN minutes (SIGINT then: a checkpoint of the step reached) or trainer.steps, then guided samples
# (midpoint 10 steps = 20 NFE, guidance 2.0) -> class accuracy + classifier-Frechet distance with its floor,
# a PNG grid, test bits/dim (dopri5, Hutchinson, 200 images), and last CIFAR-10-size images/s of fmkit's
# U-Net vs TorchCFM's UNetModelWrapper (bench/bench_image.py --config cifar10, synthetic tensors: no
# CIFAR files needed) in fp32 and under bf16 autocast. Everything lands under $OUT.
#
#   here, once:   bash bench/gpu_image.sh --prep       # .whl (pydantic & co., torchcfm) + .gpu_data/mnist, ~16 MB
#   device call:  run(carry [".whl", ".gpu_data"], timeout_s 600, command "bash bench/gpu_image.sh 4")
#   check here:   OUT=/tmp/gpu_image_dry bash bench/gpu_image.sh --dry    # CPU, toy sizes, the same steps
#
# 8 files come back: session.log, metrics.csv, quality.json, grid.png, image_speed_cuda.{json,md},
# image_speed_cuda_bf16.{json,md} (image_speed_cpu* in --dry). A phase that fails or runs out of time is
# logged and the next one runs. Rough plan of the 570 s: set-up 30-60, judge < 70, training TRAIN_MIN
# minutes (torch.compile's first minute included), quality ~40, speed 2 x (budget + ~20 s of set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --prep)  # .whl and .gpu_data are ignored by .gitignore: they travel only when carried
    mkdir -p .whl .gpu_data/mnist
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64 -d .whl \
      pydantic pydantic-core annotated-types typing-inspection typing-extensions torchcfm
    cp ../shared/data/mnist/*.gz ../shared/data/mnist/SOURCE.txt .gpu_data/mnist/
    for d in .whl .gpu_data; do
      git check-ignore -q "$d" || { echo "$d is not ignored by git: it would travel in every call" >&2; exit 1; }
    done
    du -sh .whl .gpu_data
    exit 0 ;;
  --dry) DRY=1; shift ;;
esac
TRAIN_MIN="${1:-4}"
DEADLINE="${DEADLINE:-570}"  # seconds for the whole call
OUT="${OUT:?set OUT (the device tool sets it) to the folder whose files come back}"
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 FMKIT_NO_PROGRESS=1
T0=$(date +%s)
left() { local l=$((DEADLINE - ($(date +%s) - T0) - ${1:-0})); echo $((l > 5 ? l : 5)); }  # seconds left, $1 kept back
phase() { echo "== $1 (t=$(( $(date +%s) - T0 )) s)" | tee -a "$LOG"; }
FAILED=()
failed() { FAILED+=("$1"); echo "!! $1 failed or ran out of time" | tee -a "$LOG"; }  # the next phase still runs
RUN=runs/gpu_image

# -- set-up: carried wheels (GPU machine), editable installs without touching its torch -------------
if [ $DRY = 0 ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . -e plugins/image 2>&1 | tail -2 | tee -a "$LOG"
  export FMKIT_DATA_DIR="$PWD/.gpu_data" FMKIT_CACHE_DIR=/tmp/fmkit_cache
  DEV=cuda
  CLS=(--device cuda)                     # the judge: full MNIST training set, 2 epochs
  SETS=(--set trainer.device=cuda)        # the recipe as it is: 20k steps at most, bf16, compiled
  Q=(2000 10 200 dopri5:1e-4)             # samples, midpoint steps, BPD images, BPD solver
  SPEED=(--config cifar10 --device cuda --batch 128 --steps 10 --sample-n 64 --rounds 200 --warmup 5)
  SPEED_S=(60 45)                          # seconds of each speed run (fp32, bf16)
else
  export FMKIT_DATA_DIR="${FMKIT_DATA_DIR:-$(cd ../shared/data && pwd)}"
  export FMKIT_CACHE_DIR="${FMKIT_CACHE_DIR:-/tmp/fmkit_cache_dry_image}"
  DEV=cpu
  CLS=(--limit 500 --epochs 1)
  SETS=(--set trainer.device=cpu --set trainer.compile=false --set trainer.steps=6 --set trainer.batch_size=16
        --set data.limit=300 --set data.test_limit=200 --set model.channels=16 --set trainer.checkpoint_every=1000
        --set eval.every=0 --set eval.num_samples=20 --set eval.batch_size=20 --set trainer.cpu_threads=2)
  Q=(40 2 4 euler:2)
  SPEED=(--config mnist_cpu --quick)      # the same script and code paths; CIFAR size only on the GPU
  SPEED_S=(60 60)
fi
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util as u, os, torch, fmkit, fmkit_image
print(f"torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; cores {len(os.sched_getaffinity(0))}; "
      f"torchcfm {'yes' if u.find_spec('torchcfm') else 'MISSING'}; data {os.environ['FMKIT_DATA_DIR']}")
EOF

# -- the judge first (cached; the quality step reads it) ---------------------------------------------
phase "classifier"
timeout "$(left 440)" python3 -m fmkit image train-classifier --dataset mnist "${CLS[@]}" 2>&1 | tee -a "$LOG" || \
  failed classifier

# -- training: TRAIN_MIN minutes at most (SIGINT = checkpoint + exit 130), the recipe's evaluations on the way
phase "train recipes/images_mnist.yaml for at most $TRAIN_MIN min"
rm -rf "$RUN"
secs=$((TRAIN_MIN * 60)); [ "$secs" -lt "$(left 200)" ] || secs=$(left 200)
rc=0
timeout -s INT -k 30 "$secs" python3 -m fmkit train recipes/images_mnist.yaml --out "$RUN" \
  --set trainer.progress=false --set trainer.log_every=100 "${SETS[@]}" 2>&1 | tee -a "$LOG" || rc=$?
cp "$RUN/metrics.csv" "$OUT/" 2>/dev/null || true
echo "training exit $rc (0 = all steps, 124/130 = the time limit with a checkpoint)" | tee -a "$LOG"
[ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 130 ] || failed training

# -- quality: guided class accuracy + CFD (floor beside), grid, test bits/dim --------------------------
phase "quality"
timeout "$(left 150)" python3 - "$RUN" "$OUT" "$DEV" "${Q[@]}" <<'EOF' 2>&1 | tee -a "$LOG" || failed quality
import json, sys, time
from pathlib import Path

import fmkit, torch
from fmkit.app.inference import load_for_inference
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.flow.sampling import model_velocity
from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver
from fmkit_image.likelihood import bits_per_dim
from fmkit_image.metrics import ClassifierMetric
from fmkit_image.writers import GridWriter

run, out, dev = Path(sys.argv[1]), Path(sys.argv[2]), torch.device(sys.argv[3])
n, steps, bpd_n, (bpd_kind, bpd_arg) = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7].split(":")
lr = load_for_inference(run, [])
comps, step = lr.components, int(lr.data.meta["step"])
model = comps.model.to(dev).eval()
guided = fmkit.ClassifierFreeGuidance(model, 2.0, comps.dataset.info.num_cond_classes)
solver = FixedStepSolver("midpoint", steps)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
res = {"run": str(run), "step": step, "device": str(dev), "guidance_scale": 2.0, "nfe": 2 * steps,
       "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None}
torch.manual_seed(0)
t0 = time.time()
samples = sample_in_chunks(guided, comps.path, comps.source, solver, comps.dataset, n, 1000, dev, 0)
sync()
res["sampling_s"], res["sampling_images_per_s"] = time.time() - t0, n / (time.time() - t0)
res.update(ClassifierMetric()(samples, comps.dataset))
grid = sample_in_chunks(guided, comps.path, comps.source, solver, comps.dataset, 300, 300, dev, 1)
GridWriter(per_row=10)(grid, out, comps.dataset, step)[0].rename(out / "grid.png")
print(json.dumps(res, indent=1), flush=True)
(out / "quality.json").write_text(json.dumps(res, indent=2))
if bpd_n:
    imgs, _ = comps.dataset.split("test")
    idx = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(0))[:bpd_n]
    s = AdaptiveSolver("dopri5", rtol=float(bpd_arg), atol=float(bpd_arg)) if bpd_kind == "dopri5" else \
        FixedStepSolver(bpd_kind, int(bpd_arg))
    t0 = time.time()
    b = bits_per_dim(model_velocity(model, comps.path, None, None), imgs[idx], comps.source, s, draws=1,
                     estimator="hutchinson", batch_size=100, device=dev)
    res.update({"bpd": b.bits_per_dim, "bpd_n": bpd_n, "bpd_nfe": b.nfe, "bpd_solver": sys.argv[7],
                "bpd_estimator": "hutchinson", "bpd_condition": "unconditional (null class)", "bpd_s": time.time() - t0})
(out / "quality.json").write_text(json.dumps(res, indent=2))
print(json.dumps({k: v for k, v in res.items() if k.startswith("bpd")}, indent=1))
EOF

# -- images/s: fmkit's U-Net through the Trainer vs TorchCFM's in a bare loop, fp32 then bf16 autocast ------
phase "speed fp32"
timeout -k 10 "$(left 80)" python3 bench/bench_image.py "${SPEED[@]}" --budget "${SPEED_S[0]}" --out "$OUT" \
  --name "image_speed_$DEV" 2>&1 | tail -12 | tee -a "$LOG" || failed "speed fp32"
phase "speed bf16"
timeout -k 10 "$(left 5)" python3 bench/bench_image.py "${SPEED[@]}" --precision bf16 --budget "${SPEED_S[1]}" \
  --out "$OUT" --name "image_speed_${DEV}_bf16" 2>&1 | tail -12 | tee -a "$LOG" || failed "speed bf16"
phase "gpu_image.sh ($DEV) done"
ls "$OUT" | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}" | tee -a "$LOG"; exit 1; fi
