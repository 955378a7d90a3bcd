"""Benchmark the backbone: PyTorch vs ONNX Runtime forward time, and the size of the real Qwen3-VL-2B.

    python -m apt_policy.model.backbone.bench [--threads 2] [--iters 10] [--skip-mid] [--json out.json]

Random weights (timing does not depend on values). Ratios are measured in one run on one machine;
absolute times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Qwen3VLBackboneConfig, TextConfig, VisionConfig
from .export_onnx import INPUT_NAMES, example_inputs, export_backbone_onnx
from .modeling import Qwen3VLBackbone


def mid_config() -> Qwen3VLBackboneConfig:
    """~45M parameters at the deployment image size (2 cameras x 224x224, 32 instruction tokens)."""
    return Qwen3VLBackboneConfig(
        vision=VisionConfig(
            depth=6,
            hidden_size=384,
            intermediate_size=1536,
            num_heads=6,
            out_hidden_size=512,
            deepstack_visual_indexes=(1, 3),
        ),
        text=TextConfig(
            vocab_size=8192,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            mrope_section=(12, 10, 10),
        ),
        image_token_id=8000,
        vision_start_token_id=8001,
        vision_end_token_id=8002,
        num_cameras=2,
        image_size=(224, 224),
        max_text_tokens=32,
    )


def _interleaved_median_ms(fns: dict[str, Any], iters: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each callable, calls interleaved so both see the same machine load."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def time_pytorch_vs_onnxruntime(cfg: Qwen3VLBackboneConfig, iters: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Qwen3VLBackbone(cfg).eval()
    inputs = example_inputs(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_backbone_onnx(model, Path(tmp) / "backbone.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}

    def run_torch() -> None:
        with torch.no_grad():
            model(*inputs)

    ms = _interleaved_median_ms({"torch": run_torch, "ort": lambda: session.run(None, feeds)}, iters)
    return {
        "params_M": model.num_parameters() / 1e6,
        "sequence_length": cfg.sequence_length,
        "gflops": forward_gflops(cfg),
        "pytorch_ms": ms["torch"],
        "onnxruntime_ms": ms["ort"],
        "pytorch_over_onnxruntime": ms["torch"] / ms["ort"],
    }


def forward_gflops(cfg: Qwen3VLBackboneConfig, batch_size: int = 1) -> float:
    """Matmul/conv GFLOPs (2 per multiply-add) of one forward, counted on the meta device (no weights)."""
    with torch.device("meta"):
        model = Qwen3VLBackbone(cfg)
        model._build_tables(torch.device("meta"))  # tables are built on CPU; keep everything on meta
        inputs = (
            torch.zeros(batch_size, cfg.num_cameras, 3, *cfg.image_size),
            torch.zeros(batch_size, cfg.max_text_tokens, dtype=torch.long),
            torch.ones(batch_size, cfg.max_text_tokens, dtype=torch.long),
        )
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(*inputs)
    return counter.get_total_flops() / 1e9


def size_of(cfg: Qwen3VLBackboneConfig) -> dict[str, Any]:
    """Parameter counts (meta device: nothing allocated) and GFLOPs of one forward."""
    with torch.device("meta"):
        model = Qwen3VLBackbone(cfg)
    vision = sum(p.numel() for p in model.visual.parameters())
    embed = model.language_model.embed_tokens.weight.numel()
    layers = sum(p.numel() for p in model.language_model.layers.parameters())
    return {
        "num_cameras": cfg.num_cameras,
        "num_layers": cfg.num_layers,
        "sequence_length": cfg.sequence_length,
        "params_M": (vision + embed + layers) / 1e6,
        "vision_params_M": vision / 1e6,
        "embedding_params_M": embed / 1e6,
        "decoder_params_M": layers / 1e6,
        "gflops": forward_gflops(cfg),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--iters", type=int, default=10, help="timed forwards per backend (median reported)")
    parser.add_argument("--skip-mid", action="store_true", help="only time the tiny config")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results: dict[str, Any] = {"threads": args.threads, "timing": {}, "qwen3vl_2b": []}
    configs = {"tiny": Qwen3VLBackboneConfig.tiny(num_cameras=2)}
    if not args.skip_mid:
        configs["mid"] = mid_config()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["load_average_1min"] = load
    print(
        f"PyTorch eager vs ONNX Runtime (CPU, {args.threads} threads, median of {args.iters} interleaved"
        f" calls, batch 1; load average {load:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'config':>6} {'params':>9} {'seq':>5} {'GFLOPs':>8} {'torch ms':>9} {'ORT ms':>8} {'torch/ORT':>9}"
    )
    for name, cfg in configs.items():
        r = time_pytorch_vs_onnxruntime(cfg, args.iters, args.threads)
        results["timing"][name] = r
        print(
            f"{name:>6} {r['params_M']:>8.2f}M {r['sequence_length']:>5} {r['gflops']:>8.3f}"
            f" {r['pytorch_ms']:>9.2f} {r['onnxruntime_ms']:>8.2f} {r['pytorch_over_onnxruntime']:>9.2f}"
        )

    print("\nQwen3-VL-2B shape (no weights; 224x224 per camera, 32 instruction tokens, batch 1)")
    print(f"{'cams':>4} {'layers':>6} {'seq':>5} {'params':>9} {'vision':>8} {'embed':>8}", end="")
    print(f" {'decoder':>8} {'GFLOPs':>8}")
    for cams, layers in ((1, None), (2, None), (2, 14)):
        s = size_of(Qwen3VLBackboneConfig.qwen3vl_2b(num_cameras=cams, max_text_tokens=32, num_layers=layers))
        results["qwen3vl_2b"].append(s)
        print(
            f"{cams:>4} {s['num_layers']:>6} {s['sequence_length']:>5} {s['params_M']:>8.1f}M"
            f" {s['vision_params_M']:>7.1f}M {s['embedding_params_M']:>7.1f}M {s['decoder_params_M']:>7.1f}M"
            f" {s['gflops']:>8.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
