#!/usr/bin/env bash
# Issue 9: does the world DiT learn thin shapes (cross, star, ring) sooner with one token per
# latent pixel? At 64x64 an object spans ~2x2 latent pixels: one token under the recipe's 1x2x2
# patches, four under 1x1x1. Both arms train on one VAE, side by side on one GPU (each process
# gets about half of it) for the same wall time and the same tokens per step:
#   patch2: dit.patch_size=(1,2,2), BATCH clips per step  (the recipe's main bucket)
#   patch1: dit.patch_size=(1,1,1), BATCH/4 clips per step (4x the tokens per clip)
# Their graded training samples (sample_num_prompts prompts every EVERY steps, EMA weights) and
# losses go to WORKDIR/ab.json and a table.
#
#   tools/experiments/world_patch_ab.sh WORKDIR SECONDS [main.py flags...]
#   (SHAPE=17x64x64 BATCH=128 EVERY=1000 PROMPTS=48; CONFIG=configs/world.py:micro SHAPE=9x32x32
#    BATCH=8 EVERY=2 PROMPTS=2 for a CPU check)
set -uo pipefail
workdir=${1:?usage: world_patch_ab.sh WORKDIR SECONDS [flags...]}
seconds=${2:?usage: world_patch_ab.sh WORKDIR SECONDS [flags...]}
shift 2
config=${CONFIG:-configs/world.py}
shape=${SHAPE:-17x64x64}
batch=${BATCH:-128}
every=${EVERY:-1000}
prompts=${PROMPTS:-48}
(( batch % 4 == 0 )) || { echo "BATCH must be a multiple of 4, not $batch" >&2; exit 2; }
mkdir -p "$workdir"
main() { python -m sora_jax.main --config="$config" "$@"; }
stamp() { echo "[$(date +%T)] $*" | tee -a "$workdir/timeline.log"; }

if [[ ! -d "$workdir/vae/checkpoints" ]]; then
  stamp "vae start"
  main --workdir="$workdir" --stages=vae "$@" >"$workdir/vae.log" 2>&1 || stamp "vae failed ($?)"
  stamp "vae done"
fi
arm() {
  local name=$1 patch=$2 b=$3
  shift 3
  # Two processes on one GPU: neither may take JAX's default 75% of its memory (0.4 each leaves
  # room for a third, e.g. a compile benchmark).
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 main --workdir="$workdir/$name" --stages=dit \
    --config.dit_train.vae_workdir="$workdir/vae" --config.dit.patch_size="$patch" \
    --config.dit_train.buckets="(('$shape', $b, 1.0),)" \
    --config.dit_train.max_train_seconds="$seconds" --config.dit_train.sample_every_steps="$every" \
    --config.dit_train.sample_num_prompts="$prompts" "$@" >"$workdir/$name.log" 2>&1 \
    || stamp "$name failed ($?)"
}
stamp "arms start"
arm patch2 "(1,2,2)" "$batch" "$@" &
arm patch1 "(1,1,1)" $((batch / 4)) "$@" &
wait
stamp "arms done"
python - "$workdir" <<'EOF'
import json, os, sys
workdir = sys.argv[1]
out = {}
for arm in ("patch2", "patch1"):
    path = os.path.join(workdir, arm, "dit", "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    train = [r for r in rows if "loss" in r]
    out[arm] = {
        "steps": train[-1]["step"] if train else 0,
        "final_loss": train[-1]["loss"] if train else None,
        "steps_per_s": round(sorted(r["steps_per_s"] for r in train)[len(train) // 2], 1)
        if train else None,
        "samples": [{k: r[k] for k in r if k == "step" or k.startswith("sample_")}
                    for r in rows if "sample_shape_acc" in r],
        "shape_acc_by_shape": {},  # step -> {shape: accuracy}, from the samples' sidecars
    }
    samples = os.path.join(workdir, arm, "dit", "samples")
    for folder in sorted(os.listdir(samples) if os.path.isdir(samples) else [],
                         key=lambda name: int(name.split("_")[1])):
        by = {}
        for name in sorted(os.listdir(os.path.join(samples, folder))):
            if name.endswith(".json"):
                meta = json.load(open(os.path.join(samples, folder, name)))
                by.setdefault(meta["spec"]["objects"][0]["shape"], []).append(meta["grade"]["shape"])
        out[arm]["shape_acc_by_shape"][folder.split("_")[1]] = {
            k: round(sum(v) / len(v), 3) for k, v in sorted(by.items())}
json.dump(out, open(os.path.join(workdir, "ab.json"), "w"), indent=1)
print("| arm | steps | steps/s | final loss | shape accuracy of training samples (step: acc) |")
print("|---|---|---|---|---|")
for arm, r in out.items():
    acc = ", ".join(f"{s['step']}: {s['sample_shape_acc']:.2f}" for s in r["samples"])
    loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
    print(f"| {arm} | {r['steps']} | {r['steps_per_s']} | {loss} | {acc} |")
for arm, r in out.items():
    if r["shape_acc_by_shape"]:
        step, by = list(r["shape_acc_by_shape"].items())[-1]
        print(f"{arm} at step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in by.items()))
EOF
stamp "ab done"
