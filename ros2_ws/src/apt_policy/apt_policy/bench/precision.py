"""Precision study: does a policy keep its closed-loop success at reduced precision, and how far do its
actions move?

    python -m apt_policy.bench.precision --bundle BUNDLE [--device cpu|cuda] [--dtypes fp32 fp16 bf16]
                                         [--onnx EXPORT ...] [--per-instruction 10] [--cases 32]
                                         [--json precision.json]

Variants: the bundle's torch policy on ``--device`` at each dtype (fp32 as is, with TF32 off on CUDA;
fp16 / bf16 under ``torch.autocast``, which runs matmuls and convolutions in the low precision and keeps
softmax and norms in fp32, as an fp16 TensorRT engine or ``apt-export onnx --precision fp16`` does), and
each ``--onnx`` export through ONNX Runtime. The reference is the fp32 torch policy on the CPU.

For every variant:

* **action deviation**: the reference's inputs at its first ``--cases`` inferences of the closed-loop
  episodes (images, state, instruction, noise and history as they were) given to the variant; max and
  mean absolute difference of the actions in robot units (rad, m) and their cosine;
* **closed-loop success** on the reaching task, the training phrasings and the held-out one,
  ``--per-instruction`` scenes each (``training.demo_action_prior.evaluate_history``: the executed
  history is fed to stateful policies; every variant gets the same scenes and the same noise);
* the mean wall time of one ``predict``.

The evaluation runs the simulated arm and renderer on the CPU; only the policy runs on ``--device``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # "torch" or "onnxruntime"
    device: str = "cpu"
    dtype: str = "fp32"
    path: Path | None = None  # the ONNX export (onnxruntime)


def variants(device: str, dtypes: Sequence[str], onnx: Sequence[Path]) -> list[Variant]:
    """The torch variants first (one per dtype), then one per ONNX export."""
    out = [Variant(f"torch {device} {d}", "torch", device, d) for d in dtypes]
    out += [Variant(f"onnxruntime {p.name}", "onnxruntime", path=p) for p in onnx]
    return out


@dataclass
class Call:
    """One ``predict`` call's arguments, as the evaluation made it."""

    args: tuple
    kwargs: dict[str, Any]


class Recording:
    """A policy that records its first ``limit`` calls (the deviation cases) and times every call."""

    def __init__(self, policy: Any, limit: int = 0) -> None:
        self.policy, self.limit = policy, limit
        self.calls: list[Call] = []
        self.outputs: list[np.ndarray] = []
        self.seconds: list[float] = []

    @property
    def info(self):
        return self.policy.info

    def predict(self, *args, **kwargs) -> np.ndarray:
        t = time.perf_counter()
        out = self.policy.predict(*args, **kwargs)
        self.seconds.append(time.perf_counter() - t)
        if len(self.calls) < self.limit:
            self.calls.append(Call(args, kwargs))
            self.outputs.append(np.array(out, copy=True))
        return out


class Autocast:
    """A torch policy whose ``predict`` runs under ``torch.autocast(device, dtype)``."""

    def __init__(self, policy: Any, device: str, dtype: str) -> None:
        import torch

        self.policy, self.device = policy, torch.device(device).type
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]

    @property
    def info(self):
        return self.policy.info

    def predict(self, *args, **kwargs) -> np.ndarray:
        import torch

        with torch.autocast(self.device, dtype=self.dtype):
            return self.policy.predict(*args, **kwargs)


def load_variant(variant: Variant, bundle: Path, seed: int) -> Any:
    from apt_policy.runtime.load import load_policy

    if variant.backend == "onnxruntime":
        return load_policy(variant.path, backend="onnxruntime", seed=seed)
    import torch

    if variant.device.startswith("cuda"):  # fp32 means fp32: no TF32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    policy = load_policy(bundle, backend="torch", seed=seed, device=variant.device)
    return policy if variant.dtype == "fp32" else Autocast(policy, variant.device, variant.dtype)


def deviation(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict[str, float]:
    """Max / mean absolute difference (robot units) and cosine over all cases together."""
    ours = np.concatenate([np.ravel(o) for o in outputs]).astype(np.float64)
    ref = np.concatenate([np.ravel(r) for r in references]).astype(np.float64)
    diff = np.abs(ours - ref)
    norm = float(np.linalg.norm(ours) * np.linalg.norm(ref))
    cosine = float(ours @ ref / norm) if norm > 0 else 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "cosine": cosine}


@dataclass
class Row:
    variant: str
    success: dict[str, float] = field(default_factory=dict)  # phrasing -> rate
    episodes: dict[str, int] = field(default_factory=dict)
    deviation: dict[str, float] = field(default_factory=dict)
    predict_ms: float = float("nan")
    error: str | None = None


