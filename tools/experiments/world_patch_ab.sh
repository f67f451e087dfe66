#!/usr/bin/env bash
# Issue 9: does the world DiT learn thin shapes (cross, star, ring) sooner with one token per
# latent pixel? At 64x64 an object spans ~2x2 latent pixels: one token under the recipe's 1x2x2
# patches, four under 1x1x1. Both arms train side by side on one VAE (world_arms.sh) for the same
# wall time and the same tokens per step:
#   patch2: dit.patch_size=(1,2,2), BATCH clips per step  (the recipe's main bucket)
#   patch1: dit.patch_size=(1,1,1), BATCH/4 clips per step (4x the tokens per clip)
# Measured 2026-12-03 on an H200 (tools/bench/results/world_patch_ab_h200.json): patch2 learns
# shapes sooner (0.54 against 0.29 at 8,000 steps).
#
#   tools/experiments/world_patch_ab.sh WORKDIR SECONDS [main.py flags...]
#   (SHAPE=17x64x64 BATCH=128 EVERY=1000 PROMPTS=48; CONFIG=configs/world.py:micro SHAPE=9x32x32
#    BATCH=8 EVERY=2 PROMPTS=2 for a CPU check)
set -uo pipefail
workdir=${1:?usage: world_patch_ab.sh WORKDIR SECONDS [flags...]}
seconds=${2:?usage: world_patch_ab.sh WORKDIR SECONDS [flags...]}
shift 2
batch=${BATCH:-128}
(( batch % 4 == 0 )) || { echo "BATCH must be a multiple of 4, not $batch" >&2; exit 2; }
exec "$(dirname "$0")/world_arms.sh" "$workdir" "$seconds" "$@" -- \
  patch2="--config.dit.patch_size=(1,2,2)" \
  patch1="--config.dit.patch_size=(1,1,1) --config.dit_train.buckets=(('${SHAPE:-17x64x64}',$((batch / 4)),1.0),)"
