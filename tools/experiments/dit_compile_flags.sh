#!/usr/bin/env bash
# Which XLA options shorten the DiT train-step compile on a GPU (issue 9: the world recipe's five
# bucket compiles took 327 s of a 400 s DiT budget on the H200). Each variant is a fresh process
# compiling the 17x64x64 bucket of configs/world.py, then all five buckets at once (the loop's
# precompile). Appends to OUT_JSON (default tools/bench/results/dit_compile_h200.json).
#
#   tools/experiments/dit_compile_flags.sh [SECONDS_PER_VARIANT]
set -uo pipefail
limit=${1:-150}
out=${OUT_JSON:-tools/bench/results/dit_compile_h200.json}
bench() { timeout "$limit" python3 tools/bench/dit_compile.py --config=configs/world.py --out="$out" "$@" 2>&1 | grep -v "^[IW][0-9]" | tail -9; }
# The step compiles in 14 s on this 2-core CPU and 96 s on the H200 even without autotuning
# (2026-12-02, label autotune0): the GPU pipeline's own passes, e.g. a Triton kernel per GEMM fusion.
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false bench --buckets=0 --label=no_triton_gemm
XLA_FLAGS=--xla_gpu_enable_command_buffer= bench --buckets=0 --label=no_command_buffer
# The fusion autotuner (XLA's native emitter against Triton, per fusion) made compiles of large
# fusions 10-100x slower elsewhere (github.com/tue-bmd/zea/issues/599).
XLA_FLAGS=--xla_gpu_experimental_enable_fusion_autotuner=false bench --buckets=0 \
  --label=no_fusion_autotuner
XLA_FLAGS=--xla_gpu_enable_libnvptxcompiler=true bench --buckets=0 --label=libnvptxcompiler
XLA_FLAGS=--xla_gpu_enable_llvm_module_compilation_parallelism=true bench --buckets=0 --label=llvm_parallel
bench --buckets=0 --label=default
bench --parallel --label=parallel_all_buckets
