#!/usr/bin/env bash
# One prepared GPU run (one H100/H200, about 10 minutes):
#   1. training throughput at 256², bf16, channels_last: the library's Lightning loop vs a
#      bare PyTorch loop over GPU-resident tensors, per variant and batch size, plus
#      torch.compile / CUDA graphs ("reduce-overhead") and the data loader alone;
#   2. `bus-mtl compare` of all variants on BUSI 5-fold with a time-boxed recipe, printing
#      the table and the whole comparison's wall time.
# Everything goes under $OUT (default results/gpu_benchmark).
#
# Dry run on a CPU (what the test does):  DRY_RUN=1 experiments/gpu_benchmark.sh
# Knobs (environment): BATCH_SIZES, STEPS, VARIANTS, COMPILE_BATCH_SIZES, COMPILE_VARIANTS,
# EPOCHS, FIT_SECONDS, PARALLEL, FOLDS, PART.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
OUT=${OUT:-results/gpu_benchmark}
mkdir -p "$OUT"
export WANDB_MODE=${WANDB_MODE:-offline}
export BUS_MTL_CACHE=${BUS_MTL_CACHE:-$OUT/cache}

if [ "${DRY_RUN:-0}" = 1 ]; then
  "$PY" -m bus_mtl.cli.main bench gpu --device cpu --steps 1 --warmup 1 --size 64 \
    --batch-sizes 2 --variants "${VARIANTS:-segresnet}" --modes eager --workers 0 \
    --out "$OUT/throughput"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

PART=${PART:-all}   # all | throughput | compare (two calls when one 10-minute slot is tight)

if [ "$PART" != compare ]; then
# 1. Throughput. (a) every variant, batch 16/64/128, eager bare loop vs the Lightning loop
#    and the data loader alone (about 3 min); (b) torch.compile and CUDA graphs
#    ("reduce-overhead") for the default variant, bare and inside Lightning (about 2 min).
start=$(date +%s)
"$PY" -m bus_mtl.cli.main bench gpu --device cuda --size 256 \
  --batch-sizes "${BATCH_SIZES:-16,64,128}" --steps "${STEPS:-25}" --warmup 5 \
  --variants "${VARIANTS:-all}" --modes eager --out "$OUT/throughput" | tee "$OUT/throughput.txt"
"$PY" -m bus_mtl.cli.main bench gpu --device cuda --size 256 \
  --batch-sizes "${COMPILE_BATCH_SIZES:-64,128}" --steps "${STEPS:-25}" --warmup 10 \
  --variants "${COMPILE_VARIANTS:-seg_features_effnet}" --modes eager,compile,reduce-overhead \
  --lightning-compile --out "$OUT/throughput_compile" | tee "$OUT/throughput_compile.txt"
echo "throughput benchmark: $(( $(date +%s) - start )) s"
fi

[ "$PART" = throughput ] && exit 0

# 2. All variants on BUSI, 5-fold, several folds at once on the one GPU. Each fold trains
#    EPOCHS epochs (so the cosine schedule completes) with max_time FIT_SECONDS as a guard.
#    Needs the BUSI folder (../shared/data/busi or $BUS_MTL_DATA).
fit_s=${FIT_SECONDS:-45}
start=$(date +%s)
"$PY" -m bus_mtl.cli.main compare --variants all \
  --config experiments/base.yaml --data.sources experiments/data/busi.yaml \
  --folds "${FOLDS:-5}" --parallel "${PARALLEL:-8}" --out "$OUT/compare" \
  --trainer.max_time="$(printf 00:00:%02d:%02d $((fit_s / 60)) $((fit_s % 60)))" --trainer.max_epochs="${EPOCHS:-15}" \
  --data.batch_size=32 --data.num_workers=2 | tee "$OUT/compare.txt"
echo "comparison wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/compare.txt"
