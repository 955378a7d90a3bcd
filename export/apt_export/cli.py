"""apt-export: turn a trained APT bundle into ONNX graphs and TensorRT engines, and check their parity.

    apt-export onnx   --bundle BUNDLE --out EXPORT [--precision fp32|fp16|int8] [--optimize ort] [--steps N]
                      [--no-rtc-inputs]
    apt-export quantize --onnx EXPORT --out INT8_EXPORT
    apt-export verify --bundle BUNDLE --onnx EXPORT [--cases N] [--json FILE]
    apt-export trt    --onnx EXPORT --out ENGINES [--precision fp16|bf16|fp8] [--force]

Exit status: 0 success, 1 failed (error or parity over tolerance), 2 missing dependency (TensorRT).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_MISSING_DEPENDENCY = 0, 1, 2

EPILOG = """\
typical use:
  apt-export onnx   --bundle runs/demo/bundle --out export/demo          # on the training machine
  apt-export verify --bundle runs/demo/bundle --onnx export/demo         # torch vs ONNX Runtime parity
  apt-export trt    --onnx export/demo --out engines/demo --precision fp16   # on the robot's GPU (Jetson)
The export dir (or engine dir) is all the robot needs: load it with
  apt_policy.runtime.load_policy(DIR)  or  apt-policy-node --ros-args -p model:=DIR
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apt-export",
        description="Export an APT policy bundle to ONNX / TensorRT and verify the result against PyTorch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{onnx,quantize,verify,trt}")

    o = sub.add_parser(
        "onnx",
        help="write prefix / denoiser / sampler ONNX graphs + manifest.json",
        description="Export a bundle (config.json, model.safetensors, norm_stats.json, tokenizer.json) to a "
        "self-contained directory: prefix.onnx (images + tokens -> per-layer keys/values), denoiser.onnx "
        "(one flow step), sampler.onnx (all steps unrolled: noise -> normalised actions), tokenizer.json and "
        "manifest.json (sha256 of every file, graph interfaces, config, normalisation stats, versions).",
    )
    o.add_argument("--bundle", required=True, type=Path, help="policy bundle directory (from apt-train)")
    o.add_argument("--out", required=True, type=Path, help="output directory (created)")
    o.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="graph precision; fp16 keeps softmax, norms and the flow integration in fp32; int8 quantises "
        "the weight MatMuls dynamically (int8 weights per channel, uint8 activations; default fp32)",
    )
    o.add_argument(
        "--optimize",
        choices=("ort", "transformer", "none"),
        default="ort",
        help="save ONNX Runtime's optimised graph (<graph>.opt.onnx, in the manifest) beside each graph: "
        "ort = ORT's extended level; transformer = onnxruntime.transformers fusions first (default ort)",
    )
    o.add_argument(
        "--steps", type=int, default=None, help="flow steps unrolled in sampler.onnx (default: bundle's)"
    )
    o.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    o.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy", help="torch.onnx path")
    o.add_argument(
        "--external-data-mb",
        type=int,
        default=1024,
        help="store weights in <graph>.onnx.data when a graph's weights exceed this many MB (default 1024)",
    )
    o.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    o.add_argument(
        "--no-rtc-inputs",
        action="store_true",
        help="leave out the real-time-chunking inputs (sampler: prefix, prefix_len, rtc_trained; "
        "denoiser: clean_mask), giving the graphs as exported before RTC",
    )

    v = sub.add_parser(
        "verify",
        help="compare PyTorch and ONNX Runtime outputs, per graph and end to end",
        description="Run the bundle in PyTorch and the export in ONNX Runtime on fixed inputs; print "
        "max/mean abs error and cosine per graph and end to end; exit 1 over tolerance "
        "(fp32: max abs <= 1e-4; fp16: cosine >= 0.999 and max abs <= 2e-2, gated only with a GPU provider).",
    )
    v.add_argument("--bundle", required=True, type=Path, help="policy bundle directory")
    v.add_argument("--onnx", required=True, type=Path, help="export directory from `apt-export onnx`")
    v.add_argument("--cases", type=int, default=4, help="number of fixed random cases (default 4)")
    v.add_argument("--json", type=Path, default=None, help="report path (default: <onnx>/parity.json)")
    v.add_argument("--provider", action="append", default=None, help="ONNX Runtime provider (repeatable)")

    q = sub.add_parser(
        "quantize",
        help="int8 export from an fp32 export dir (dynamic quantisation of the weight MatMuls, no torch)",
        description="Same as `apt-export onnx --precision int8` without re-tracing: quantise every graph "
        "of an fp32 export (int8 weights per channel, uint8 activations at run time) into a new directory.",
    )
    q.add_argument("--onnx", required=True, type=Path, help="fp32 export directory")
    q.add_argument("--out", required=True, type=Path, help="int8 export directory to create")
    q.add_argument("--optimize", choices=("ort", "transformer", "none"), default="ort", help="as for onnx")

    t = sub.add_parser(
        "trt",
        help="build TensorRT engines from an export directory (needs TensorRT 10 + a GPU)",
        description="Build one TensorRT engine per graph for THIS GPU and TensorRT version. "
        "Engines are cached by (graph sha256, TensorRT version, GPU, compute capability, precision, "
        "profile): a second run reuses them.",
    )
    t.add_argument("--onnx", required=True, type=Path, help="export directory from `apt-export onnx`")
    t.add_argument("--out", required=True, type=Path, help="engine directory to write")
    t.add_argument("--precision", choices=("fp16", "bf16", "fp8"), default="fp16", help="engine precision")
    t.add_argument("--force", action="store_true", help="rebuild even if a cached engine matches")
    t.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="engine + timing cache (default $APT_ENGINE_CACHE or ~/.cache/apt_export/engines)",
    )
    t.add_argument("--workspace-mb", type=int, default=None, help="builder workspace limit in MB")
    t.add_argument(
        "--with-denoiser",
        action="store_true",
        help="also build the one-step denoiser (the runtime does not use it)",
    )
    return p


