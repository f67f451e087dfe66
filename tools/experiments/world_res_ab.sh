#!/usr/bin/env bash
# Issue 9: the world rendered at 128x128 against 64x64, side by side on one GPU and one VAE
# (tools/experiments/world_arms.sh), every arm at the same tokens per step
# (tools/bench/results/world_dit_res128_h200.json):
#   base64      17x64x64 clips at batch BATCH (128), 1x2x2 patches: 80 tokens a clip, flow
#               shift 1 (the world of runs 1-9)
#   res128      17x128x128 clips at batch RES_BATCH (32), 1x2x2 patches: 320 tokens a clip (an
#               object covers twice the latent pixels in each direction; a quarter of the
#               clips), flow shift 2 (SD3's resolution shift for 4x the latent pixels)
#   res128p4    17x128x128 clips at batch BATCH, 1x4x4 patches: 80 tokens a clip, each token
#               4x4 latent pixels (the latents of res128, the clips and tokens of base64),
#               flow shift 2
#   res128p4s1  res128p4 at flow shift 1 (the tenth run's recipe)
# Every arm names its size, patches, bucket and shift, so none depends on the config. All
# with the 384-wide DiT, STEPS steps (10,000) with the cosine schedule ending there, graded
# training samples every EVERY steps, then the t2v and occlusion sets of the evaluation suite per
# arm (the same prompts, seeds and scenes at either size) and the scene-by-scene comparison
# (WORKDIR/arms.json). ARMS picks some of them (default: all four). The one VAE is runs 1-10's,
# 4x8x8 to 16 channels, trained on 17x128x128 clips (`vae8` below: configs/world.py compresses
# 4x16x16 to 32 channels since the eleventh run).
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
shape=${SHAPE:-17x64x64}
res_shape=${RES_SHAPE:-17x128x128}
res_batch=${RES_BATCH:-32}
# at SHAPE BATCH PATCH SHIFT: the flags of an arm that trains and samples at SHAPE.
at() {
  local h w
  IFS=x read -r _ h w <<<"$1"
  echo "--config.dit_train.buckets=(('$1',$2,1.0),) --config.world.resolutions=(($h,$w),)" \
    "--config.sample.height=$h --config.sample.width=$w --config.eval.shape=$1" \
    "--config.dit.patch_size=$3 --config.flow.shift=$4"
}
declare -A flags=(
  [base64]="$(at "$shape" "$batch" "(1,2,2)" 1.0)"
  [res128]="$(at "$res_shape" "$res_batch" "(1,2,2)" 2.0)"
  [res128p4]="$(at "$res_shape" "$batch" "(1,4,4)" 2.0)"
  [res128p4s1]="$(at "$res_shape" "$batch" "(1,4,4)" 1.0)"
)
arms=()
for name in ${ARMS:-base64 res128 res128p4 res128p4s1}; do
  [[ -v "flags[$name]" ]] || { echo "world_res_ab.sh: unknown arm $name" >&2; exit 2; }
  arms+=("$name=${flags[$name]}")
done
vae8=(--config.vae.channel_mults="(1,2,4)" --config.vae.temporal_downsample="(True,True)"
  --config.vae.z_channels=16 --config.dit.in_channels=16 --config.dit.out_channels=16)
BATCH=$batch exec bash "$(dirname "$0")/world_arms.sh" "$workdir" "${CAP_SECONDS:-1100}" \
  --config.dit.dim=384 --config.dit.ffn_dim=1536 --config.dit.num_heads=6 "${vae8[@]}" "$@" \
  -- "${arms[@]}"
