#!/usr/bin/env bash
# Train the CPU-sized models (vit_mini_cifar, resnet_mini_cifar) on real CIFAR-10 JPEGs with the quick recipe.
#
#   scripts/train_cifar_real.sh [CIFAR10_DIR] [OUT_ROOT] [extra overrides...]
#
# CIFAR10_DIR holds train/<class>/*.jpg and test/<class>/*.jpg (default /tmp/cifar10; extracted from
# CIFAR10_TAR=../shared/data/cifar10-jpg.tar.gz when missing). Each model gets OUT_ROOT/<model>/ (default
# /tmp/vitstudy_train); rerunning the script resumes unfinished runs. Defaults: a 20% class-balanced subset of
# the training split (10,000 images), 2,000 validation images, 3 epochs (1 warm-up + EPOCHS=2 cosine), 1 thread
# per run, both runs in parallel: about 25 minutes on 2 shared CPU cores (~20-25 images/s per run).
# The full quick recipe on all of CIFAR-10: FRACTION=1 VAL_IMAGES=null EPOCHS=4 (about 6 hours on 2 cores).
set -euo pipefail
ROOT=${1:-/tmp/cifar10}
OUT=${2:-/tmp/vitstudy_train}
shift $(( $# > 2 ? 2 : $# )) || true
FRACTION=${FRACTION:-0.2}
EPOCHS=${EPOCHS:-2}
VAL_IMAGES=${VAL_IMAGES:-2000}
THREADS=${THREADS:-1}
PY=${PY:-$(dirname "$0")/../.venv/bin/python}
if [ ! -d "$ROOT/train" ]; then
  mkdir -p "$ROOT"
  tar -xzf "${CIFAR10_TAR:-$(dirname "$0")/../../shared/data/cifar10-jpg.tar.gz}" -C "$ROOT"
fi
mkdir -p "$OUT"
pids=()
for model in vit_mini_cifar resnet_mini_cifar; do
  OMP_NUM_THREADS=$THREADS "$(dirname "$PY")/vitstudy" train model=$model recipe=quick dataset=imagefolder dataset.root="$ROOT" \
    dataset.fraction=$FRACTION recipe.epochs=$EPOCHS dataset.val_images=$VAL_IMAGES dataset.num_workers=0 threads=$THREADS \
    hydra.run.dir="$OUT/$model" "$@" > "$OUT/$model.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$OUT"/*.log
exit $status
