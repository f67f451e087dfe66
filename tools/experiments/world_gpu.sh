#!/usr/bin/env bash
# The world model on one GPU (issue 9), stage by stage (configs/world.py: ~23 min on an H100):
#   VAE (10,000 steps; the DiT's steps compile beside it) -> VAE on real footage (optional)
#   -> DiT (15,000 steps of 256 clips; the eval suite's programs compile beside it) -> eval suite.
#
#   tools/experiments/world_gpu.sh WORKDIR [FOOTAGE.npz|mp4,...] [extra main.py flags...]
#
# Pass the text encoder folder as an extra flag (--config.text.path=DIR); keep DIR (and the
# workdir) outside a checkout that may be re-synced while the script runs in the background.
# Each stage resumes from its newest checkpoint, so running the script again continues
# training where a call's end or a stage's time cap stopped it. Logs: WORKDIR/<stage>.log;
# results: WORKDIR/summary.json, WORKDIR/eval/, WORKDIR/vae/footage_eval.json, and all of them
# in WORKDIR/report.json and WORKDIR/report.md (the table of the evaluation sets).
# Everything it starts runs on the GPUs it is given: on a machine of several GPUs, one copy per
# GPU (CUDA_VISIBLE_DEVICES=0, 1, ...; each with its own WORKDIR) trains a run and its re-run side
# by side (tools/experiments/remote_run.sh poll_all returns them together).
set -uo pipefail
workdir=${1:?usage: world_gpu.sh WORKDIR [FOOTAGE] [flags...]}
footage=${2:-}
shift $(( $# >= 2 ? 2 : $# ))
mkdir -p "$workdir"
config=${CONFIG:-configs/world.py}  # e.g. CONFIG=configs/world.py:micro for a CPU check
# STAGE_NICE=<n> before a call runs that stage at a lower CPU priority (nice -n <n>).
main() { ${STAGE_NICE:+nice -n "$STAGE_NICE"} python -m sora_jax.main --config="$config" --workdir="$workdir" "$@"; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$workdir/timeline.log"; }
# DEADLINE=<unix seconds>: the training stages stop in time for the evaluation (deadline.sh).
source "$(dirname "${BASH_SOURCE[0]}")/deadline.sh"

# Only deterministic kernels (XLA leaves out the ones that are not, e.g. convolution algorithms
# that accumulate with atomics), so that a re-run repeats the numbers (issue 9's reproducibility;
# on the CPU two runs are bit-identical: tests/test_recipe_reproducible.py). DETERMINISTIC=0 lets
# XLA pick any kernel (needed with a max-pooling perceptual loss: XLA has no deterministic
# select-and-scatter); an XLA that does not know the flag runs without it, with a note.
if [[ "${DETERMINISTIC:-1}" == 1 ]]; then
  flag=--xla_gpu_exclude_nondeterministic_ops=true
  if XLA_FLAGS="${XLA_FLAGS:-} $flag" XLA_PYTHON_CLIENT_PREALLOCATE=false \
      python3 -c "import jax; jax.devices()" >/dev/null 2>&1; then
    export XLA_FLAGS="${XLA_FLAGS:-} $flag"
  else
    stamp "XLA does not know $flag: running without it"
  fi
fi
# XLA times candidate kernels when it compiles (autotuning), so two compiles of one program can
# pick different kernels with different rounding. Every stage reads and writes the choices in
# AUTOTUNE_DIR (default WORKDIR/autotune, one file per fusion): a re-run given the first run's
# directory (remote_run.sh: AUTOTUNE_TGZ) compiles the same kernels.
autotune=${AUTOTUNE_DIR:-$workdir/autotune}
mkdir -p "$autotune" && export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_per_fusion_autotune_cache_dir=$autotune"
# The machine's versions, for tools/world_report.py when the run ends before its report.json.
PYTHONPATH="tools${PYTHONPATH:+:$PYTHONPATH}" python3 -c "import json; from bench import report
print(json.dumps(report.versions('jax', 'flax')))" >"$workdir/versions.json" 2>/dev/null || true
# The VAE may take VAE_SHARE (default 0.3) of what is left before the deadline, the DiT the
# rest. The thirteenth run (0.25 of it; 15,000 steps per stage then) got 14,000 VAE and 11,000
# DiT steps, the fourteenth 9,500 and 11,200 (tools/bench/results/world_h100_run1{3,4}.json);
# the recipe now trains 10,000 and 15,000 (the sixteenth run: VAE 274 s, DiT 768 s for 11,000,
# so ~1,020 s for 15,000, on an H100), so 0.3 of a deadline that holds the recipe holds its VAE.
# Flags given to this script come after, so theirs win.
vae_cap=$(cap_flag vae_train "${VAE_SHARE:-0.3}")
stamp "vae start (XLA_FLAGS=${XLA_FLAGS:-}${vae_cap:+; $vae_cap})"
# Beside the VAE stage, the DiT's train steps, latent-cache encodes, caption encoder (its 28
# chunk shapes) and training-sample round (sampled once on untrained weights) compile into
# <workdir>/xla_cache (stage dit_compile; needs
# compile_cache=True, as configs/world.py has), so the DiT stage loads them (~3 s each) instead
# of compiling them at its start (~90-120 s each on an H200) or at its first round (38 s).
# Three compile threads leave the VAE's data workers most of the CPU; it allocates GPU memory
# only as needed. The DiT stage starts once the steps and encodes are cached (the file
# dit_compile.ready, or the stage's end): the round's compile (~48 s) goes on beside the DiT's
# start, instead of ahead of it (the fourteenth run waited 59 s for it after its VAE).
ready="$workdir/dit_compile.ready"
if [[ "${DIT_COMPILE:-1}" == 1 ]]; then
  rm -f "$ready"
  XLA_PYTHON_CLIENT_PREALLOCATE=false main --stages=dit_compile \
    --config.dit_train.precompile_threads=3 "$@" >"$workdir/dit_compile.log" 2>&1 &
  compiling=$!
fi
main --stages=vae $vae_cap "$@" >"$workdir/vae.log" 2>&1 || stamp "vae failed ($?)"
stamp "vae done"
if [[ -n "${compiling:-}" ]]; then
  while [[ ! -f "$ready" ]] && kill -0 "$compiling" 2>/dev/null; do sleep 1; done
  if [[ -f "$ready" ]]; then
    stamp "dit_compile steps ready"
  else
    wait "$compiling" || stamp "dit_compile failed (see dit_compile.log)"
    stamp "dit_compile done"
    compiling=
  fi
fi
if [[ -n "$footage" ]]; then
  python tools/eval_vae.py --config="$config" --workdir="$workdir/vae" \
    --videos="$footage" >"$workdir/footage.log" 2>&1 || stamp "footage eval failed ($?)"
  stamp "footage done"
fi
# Beside the DiT stage, the evaluation suite runs once on an untrained DiT (stage eval_compile)
# so that the eval stage after training loads its programs instead of compiling them (the
# suite took 277 s on an H200, mostly compiles). At a lower CPU priority (nice 10): it has the
# DiT stage's ~15 minutes to finish in (156 s in the seventeenth run), while the DiT's start
# (latent caches rendered by its workers, 36 s for the first bucket against 1-5 s for the
# others there, and its programs loaded) competes with its compile threads for the CPU.
if [[ "${EVAL_COMPILE:-1}" == 1 ]]; then
  XLA_PYTHON_CLIENT_PREALLOCATE=false STAGE_NICE=10 main --stages=eval_compile "$@" \
    >"$workdir/eval_compile.log" 2>&1 &
  eval_compiling=$!
fi
dit_cap=$(cap_flag dit_train 1.0)
[[ -z "$dit_cap" ]] || stamp "dit start ($dit_cap)"
main --stages=dit $dit_cap "$@" >"$workdir/dit.log" 2>&1 || stamp "dit failed ($?)"
stamp "dit done"
if [[ -n "${compiling:-}" ]]; then
  wait "$compiling" || stamp "dit_compile failed (see dit_compile.log)"
  stamp "dit_compile done"
fi
if [[ -n "${eval_compiling:-}" ]]; then
  wait "$eval_compiling" || stamp "eval_compile failed (see eval_compile.log)"
  stamp "eval_compile done"
fi
main --stages=eval "$@" >"$workdir/eval.log" 2>&1 || stamp "eval failed ($?)"
# REPLAY_SEEDS="0 ...": the suite's occlusion set and its variants again at these eval seeds,
# the scenes and noise of earlier runs (configs/world.py drew seed 0 until its twenty-second
# run), each in WORKDIR/seed<S>/ with links to the run's stages and compile cache: sampled by
# this run's weights, they tell scene by scene whether the run repeats an earlier one
# (tools/experiments/compare_runs.py EARLIER.json WORKDIR/seed<S>).
for seed in ${REPLAY_SEEDS:-}; do
  replay="$workdir/seed$seed"
  mkdir -p "$replay"
  for d in vae dit xla_cache; do [[ -e "$replay/$d" ]] || ln -s "../$d" "$replay/$d"; done
  # main() with this workdir: the run's flags, then the replay's own.
  workdir="$replay" main --stages=eval "$@" --config.eval.seed="$seed" \
    --config.eval.sets="('t2v_occlusion',)" --config.eval.variant_sets="('t2v_occlusion',)" \
    --config.eval.vae=False \
    >"$replay/eval.log" 2>&1 || stamp "replay of eval seed $seed failed ($?)"
  stamp "replay of eval seed $seed done"
done
# Every number in one JSON and the README's table of the sets (tools/world_report.py).
python tools/world_report.py --workdir="$workdir" --out="$workdir/report.json" \
  --device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" \
  >"$workdir/report.md" 2>&1 || stamp "report failed ($?)"
stamp "eval done"