def _settings(info: Any, args: argparse.Namespace):
    from apt_policy.training.demo_action_prior import PriorDemoSettings

    chunk = args.actions_per_chunk or min(12, int(info.horizon))
    return PriorDemoSettings(eval_max_steps=args.max_steps, eval_actions_per_chunk=chunk)


def _closed_loop(policy: Any, args: argparse.Namespace, row: Row) -> None:
    from apt_policy.training.demo_action_prior import evaluate_history

    s = _settings(policy.info, args)
    for phrasing, held_out in (("train", False), ("held_out", True)):
        r = evaluate_history(
            policy, s, args.per_instruction, held_out=held_out, seed=args.seed, progress=args.progress,
            desc=f"{row.variant} {phrasing}", sampled_noise=True,
        )  # fmt: skip
        row.success[phrasing], row.episodes[phrasing] = r["success_rate"], r["episodes"]


def _write(args: argparse.Namespace, rows: Sequence[Row], device: str) -> None:
    if args.json:
        doc = {"device": device, "bundle": str(args.bundle), "rows": [r.__dict__ for r in rows]}
        args.json.write_text(json.dumps(doc, indent=2))


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Reference first (its calls become the deviation cases), then every variant; ``--json`` is rewritten
    after each row, so a run stopped early keeps what it measured."""
    reference = Recording(load_variant(Variant("reference", "torch"), args.bundle, args.seed), args.cases)
    ref_row = Row("reference: torch cpu fp32")
    _closed_loop(reference, args, ref_row)
    ref_row.predict_ms = 1e3 * float(np.mean(reference.seconds))
    ref_row.deviation = deviation(reference.outputs, reference.outputs)
    rows = [ref_row]
    device = "cpu"
    _write(args, rows, device)
    for v in variants(args.device, args.dtypes, args.onnx):
        row = Row(v.name)
        try:
            policy = Recording(load_variant(v, args.bundle, args.seed))
            if v.device.startswith("cuda"):
                import torch

                device = torch.cuda.get_device_name(torch.device(v.device))
            outs = [policy.predict(*c.args, **c.kwargs) for c in reference.calls]
            row.deviation = deviation(outs, reference.outputs)
            policy.seconds.clear()  # time the closed loop only (the first calls warm up)
            _closed_loop(policy, args, row)
            row.predict_ms = 1e3 * float(np.mean(policy.seconds))
        except Exception as exc:  # report every variant, do not lose the others
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        _write(args, rows, device)
    return rows, device


def format_table(rows: Sequence[Row], device: str, cases: int) -> str:
    lines = [
        f"policy device: {device}; deviation over the reference's first {cases} inferences (robot units)",
        "",
        "| variant | success, training phrasings | success, held-out phrasing | max abs dev | mean abs dev"
        " | cosine | predict ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.variant} | error: {r.error} | | | | | |")
            continue
        ok = " | ".join(f"{r.success[p]:.1%} ({r.episodes[p]})" for p in ("train", "held_out"))
        d = r.deviation
        lines.append(
            f"| {r.variant} | {ok} | {d['max_abs']:.2e} | {d['mean_abs']:.2e} | {d['cosine']:.6f}"
            f" | {r.predict_ms:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m apt_policy.bench.precision",
        description="Closed-loop success and action deviation of a policy at fp32 / fp16 / bf16 (torch "
        "autocast, CPU or CUDA) and of its ONNX exports, against the fp32 CPU reference.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the policy bundle (any family)")
    p.add_argument("--device", default="cpu", help="torch device of the variants (cpu, cuda, cuda:1)")
    p.add_argument(
        "--dtypes",
        nargs="*",
        choices=DTYPES,
        default=list(DTYPES),
        help="torch variants (none: --dtypes alone)",
    )
    p.add_argument("--onnx", type=Path, nargs="*", default=[], help="ONNX exports to run too")
    p.add_argument("--per-instruction", type=int, default=10, help="scenes per instruction (default 10)")
    p.add_argument("--cases", type=int, default=32, help="inferences compared for the deviation")
    p.add_argument("--max-steps", type=int, default=60, help="control steps per episode (default 60)")
    p.add_argument("--actions-per-chunk", type=int, default=0, help="default: min(12, horizon)")
    p.add_argument("--seed", type=int, default=10_000, help="first scene seed (default: held-out scenes)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.per_instruction < 1 or args.cases < 1:
        p.error("--per-instruction and --cases must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows, device = run(args)
    print(format_table(rows, device, args.cases))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
