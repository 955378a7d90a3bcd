"""make bench: the report writer and the deployment-shaped config (measurements run in `make bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from apt_policy.bench import report as bench_all


def _results() -> dict:
    stage = {"p50": 10.0, "p90": 12.0, "p99": 20.0}
    return {
        "context": {
            "machine": "x86_64, 2 CPUs",
            "load_start": 1.0,
            "load_end": 2.0,
            "threads": 2,
            "total_s": 60,
        },
        "errors": {},
        "demo_model": {
            "params_M": 0.4,
            "cameras": 1,
            "image_size": [96, 96],
            "horizon": 16,
            "sampling_steps": 5,
            "flops": 2_000_000_000,
            "apt_bench": {
                "iters": 30,
                "results": {
                    "torch": {"preprocess": stage, "inference": {**stage, "p50": 40.0}, "total": stage},
                    "onnxruntime": {"preprocess": stage, "inference": {**stage, "p50": 10.0}, "total": stage},
                },
            },
        },
        "deployment": {
            "config": {
                "backbone": "Qwen3-VL-2B shape, 14 of 28 decoder layers",
                "cameras": 2,
                "image_size": [224, 224],
                "instruction_tokens": 32,
                "horizon": 16,
                "sampling_steps": 10,
                "expert": {"width": 1024, "stage2_layers": 18},
            },
            "params_M": 1728.0,
            "backbone_params_M": 1423.0,
            "expert_params_M": 306.0,
            "flops": 556e9,
            "latency_skipped": "needs ~9.0 GB, 3.0 GB available",
        },
        "preprocessing": {"decode 2 msgs (image_to_rgb)": {"p50": 0.01, "p90": 0.02, "p99": 0.03, "n": 100}},
        "control": [
            {
                "rate_hz": 100.0,
                "commands": 1500,
                "achieved_hz": 99.9,
                "jitter_p50_ms": 0.1,
                "jitter_p99_ms": 2.5,
                "jitter_max_ms": 9.0,
                "missed_ticks": 0,
                "node_lateness_p99_ms": 0.8,
                "inference_p50_ms": 12.0,
                "chunks": 50,
                "gaps": 1,
                "machine_stalls": 2,
                "machine_stall_max_ms": 12.5,
                "gaps_with_machine_stall": 1,
            }
        ],
    }


def test_markdown_has_every_section_and_the_measured_ratio(tmp_path: Path) -> None:
    results = _results()
    plots = bench_all._plots(results, tmp_path)
    assert (tmp_path / plots[0]).stat().st_size > 10_000
    text = bench_all.write_markdown(results, tmp_path, plots).read_text()
    assert "inference p50 ratio torch/onnxruntime: **4.00x**" in text
    assert "| onnxruntime | inference | 10.00 | 12.00 | 20.00 | 200.0 |" in text  # 2 GFLOP / 10 ms
    assert "| 1728M | 1423M | 306M | 556 | - | - | - |" in text
    assert "PyTorch latency not measured: needs ~9.0 GB" in text
    assert "| 100 | 1500 | 99.9 | 0.10 | 2.50 | 9.0 | 0 | 0.80 | 12.0 | 50 | 2 (12.5) | 1 of 1 |" in text
    assert "TensorRT" in text and "apt-export trt" in text and "![bench.png](bench.png)" in text


def test_deployment_shape_is_qwen3vl_2b_truncated_with_a_300m_expert() -> None:
    import torch
    from apt_policy.model.apt import APTModel

    config = bench_all.deployment_config()
    assert config.stage == 2 and config.horizon == 16 and len(config.cameras) == 2
    assert config.backbone["num_layers"] == 14 and config.backbone["text"]["hidden_size"] == 2048
    with torch.device("meta"):
        model = APTModel(config)
    expert = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.backbone.parameters())
    assert 250e6 < expert < 350e6


def test_deployment_onnx_run_reports_ratios_and_the_fp32_roofline(tmp_path: Path) -> None:
    """The --deploy-onnx path: torch timings come from the interleaved run; the report gives both ratios and
    whether 2.5x in fp32 is within this CPU's matmul peak."""
    results = _results()
    stage = {"p50": 5000.0, "p90": 5100.0, "p99": 5200.0}
    torch_t = {"preprocess": stage, "inference": {**stage, "p50": 6000.0}, "total": stage}
    dep = results["deployment"]
    dep.pop("latency_skipped")
    dep.update(
        torch_ms={**torch_t["inference"], "n": 3},
        export_s=500.0,
        onnxruntime_ms=stage,
        ratio_torch_over_fp32=1.2,
        ratio_torch_over_int8=4.0,
        apt_bench={
            "iters": 3,
            "threads": 2,
            "pairwise": True,
            "results": {"torch (with fp32)": torch_t, "onnxruntime fp32": {**torch_t, "inference": stage}},
        },
    )
    results["matmul_peak"] = {
        "n": 2048,
        "numpy_sgemm_gflops": 200.0,
        "ort_matmul_fp32_gflops": 130.0,
        "ort_matmul_int8_gops": 700.0,
    }
    text = bench_all.write_markdown(results, tmp_path, []).read_text()
    assert "fp32: **1.20x**, int8: **4.00x**" in text
    assert "PyTorch latency over 3 run(s)" in text
    # 556 GFLOP in 6 s is 92.7 GFLOP/s; 2.5x of it is 232 GFLOP/s > the 200 GFLOP/s peak
    assert "needs 232 GFLOP/s, 116% of this CPU's measured fp32 matmul peak (not reachable in fp32)" in text
    del dep["torch_ms"]["n"]
    assert "PyTorch latency over its runs" in bench_all.write_markdown(results, tmp_path, []).read_text()


def test_demo_model_compared_at_each_backends_faster_thread_count(tmp_path: Path) -> None:
    def run(torch_ms: float, ort_ms: float) -> dict:
        stage = {"p50": 1.0, "p90": 1.0, "p99": 1.0}
        return {
            "results": {
                "torch": {"inference": {**stage, "p50": torch_ms}},
                "onnxruntime": {"inference": {**stage, "p50": ort_ms}},
            }
        }

    by_threads = {"1": run(10.0, 4.0), "2": run(8.0, 6.0)}
    best = bench_all.best_thread_counts(by_threads)
    assert best == {"torch": {"threads": 2, "p50": 8.0}, "onnxruntime": {"threads": 1, "p50": 4.0}}
    results = _results()
    results["demo_model"].update(by_threads=by_threads, best_threads=best)
    text = bench_all.write_markdown(results, tmp_path, []).read_text()
    assert "| 1 | 10.00 | 4.00 | 2.50x |" in text and "| 2 | 8.00 | 6.00 | 1.33x |" in text
    assert "torch 8.00 ms (2 thread(s)), onnxruntime 4.00 ms (1 thread(s)): **2.00x**" in text
