#!/usr/bin/env bash
# Issue 4's open questions about the DiT block, in one GPU call (~3 min on an H200):
#   1. which kernels a Wan-1.3B block's forward and forward+backward spend their time in
#      (tools/bench/dit_profile.py: a jax.profiler trace summed per kernel);
#   2. whether XLA options move the block's time: cuBLASLt GEMMs (GELU and bias epilogues fused
#      into the GEMM) and cuBLAS instead of Triton for GEMM fusions (tools/bench/dit_block.py).
#
#   tools/experiments/dit_gpu_probes.sh OUT_DIR        (TINY=1: toy sizes, a CPU check)
set -uo pipefail
out=${1:?usage: dit_gpu_probes.sh OUT_DIR}
mkdir -p "$out"
quiet() { grep -v "^[IW][0-9]\|Warning\|warn("; }
tiny=${TINY:+--tiny}
timeout 150 python tools/bench/dit_profile.py $tiny --iters=3 --out="$out/dit_profile.json" 2>&1 | quiet
for flags in "" --xla_gpu_enable_cublaslt=true --xla_gpu_enable_triton_gemm=false; do
  name=${flags#--xla_gpu_}; name=${name//=/_}  # e.g. enable_triton_gemm_false
  echo "== XLA_FLAGS=$flags"
  XLA_FLAGS="$flags" timeout 90 python tools/bench/dit_block.py $tiny --variants=block \
    --out="$out/dit_block_${name:-default}.json" 2>&1 | quiet | tail -2
done
