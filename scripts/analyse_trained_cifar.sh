#!/usr/bin/env bash
# Analyses on the CPU-trained CIFAR-10 models (make train-quick, or scripts/train_cifar_real.sh).
# Usage: scripts/analyse_trained_cifar.sh [CHECKPOINT_ROOT] [CIFAR10_DIR] [OUT]
V=$(dirname "$0")/../.venv/bin/vitstudy
CK=${1:-/tmp/vitstudy_train/f30_e4}
CIFAR=${2:-/tmp/cifar10}
OUT=${3:-/tmp/real}
VIT="model=vit_mini_cifar model.checkpoint=$CK/vit_mini_cifar/checkpoints/best.pt"
RES="model=resnet_mini_cifar model.checkpoint=$CK/resnet_mini_cifar/checkpoints/best.pt"
REF="reference=resnet_mini_cifar reference.checkpoint=$CK/resnet_mini_cifar/checkpoints/best.pt"
DATA="dataset=imagefolder dataset.root=$CIFAR/test dataset.num_workers=0 cache.dir="
export OMP_NUM_THREADS=1 VITSTUDY_CACHE=$OUT/cache
run() { name=$1; shift; echo "== $name"; $V run "$@" $DATA hydra.run.dir=$OUT/$name 2>&1 | grep "vitstudy" ; }
run attention_distance_vit analysis=attention_distance $VIT dataset.num_images=1024
run position_embedding_vit analysis=position_embedding $VIT dataset.num_images=8
run skip_ratio_vit analysis=skip_ratio $VIT dataset.num_images=512
run skip_ratio_resnet analysis=skip_ratio $RES dataset.num_images=512
run spatial_localization_vit analysis=spatial_localization $VIT dataset.num_images=1024
run spatial_localization_resnet analysis=spatial_localization $RES dataset.num_images=1024
run linear_probe_vit analysis=linear_probe $VIT dataset.num_images=3000
run linear_probe_resnet analysis=linear_probe $RES dataset.num_images=3000
run fourier analysis=fourier $VIT $REF layers=latents dataset.num_images=256
run feature_variance analysis=feature_variance $VIT $REF layers=latents dataset.num_images=256
run cka_within_vit analysis=cka_within $VIT layers=all dataset.num_images=1024
run cka_within_resnet analysis=cka_within $RES layers=all dataset.num_images=1024
run cka_across analysis=cka_across $VIT $REF dataset.num_images=1024
echo ALLDONE
