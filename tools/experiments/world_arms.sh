#!/usr/bin/env bash
# Issue 9: DiT variants of the world recipe trained side by side on one GPU, on one VAE, for the
# same wall time, each on the main bucket (SHAPE at BATCH clips; an arm's flags may override
# it), with graded training samples (PROMPTS prompts every EVERY steps, EMA weights); the table
# and WORKDIR/arms.json come from tools/experiments/arms_report.py (the last 3 rounds pooled).
#
#   tools/experiments/world_arms.sh WORKDIR SECONDS [flags for every stage...] -- \
#       NAME="FLAGS" [NAME="FLAGS"...]
#
# FLAGS are main.py flags without spaces inside one flag, e.g.
#   lr1e3="--config.dit_train.lr=1e-3"
#   patch1="--config.dit.patch_size=(1,1,1) --config.dit_train.buckets=(('17x64x64',32,1.0),)"
# STEPS sets every arm's schedule length (default: the config's); each arm gets 0.9/N of the
# GPU's memory. EVAL_SETS (e.g. t2v,t2v_occlusion) also evaluates every arm on those sets of the
# evaluation suite (its own flags apply, e.g. --config.eval.shape; no sampler variants), and the
# report then compares the arms scene by scene on the occlusion set.
# Each arm's train steps compile beside the VAE stage (stage dit_compile, into the arm's
# <workdir>/xla_cache; the config must have compile_cache=True, as configs/world.py has) and its
# evaluation's programs beside the training (stage eval_compile); PRECOMPILE=0 leaves both out.
# CPU check: CONFIG=configs/world.py:micro SHAPE=9x32x32 BATCH=8 EVERY=2 PROMPTS=2
set -uo pipefail
workdir=${1:?usage: world_arms.sh WORKDIR SECONDS [flags...] -- NAME=FLAGS...}
seconds=${2:?usage: world_arms.sh WORKDIR SECONDS [flags...] -- NAME=FLAGS...}
shift 2
common=()
while (( $# )) && [[ $1 != -- ]]; do common+=("$1"); shift; done
(( $# )) && shift
(( $# )) || { echo "world_arms.sh: no arms after --" >&2; exit 2; }
config=${CONFIG:-configs/world.py}
shape=${SHAPE:-17x64x64}
batch=${BATCH:-128}
every=${EVERY:-1000}
prompts=${PROMPTS:-48}
precompile=${PRECOMPILE:-1}
steps=()
[[ -n "${STEPS:-}" ]] && steps=(--config.dit_train.steps="$STEPS")
fraction=$(python3 -c "print(round(0.9 / $#, 3))")
mkdir -p "$workdir"
main() { python -m sora_jax.main --config="$config" "$@"; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$workdir/timeline.log"; }

# arm_flags NAME=FLAGS: sets `name` and `flags`, the arm's DiT-stage flags (the same for its
# dit_compile, so that the stage finds the compiled steps).
arm_flags() {
  name=${1%%=*}
  local own
  read -ra own <<<"${1#*=}"
  # The main bucket unless the arm names its own (a flag given twice does not override).
  local bucket=(--config.dit_train.buckets="(('$shape',$batch,1.0),)")
  [[ " ${own[*]} " == *" --config.dit_train.buckets="* ]] && bucket=()
  flags=(--workdir="$workdir/$name" --config.dit_train.vae_workdir="$workdir/vae" "${bucket[@]}"
         --config.dit_train.max_train_seconds="$seconds" --config.dit_train.sample_every_steps="$every"
         --config.dit_train.sample_num_prompts="$prompts" "${steps[@]}" "${common[@]}" "${own[@]}")
}
# eval_flags: the evaluation's flags after arm_flags (EVAL_SETS as a tuple, no variants).
eval_flags() {
  flags+=(--config.eval.sets="($(sed "s/[^,][^,]*/'&'/g" <<<"$EVAL_SETS"),)"
          --config.eval.t2v_variants="()")
}

compiling=()
if [[ ! -d "$workdir/vae/checkpoints" ]]; then
  stamp "vae start"
  if [[ "$precompile" == 1 ]]; then
    for spec in "$@"; do
      arm_flags "$spec"
      XLA_PYTHON_CLIENT_PREALLOCATE=false main --stages=dit_compile \
        --config.dit_train.precompile_threads=2 "${flags[@]}" >"$workdir/$name.compile.log" 2>&1 &
      compiling+=($!)
    done
  fi
  main --workdir="$workdir" --stages=vae "${common[@]}" >"$workdir/vae.log" 2>&1 \
    || stamp "vae failed ($?)"
  stamp "vae done"
fi
for pid in "${compiling[@]}"; do wait "$pid" || stamp "a dit_compile failed (see *.compile.log)"; done
(( ${#compiling[@]} )) && stamp "dit_compile done"
names=()
compiling=()
stamp "arms start"
for spec in "$@"; do
  arm_flags "$spec"
  names+=("$name")
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction main --stages=dit "${flags[@]}" \
    >"$workdir/$name.log" 2>&1 || stamp "$name failed ($?)" &
  if [[ -n "${EVAL_SETS:-}" && "$precompile" == 1 ]]; then
    eval_flags
    XLA_PYTHON_CLIENT_PREALLOCATE=false main --stages=eval_compile "${flags[@]}" \
      >"$workdir/$name.eval_compile.log" 2>&1 &
    compiling+=($!)
  fi
done
wait
stamp "arms done"
if [[ -n "${EVAL_SETS:-}" ]]; then
  stamp "evals start"
  for spec in "$@"; do
    arm_flags "$spec"
    eval_flags
    XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction main --mode=eval "${flags[@]}" \
      >"$workdir/$name.eval.log" 2>&1 || stamp "$name eval failed ($?)" &
  done
  wait
  stamp "evals done"
fi
python3 tools/experiments/arms_report.py "$workdir" "${names[@]}"
stamp "ab done"
