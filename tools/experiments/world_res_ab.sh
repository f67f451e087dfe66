#!/usr/bin/env bash
# Issue 9: the world rendered at 128x128 against 64x64, side by side on one GPU and one VAE
# (tools/experiments/world_arms.sh), every arm at the same time per step
# (tools/bench/results/world_dit_res128_h200.json):
#   base64    17x64x64 clips at batch BATCH (128), 1x2x2 patches: 80 tokens a clip
#   res128    17x128x128 clips at batch RES_BATCH (32), 1x2x2 patches: 320 tokens a clip (an
#             object covers twice the latent pixels in each direction; a quarter of the clips)
#   res128p4  17x128x128 clips at batch BATCH, 1x4x4 patches: 80 tokens a clip, each token 4x4
#             latent pixels (the latents of res128, the clips and tokens of base64)
# All with the 384-wide DiT, STEPS steps (10,000) with the cosine schedule ending there, graded
# training samples every EVERY steps, then the t2v and occlusion sets of the evaluation suite per
# arm (the same prompts, seeds and scenes at either size) and the scene-by-scene comparison
# (WORKDIR/arms.json). ARMS picks some of them (default: all three).
#
#   tools/experiments/world_res_ab.sh WORKDIR [flags for every stage, e.g. --config.text.path=DIR]
#
# CAP_SECONDS (1100) stops an arm that runs far slower than expected. CPU check (minutes):
#   CONFIG=configs/world.py:micro STEPS=2 EVERY=2 PROMPTS=2 SHAPE=9x32x32 BATCH=8 \
#     RES_SHAPE=9x64x64 RES_BATCH=2 tools/experiments/world_res_ab.sh /tmp/ab --config.text.path=
set -uo pipefail
workdir=${1:?usage: world_res_ab.sh WORKDIR [flags...]}
shift
export STEPS=${STEPS:-10000} EVERY=${EVERY:-2000} EVAL_SETS=${EVAL_SETS:-t2v,t2v_occlusion}
batch=${BATCH:-128}
res_shape=${RES_SHAPE:-17x128x128}
res_batch=${RES_BATCH:-32}
IFS=x read -r _ res_h res_w <<<"$res_shape"
at_res="--config.world.resolutions=(($res_h,$res_w),) --config.sample.height=$res_h"
at_res+=" --config.sample.width=$res_w --config.eval.shape=$res_shape"
declare -A flags=(
  [base64]=""
  [res128]="--config.dit_train.buckets=(('$res_shape',$res_batch,1.0),) $at_res"
  [res128p4]="--config.dit_train.buckets=(('$res_shape',$batch,1.0),) $at_res --config.dit.patch_size=(1,4,4)"
)
arms=()
for name in ${ARMS:-base64 res128 res128p4}; do
  [[ -v "flags[$name]" ]] || { echo "world_res_ab.sh: unknown arm $name" >&2; exit 2; }
  arms+=("$name=${flags[$name]}")
done
BATCH=$batch exec bash "$(dirname "$0")/world_arms.sh" "$workdir" "${CAP_SECONDS:-1100}" \
  --config.dit.dim=384 --config.dit.ffn_dim=1536 --config.dit.num_heads=6 "$@" -- "${arms[@]}"
