"""sora_jax/train/trace_summary.py: device time per kernel read from a profiler trace."""

import gzip
import json

import numpy as np
import pytest

from sora_jax.train import trace_summary


def _gpu_trace() -> dict:
    """A Perfetto trace as CUPTI writes it on one GPU: kernels on a stream of /device:GPU:0,
    their launches (also tagged hlo_op) on a host thread, and CUPTI's own overhead."""
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "python"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 1,
         "args": {"name": "Stream #13(Kernel,MemcpyH2D)"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 2, "args": {"name": "CUPTI overhead"}},
    ]  # fmt: skip

    def kernel(name, dur, ts):
        return {"ph": "X", "pid": 2, "tid": 1, "name": name, "dur": dur, "ts": ts}

    # Two iterations of 1,000 us each: 600 us of kernels (the GEMM and the fusion overlap by
    # 50 us: 550 us busy), then the device waits 450 us.
    events = []
    for t in (0.0, 1000.0):
        events += [kernel("nvjet_sm90_tst_256x128", 300.0, t),
                   kernel("loop_add_fusion", 50.0, t + 250),
                   kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 150.0, t + 300),
                   kernel("sm90_xmma_fprop_implicit_gemm_bf16", 100.0, t + 450)]  # fmt: skip
    events += [
        {"ph": "X", "pid": 1, "tid": 7, "name": "launch", "dur": 999.0, "args": {"hlo_op": "x"}},
        {"ph": "X", "pid": 1, "tid": 7, "name": "cuLaunchKernelEx", "dur": 6.0},
        {"ph": "X", "pid": 1, "tid": 7, "name": "cuLaunchKernelEx", "dur": 4.0},
        {"ph": "X", "pid": 1, "tid": 7, "name": "cuGraphLaunch", "dur": 20.0},
        {"ph": "X", "pid": 1, "tid": 7, "name": "curious_python_function", "dur": 50.0},
        {"ph": "X", "pid": 2, "tid": 2, "name": "overhead", "dur": 999.0},
        {"ph": "X", "pid": 2, "tid": 1, "name": "zero_length", "dur": 0},
    ]
    return {"traceEvents": meta + events}


def test_gpu_kernels_are_read_from_the_device_streams_only():
    events = trace_summary.kernel_events(_gpu_trace())
    assert sorted({n for n, _ in events}) == [
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "loop_add_fusion",
        "nvjet_sm90_tst_256x128", "sm90_xmma_fprop_implicit_gemm_bf16"]  # fmt: skip
    assert sum(d for _, d in events) == 1200.0


def test_summary_is_per_iteration_and_categorised(tmp_path):
    path = tmp_path / "plugins" / "profile" / "run" / "host.trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump(_gpu_trace(), f)
    s = trace_summary.summarize_dir(str(tmp_path), iters=2)
    assert s["total_ms"] == pytest.approx(0.6) and s["kernels"] == 4
    # Busy 550 us of each 1,000: the last iteration's span ends with its last kernel (1,550 us).
    assert s["busy_ms"] == pytest.approx(0.55) and s["span_ms"] == pytest.approx(0.775)
    cats = {c: round(v["ms_per_iter"], 6) for c, v in s["categories"].items()}
    # nvjet: cuBLASLt's GEMMs; cuDNN's flash attention is attention, its convolutions conv.
    assert cats == {"matmul": 0.3, "attention": 0.15, "conv": 0.1, "fusion": 0.05}
    assert [r["kernel"] for r in s["rows"]][0] == "nvjet_sm90_tst_256x128"
    np.testing.assert_allclose(sum(r["pct"] for r in s["rows"]), 100.0)
    approx = pytest.approx
    # Where the work was issued from: one launch (999 us) on the python thread, CUDA API calls
    # by host time (not a Python function that merely starts with "cu").
    assert s["host"] == {
        "launches_per_iter": 0.5,
        "launch_ms_per_iter": pytest.approx(0.4995),
        "launch_threads": ["python"],
        "cuda_api": [
            {"call": "cuGraphLaunch", "calls_per_iter": 0.5, "ms_per_iter": approx(0.01)},
            {"call": "cuLaunchKernelEx", "calls_per_iter": 1.0, "ms_per_iter": approx(0.005)},
        ],
    }


def test_dtype_conversions_are_not_convolutions():
    for name in ("input_convert_transpose_fusion_22", "loop_convert_multiply_fusion_11"):
        assert trace_summary.category(name) == "fusion"
    assert trace_summary.category("wrapped_convert_186") == "fusion"
    for name in ("sm90_xmma_fprop_implicit_gemm_bf16", "cudnn::cnn::conv2d_grouped_direct_kernel",
                 "convolution_fusion_convert"):  # fmt: skip
        assert trace_summary.category(name) == "conv"


def test_no_trace_or_no_kernels_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz under"):
        trace_summary.summarize_dir(str(tmp_path), iters=1)
    with pytest.raises(ValueError, match="no kernel events"):
        trace_summary.summarize([], iters=1)
