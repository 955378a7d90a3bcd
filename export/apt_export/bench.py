"""apt-bench: latency of a policy backend (preprocess / inference / total), optionally against another.

    apt-bench --model EXPORT_DIR --backend onnxruntime
    apt-bench --model BUNDLE --backend torch --vs onnxruntime --iters 200

Both backends run interleaved in the same process (A, B, A, B, ...) with the same thread count, so
the printed ratio compares them under identical load. If the comparison backend needs an ONNX export
and only a bundle is given, the bundle is exported (fp32) to a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from apt_policy.runtime import detect_kind, load_policy
from tqdm import tqdm

STAGES = ("preprocess", "inference", "total")


@dataclass
class Runner:
    """One backend split into timed stages; ``step`` returns seconds per stage for one prediction."""

    name: str
    encode: Callable[[], tuple]
    infer: Callable[[tuple], object]
    decode: Callable[[object], np.ndarray]

    def step(self) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        x = self.encode()
        t1 = time.perf_counter()
        y = self.infer(x)
        t2 = time.perf_counter()
        self.decode(y)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t0


def _observation(policy, seed: int = 0):
    rng = np.random.default_rng(seed)
    info = policy.info
    images = {c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in info.cameras}  # RealSense size
    state = rng.normal(0.0, 0.1, len(info.state_names)).astype(np.float32)
    noise = rng.standard_normal((info.horizon, info.action_dim)).astype(np.float32)
    return images, state, "reach the red cube", noise


def make_runner(policy, threads: int) -> Runner:
    """Stage functions for a loaded policy of any family (torch, or an ORT/TensorRT runtime policy): the
    shared encoder, the backend's graphs (``run_inputs``: the family's own, e.g. the action prior's history
    and latent graphs), the decoder."""
    images, state, instruction, noise = _observation(policy)
    encoder = policy.encoder
    infer = policy.run_inputs
    if policy.info.backend == "torch":
        import torch

        torch.set_num_threads(threads)

        def infer(x):
            with torch.inference_mode():
                return policy.run_inputs(x)

    return Runner(
        policy.info.backend, lambda: encoder.encode(images, state, instruction, noise), infer, encoder.decode
    )


def _load(path: Path, backend: str, threads: int, tmp: Path, shared: bool):
    kind = detect_kind(path)
    if backend in ("onnxruntime", "tensorrt") and kind == "bundle":
        from .onnx_export import export_onnx

        out = tmp / "onnx"
        if not out.exists():
            print(f"exporting {path} to ONNX (fp32) for the {backend} backend ...", file=sys.stderr)
            export_onnx(path, out, precision="fp32")
        path = out
    # Interleaved with another backend, ORT's spinning idle threads would steal the other's CPU time.
    options = {"intra_op_threads": threads, "allow_spinning": not shared} if backend == "onnxruntime" else {}
    return load_policy(path, backend, **options)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds."""
    arr = np.asarray(samples) * 1e3
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)}


def run_bench(runners: Sequence[Runner], iters: int, warmup: int) -> dict[str, dict[str, dict[str, float]]]:
    """Interleaved timing of every runner; returns {backend: {stage: {p50, p90, p99}}}."""
    for _ in range(warmup):
        for r in runners:
            r.step()
    times = {r.name: {s: [] for s in STAGES} for r in runners}
    for _ in tqdm(range(iters), desc="apt-bench", unit="iter"):
        for r in runners:
            for stage, seconds in zip(STAGES, r.step(), strict=True):
                times[r.name][stage].append(seconds)
    return {name: {s: percentiles(v) for s, v in stages.items()} for name, stages in times.items()}


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [f"{'backend':12s} {'stage':10s} {'p50 ms':>9s} {'p90 ms':>9s} {'p99 ms':>9s}"]
    for name, stages in results.items():
        for stage, p in stages.items():
            lines.append(f"{name:12s} {stage:10s} {p['p50']:9.2f} {p['p90']:9.2f} {p['p99']:9.2f}")
    names = list(results)
    if len(names) == 2:
        a, b = names
        for stage in ("inference", "total"):
            ratio = results[a][stage]["p50"] / results[b][stage]["p50"]
            lines.append(f"{stage} p50 ratio {a}/{b}: {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="apt-bench",
        description="Latency percentiles of a policy backend (preprocess, inference, total), optionally "
        "against a second backend measured in the same run.",
        epilog="example: apt-bench --model runs/demo/bundle --backend torch --vs onnxruntime --iters 200",
    )
    p.add_argument("--model", required=True, type=Path, help="bundle, ONNX export or engine directory")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    p.add_argument("--vs", default=None, choices=("torch", "onnxruntime", "tensorrt"), help="second backend")
    p.add_argument("--vs-model", type=Path, default=None, help="directory for --vs (default: --model)")
    p.add_argument("--iters", type=int, default=100, help="timed iterations per backend (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per backend")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.iters <= 0 or args.warmup < 0:
        p.error("--iters must be > 0 and --warmup >= 0")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shared = args.vs is not None
            policies = [_load(args.model, args.backend, args.threads, Path(tmp), shared)]
            if args.vs:
                policies.append(_load(args.vs_model or args.model, args.vs, args.threads, Path(tmp), shared))
            runners = [make_runner(pol, args.threads) for pol in policies]
            if len({r.name for r in runners}) != len(runners):
                p.error("--backend and --vs must differ")
            results = run_bench(runners, args.iters, args.warmup)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"apt-bench: error: {exc}", file=sys.stderr)
        return 1
    info = policies[0].info
    print(f"{info.model_id}: {len(info.cameras)} camera(s) {info.image_size}, horizon {info.horizon}, "
          f"{info.steps} steps, {args.threads} thread(s), {args.iters} iterations")  # fmt: skip
    print(format_table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"threads": args.threads, "iters": args.iters, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
