"""The GPU benchmark's CPU-independent parts: arguments, run plan and skip reasons, the table."""

from __future__ import annotations

import pytest
from apt_policy.bench.gpu import MODES, SHAPES, Result, format_table, parse_args, percentiles, plan


def test_defaults_cover_every_shape_and_mode_and_bad_counts_are_refused():
    args = parse_args([])
    assert args.shapes == list(SHAPES) and args.modes == list(MODES) and args.dtype == "fp32"
    args = parse_args(["--shapes", "demo", "--modes", "eager", "cudagraph", "--dtype", "bf16", "--iters=7"])
    assert args.shapes == ["demo"] and args.modes == ["eager", "cudagraph"] and args.iters == 7
    with pytest.raises(SystemExit):
        parse_args(["--iters", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--modes", "tensorrt"])


def test_plan_says_why_a_mode_cannot_run():
    no_gpu = plan(["demo"], ["eager", "ort-cuda"], cuda=False, ort_providers=["CPUExecutionProvider"])
    assert [j.mode for j in no_gpu] == ["eager", "ort-cuda"] and all("no CUDA" in j.skip for j in no_gpu)
    gpu = plan(SHAPES, MODES, cuda=True, ort_providers=["CPUExecutionProvider"])
    assert len(gpu) == len(SHAPES) * len(MODES)
    assert {j.mode for j in gpu if j.skip} == {"ort-cuda"} and "onnxruntime-gpu" in gpu[-1].skip
    full = plan(SHAPES, MODES, cuda=True, ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not any(j.skip for j in full)


def test_table_has_the_bench_columns_rates_and_speedups():
    eager, graph = percentiles([10.0] * 9 + [30.0]), percentiles([4.0, 5.0, 6.0])
    assert eager["p50"] == 10.0 and eager["p99"] > eager["p90"] >= eager["p50"] and graph["n"] == 3
    table = format_table(
        [
            Result("deployment", "eager", 556_000_000_000, eager),
            Result("deployment", "cudagraph", 556_000_000_000, graph),
            Result("deployment", "ort-cuda", skip="onnxruntime has no CUDAExecutionProvider"),
            Result("demo", "compile", 67_000_000, error="RuntimeError: boom"),
        ],
        "NVIDIA H100",
    )
    assert "| shape | backend | stage | p50 ms | p90 ms | p99 ms | GFLOP/s (inference p50) |" in table
    assert "| deployment | eager | inference | 10.00 |" in table and "| 55600.0 |" in table
    assert "| deployment | cudagraph | inference | 5.00 |" in table and "| 111200.0 |" in table
    assert "no CUDAExecutionProvider" in table and "error: RuntimeError: boom" in table
    assert "deployment: speed-up over eager (p50): cudagraph 2.00x" in table
