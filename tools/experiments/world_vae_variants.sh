#!/usr/bin/env bash
# Variants of the world VAE (configs/world.py's shape: 4x8x8 -> 16 channels, base 64, on the full
# world at 64x64) trained concurrently on one GPU by tools/experiments/vae_learning_sweep.py, to
# find settings that reach issue 3's 34 dB. Each variant writes $OUT/vs_<name>.json after every
# evaluation (300, 600, 1200, 1800, 2400 steps), so a time limit keeps what was measured.
#
#   OUT=/tmp/out tools/experiments/world_vae_variants.sh [SECONDS]   # default 540
set -uo pipefail
limit=${1:-540}
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
world='"full_world": true, "res": 64, "frames": 17, "bc": 64, "mults": [1, 2, 4, 4],
       "td": [false, true, true], "z": 16, "steps": 2400, "dtype": "bfloat16",
       "evals": [300, 600, 1200, 1800, 2400]'
run() {  # NAME NORM JSON-EXTRA
  NORM=$2 timeout "$limit" python3 tools/experiments/vae_learning_sweep.py "$1" \
    "{$world, $3}" >"$OUT/$1.log" 2>&1 &
}
run rms_b16_lr15 rms '"B": 16, "lr": 0.0015'  # configs/world.py's settings until 2026-12-02
run sc_rms_b16_lr15 rms '"B": 16, "lr": 0.0015, "sc": true'  # + VAEConfig.shortcuts
run sc_none_b16_lr2 none '"B": 16, "lr": 0.002, "sc": true'
run sc_none_b16_lr3 none '"B": 16, "lr": 0.003, "sc": true'
wait
grep -h " 2400 \| 1800 \| 1200 " "$OUT"/*.log | sort
