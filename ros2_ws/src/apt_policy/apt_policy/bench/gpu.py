"""GPU inference benchmark: torch CUDA (eager, torch.compile, CUDA graphs) and ONNX Runtime's CUDA provider.

    python -m apt_policy.bench.gpu [--shapes demo deployment] [--modes eager compile cudagraph ort-cuda]
                                   [--dtype fp32|bf16|fp16] [--iters 50] [--json gpu_bench.json]

For each shape (the cached demo model, and the random-weight deployment shape of ``make bench``) and each
mode it times one full inference (``bench.report.full_inference``: prefix, the history token for an
action-prior model, every flow step) with CUDA events after warm-up, and prints the same table as ``make
bench`` (p50 / p90 / p99 ms, GFLOP/s at p50). ``--model-bundle`` / ``--model-export`` choose another demo
shape: any APT or action-prior bundle and its fp32 export.

* ``eager``      the model as is, under ``torch.inference_mode``;
* ``compile``    ``torch.compile(step)`` (default mode; the first calls compile, they are warm-up);
* ``cudagraph``  the whole step captured once in a ``torch.cuda.CUDAGraph`` on static input buffers and
                 replayed (the inputs are copied into those buffers first, as a runtime would);
* ``ort-cuda``   ``load_policy(export, "onnxruntime", providers=["CUDAExecutionProvider"])`` on an fp32
                 export (the demo's cached export; the deployment shape is exported to a temp dir), run
                 through the backend's own I/O binding (prefix keys/values stay on the GPU).

Written against the documented torch (``torch.cuda.Event``, ``torch.cuda.graph``, ``torch.compile``) and
ONNX Runtime APIs; run on an H200 in the fourteenth session (figures: docs/DEMO.md; ``ort-cuda`` was
skipped there, no CUDA provider). The CPU-independent parts (argument parsing, the run plan with its skip
reasons, the table) are tested in ``test/bench/test_gpu_bench.py``. Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = ("demo", "deployment")
MODES = ("eager", "compile", "cudagraph", "ort-cuda")
DTYPES = ("fp32", "bf16", "fp16")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m apt_policy.bench.gpu",
        description="torch CUDA (eager / torch.compile / CUDA graphs) and ONNX Runtime CUDA latency of one "
        "full inference, for the demo model and the deployment shape; prints the `make bench` table.",
    )
    p.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="torch weights/activations (default fp32)")
    p.add_argument("--iters", type=int, default=50, help="timed inferences per mode (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed inferences first (default 5)")
    p.add_argument("--model-bundle", type=Path, default=None, help="demo bundle (default: the cached one)")
    p.add_argument("--model-export", type=Path, default=None, help="its fp32 export (default: cached)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.iters <= 0 or args.warmup < 0:
        p.error("--iters must be > 0 and --warmup >= 0")
    return args


@dataclass(frozen=True)
class Job:
    shape: str
    mode: str
    skip: str | None = None  # why it will not run here


def plan(shapes: Sequence[str], modes: Sequence[str], cuda: bool, ort_providers: Sequence[str]) -> list[Job]:
    """Every (shape, mode) with the reason it cannot run on this machine, if any."""
    jobs = []
    for shape in shapes:
        for mode in modes:
            skip = None
            if not cuda:
                skip = "no CUDA device (torch.cuda.is_available() is False)"
            elif mode == "ort-cuda" and "CUDAExecutionProvider" not in ort_providers:
                skip = "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
            jobs.append(Job(shape, mode, skip))
    return jobs


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}  # fmt: skip


@dataclass
class Result:
    shape: str
    mode: str
    flops: int | None = None
    ms: dict[str, float] = field(default_factory=dict)
    skip: str | None = None
    error: str | None = None


def format_table(results: Sequence[Result], device: str) -> str:
    """Markdown table in ``make bench``'s layout (backend, stage, p50/p90/p99 ms, GFLOP/s at p50)."""
    lines = [
        f"GPU: {device}",
        "",
        "| shape | backend | stage | p50 ms | p90 ms | p99 ms | GFLOP/s (inference p50) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.skip or r.error:
            why = r.skip or f"error: {r.error}"
            lines.append(f"| {r.shape} | {r.mode} | inference | - | - | - | {why} |")
            continue
        rate = f"{r.flops / (r.ms['p50'] * 1e-3) / 1e9:.1f}" if r.flops else "-"
        lines.append(
            f"| {r.shape} | {r.mode} | inference | {r.ms['p50']:.2f} | {r.ms['p90']:.2f} | {r.ms['p99']:.2f}"
            f" | {rate} |"
        )
    by_shape: dict[str, dict[str, float]] = {}
    for r in results:
        if r.ms:
            by_shape.setdefault(r.shape, {})[r.mode] = r.ms["p50"]
    for shape, modes in by_shape.items():
        if "eager" in modes:
            ratios = [f"{m} {modes['eager'] / v:.2f}x" for m, v in modes.items() if m != "eager"]
            if ratios:
                lines.append(f"\n{shape}: speed-up over eager (p50): {', '.join(ratios)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- GPU-only part


def _time_cuda(fn: Callable[[], object], iters: int, warmup: int) -> dict[str, float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))  # ms
    return percentiles(samples)


def _model(shape: str, args: argparse.Namespace) -> tuple[Any, Path | None, Path | None]:
    """(APTModel on the GPU, bundle dir, export dir) of a shape."""
    import torch

    from apt_policy.bench.report import deployment_config

    if shape == "demo":
        bundle, export = args.model_bundle, args.model_export
        if bundle is None or export is None:
            from apt_policy.demo.model_cache import ensure_demo_model

            bundle, export = ensure_demo_model()
        from apt_policy.model.bundle import load_bundle

        return load_bundle(bundle).model.eval(), bundle, export
    from apt_policy.model.apt import APTModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        return APTModel(deployment_config()).eval(), None, None


def _run_torch(model: Any, mode: str, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from apt_policy.bench.report import _torch_inputs, full_inference

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = model.to("cuda", dtype=dtype)
    inputs = tuple(
        t.to(dtype) if t.is_floating_point() else t for t in _torch_inputs(model.config, device="cuda")
    )

    def step(pixels, ids, mask, state, noise):
        return full_inference(model, pixels, ids, mask, state, noise)

    with torch.inference_mode():
        if mode == "eager":
            return _time_cuda(lambda: step(*inputs), args.iters, args.warmup)
        if mode == "compile":
            compiled = torch.compile(step)
            return _time_cuda(lambda: compiled(*inputs), args.iters, max(args.warmup, 3))
        static = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream before capture (torch.cuda.graph docs)
            for _ in range(3):
                step(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(*static)

        def replay() -> None:
            for dst, src in zip(static, inputs, strict=True):
                dst.copy_(src, non_blocking=True)
            graph.replay()

        return _time_cuda(replay, args.iters, args.warmup)


def _run_ort_cuda(bundle: Path | None, export: Path | None, args: argparse.Namespace) -> dict[str, float]:
    import time

    from apt_policy.runtime import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        if export is None:
            from apt_export.onnx_export import export_onnx

            from apt_policy.bench.report import _random_bundle, deployment_config

            bundle, _, _ = _random_bundle(deployment_config(), Path(tmp))
            export = Path(tmp) / "onnx"
            export_onnx(bundle, export, optimize="none")
        policy = load_policy(export, "onnxruntime", providers=["CUDAExecutionProvider"])
        rng = np.random.default_rng(0)
        h, w = policy.info.image_size
        x = policy.encoder.encode(
            {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.info.cameras},
            np.zeros(len(policy.info.state_names), np.float32),
            "reach the red block",
        )
        for _ in range(args.warmup):
            policy.run_inputs(x)
        samples = []
        for _ in range(args.iters):  # run_inputs() returns host actions: it has synchronised
            t = time.perf_counter()
            policy.run_inputs(x)
            samples.append((time.perf_counter() - t) * 1e3)
        return percentiles(samples)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort
    import torch

    from apt_policy.bench.report import _torch_inputs, inference_flops

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none"
    results: list[Result] = []
    for shape in args.shapes:
        jobs = plan([shape], args.modes, cuda, ort.get_available_providers())
        runnable = [j for j in jobs if j.skip is None]
        results += [Result(j.shape, j.mode, skip=j.skip) for j in jobs if j.skip]
        if not runnable:
            continue
        try:
            model, bundle, export = _model(shape, args)
            with torch.inference_mode():
                where = str(next(model.parameters()).device)
                flops = inference_flops(model, _torch_inputs(model.config, device=where))
        except Exception as exc:  # report the shape, do not lose the others
            error = f"{type(exc).__name__}: {exc}"
            results += [Result(j.shape, j.mode, error=error) for j in runnable]
            continue
        for job in runnable:
            print(f"==> {shape}: {job.mode}", flush=True)
            try:
                if job.mode == "ort-cuda":
                    ms = _run_ort_cuda(bundle, export, args)
                else:
                    ms = _run_torch(model, job.mode, args)
                results.append(Result(shape, job.mode, flops, ms))
            except Exception as exc:  # report every mode, do not lose the others
                results.append(Result(shape, job.mode, flops, error=f"{type(exc).__name__}: {exc}"))
        del model
        if cuda:
            torch.cuda.empty_cache()
    print(format_table(results, device))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "dtype": args.dtype,
                                         "results": [r.__dict__ for r in results]}, indent=2))  # fmt: skip
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