def _onnx(args: argparse.Namespace) -> int:
    from .onnx_export import describe, export_onnx

    manifest = export_onnx(
        args.bundle,
        args.out,
        precision=args.precision,
        steps=args.steps,
        opset=args.opset,
        exporter=args.exporter,
        external_data_threshold=args.external_data_mb << 20,
        overwrite=args.force,
        rtc_inputs=not args.no_rtc_inputs,
        optimize=args.optimize,
    )
    print(describe(manifest))
    print(f"wrote {args.out}")
    return EXIT_OK


def _quantize(args: argparse.Namespace) -> int:
    from .onnx_export import describe
    from .quantize import quantize_export

    print(describe(quantize_export(args.onnx, args.out, optimize=args.optimize)))
    print(f"wrote {args.out}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify

    report = verify(args.bundle, args.onnx, cases=args.cases, providers=args.provider)
    print(report.table())
    path = args.json or args.onnx / "parity.json"
    path.write_text(report.to_json())
    print(f"wrote {path}")
    return EXIT_OK if report.passed else EXIT_FAILED


def _trt(args: argparse.Namespace) -> int:
    from apt_policy.runtime.tensorrt_backend import TensorRTUnavailableError, import_cudart, import_tensorrt

    try:
        import_tensorrt()
        import_cudart()
    except TensorRTUnavailableError as exc:
        print(f"apt-export trt: {exc}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCY
    from .trt import DEFAULT_CACHE, ENGINE_GRAPHS, build_engines

    manifest = build_engines(
        args.onnx,
        args.out,
        precision=args.precision,
        force=args.force,
        cache_dir=args.cache_dir or DEFAULT_CACHE,
        workspace_bytes=(args.workspace_mb << 20) if args.workspace_mb else None,
        graphs=(*ENGINE_GRAPHS, "denoiser") if args.with_denoiser else ENGINE_GRAPHS,
    )
    for name, e in manifest.engines.items():
        target = f"TensorRT {e.tensorrt_version}, {e.gpu_name} sm_{e.compute_capability}"
        print(f"{name}: {e.file} ({e.precision}, {target})")
    print(f"wrote {args.out}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"onnx": _onnx, "quantize": _quantize, "verify": _verify, "trt": _trt}[args.command]
    try:
        return handler(args)
    except (
        OSError,
        ValueError,
        RuntimeError,
    ) as exc:  # BundleError/ManifestError/ExportError are among these
        print(f"apt-export {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
