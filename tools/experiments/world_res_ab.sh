#!/usr/bin/env bash
# Issue 9: the world rendered at 128x128 against 64x64, side by side on one GPU and one VAE
# (tools/experiments/world_arms.sh), at the same tokens per step and so the same time per step
# (tools/bench/results/world_dit_res128_h200.json): base64 trains 17x64x64 clips at batch 128
# (80 tokens each), res128 17x128x128 clips at batch 32 (320 tokens each; an object covers twice
# the latent pixels in each direction). Both the 384-wide DiT, STEPS steps (13,000) with the
# cosine schedule ending there, graded training samples every EVERY steps, then the t2v and
# occlusion sets of the evaluation suite per arm (the same prompts, seeds and scenes at either
# size) and the scene-by-scene comparison (WORKDIR/arms.json).
#
#   tools/experiments/world_res_ab.sh WORKDIR [flags for every stage, e.g. --config.text.path=DIR]
#
# CAP_SECONDS (1000) stops an arm that runs far slower than expected. CPU check (minutes):
#   CONFIG=configs/world.py:micro STEPS=2 EVERY=2 PROMPTS=2 SHAPE=9x32x32 BATCH=8 \
#     RES_SHAPE=9x64x64 RES_BATCH=2 tools/experiments/world_res_ab.sh /tmp/ab --config.text.path=
set -uo pipefail
workdir=${1:?usage: world_res_ab.sh WORKDIR [flags...]}
shift
export STEPS=${STEPS:-13000} EVERY=${EVERY:-2000} EVAL_SETS=${EVAL_SETS:-t2v,t2v_occlusion}
res_shape=${RES_SHAPE:-17x128x128}
res_batch=${RES_BATCH:-32}
IFS=x read -r _ res_h res_w <<<"$res_shape"
res="--config.dit_train.buckets=(('$res_shape',$res_batch,1.0),)"
res+=" --config.world.resolutions=(($res_h,$res_w),) --config.sample.height=$res_h"
res+=" --config.sample.width=$res_w --config.eval.shape=$res_shape"
exec bash "$(dirname "$0")/world_arms.sh" "$workdir" "${CAP_SECONDS:-1000}" \
  --config.dit.dim=384 --config.dit.ffn_dim=1536 --config.dit.num_heads=6 "$@" -- \
  base64="" res128="$res"
