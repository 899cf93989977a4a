#!/usr/bin/env bash
# The short GPU check that fits a few minutes of one H100/H200 (the full one is
# experiments/gpu_benchmark.sh):
#   1. training throughput of the paper's best variant at 256², bf16: bare PyTorch loop over
#      GPU-resident tensors vs the library's Lightning loop (bus-mtl bench gpu);
#   2. the paper's best variant on BUSI 5-fold (all five folds at once on the one GPU,
#      EPOCHS epochs each, max FOLD_SECONDS each), then the mean ± std summary.
# Knobs: BUSI_ROOT (default ../shared/data/busi), OUT, EPOCHS, FOLD_SECONDS, PY, VARIANT
# (a net preset, given with --model.net; default the paper's best with ImageNet Lite0 weights).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-results/gpu_short}
BUSI_ROOT=${BUSI_ROOT:-../shared/data/busi}
WORK=${WORK:-/tmp/bus_mtl_gpu_short}
mkdir -p "$OUT" "$WORK"
export WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
export BUS_MTL_CACHE=${BUS_MTL_CACHE:-$WORK/cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

timeout "${BENCH_SECONDS:-50}" "$PY" -m bus_mtl.cli.main bench gpu --device cuda --size 256 \
  --batch-sizes 64 --steps 15 --warmup 5 --variants seg_features_effnet --modes eager \
  --workers 8 --out "$WORK/bench" > "$OUT/throughput.txt" 2>&1
tail -n 12 "$OUT/throughput.txt"

fold_s=${FOLD_SECONDS:-120}
start=$(date +%s)
timeout "${CV_SECONDS:-175}" "$PY" -m bus_mtl.cli.main cv \
  --config experiments/base.yaml --config experiments/recipes/gpu.yaml \
  --data.sources experiments/data/busi.yaml \
  --model.net "${VARIANT:-experiments/variants/seg_features_effnet_lite0.yaml}" \
  --folds 5 --parallel 5 --out "$WORK/cv" \
  --data.sources.init_args.root="$BUSI_ROOT" --trainer.max_epochs="${EPOCHS:-20}" \
  --trainer.max_time="00:00:$(printf %02d:%02d $((fold_s / 60)) $((fold_s % 60)))" \
  --model.warmup_epochs=1 --data.batch_size=32 --data.num_workers=3 > "$OUT/cv.txt" 2>&1
echo "cv exit $? wall $(( $(date +%s) - start )) s" | tee -a "$OUT/cv.txt"
for f in summary.md summary.json split.json; do
  [ -f "$WORK/cv/$f" ] && cp "$WORK/cv/$f" "$OUT/cv_$f"
done
tail -n 25 "$OUT/cv.txt"
[ -f "$OUT/cv_summary.md" ] && cat "$OUT/cv_summary.md"
