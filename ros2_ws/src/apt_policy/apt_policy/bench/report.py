"""``make bench``: inference, control and pre-processing benchmarks -> bench_out/report.md (+ PNGs).

    python -m apt_policy.bench.report [--out bench_out] [--iters 30] [--deploy-iters 2] [--stream-ticks 1500]

Sections (each prints a header and shows progress):

1. inference, demo model   ``apt-bench`` torch vs onnxruntime, interleaved in one process (ratio measured
                           side by side), on the cached demo bundle/export (trained on first use)
2. inference, deployment   a random-weight APT policy shaped like a real deployment: Qwen3-VL-2B backbone
   shape                   truncated to 14 of 28 decoder layers, a ~300M-parameter Stage-2 expert, 2 cameras
                           at 224x224, 32 instruction tokens, horizon 16, 10 flow steps; parameters and FLOPs
                           counted on the meta device, PyTorch latency over a few runs when memory allows
3. pre-processing          two 640x480 rgb8 sensor_msgs/Image -> model tensors with the node's own functions
                           (``apt_policy.ros.conversions.image_to_rgb`` + the runtime's ObservationEncoder)
4. control                 ``python -m apt_policy.bench.stream`` (commands measured at the simulated arm)
5. chunk execution         strategy (none, crossfade, ensemble, RTC training-free, RTC trained) x latency
                           profile on the simulated-clock evaluator (``apt_policy.sim.closed_loop``), with
                           the scripted stand-in policy and the demo model (RTC rows where it takes a
                           prefix); ``--chunking-episodes`` per cell (6: the >= 50-episode table comes from
                           ``python -m apt_policy.sim.closed_loop --table``, see docs/CONTROL.md)

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, matmuls and
convolutions) over one full inference (prefix + every flow step); achieved FLOP/s = FLOPs / p50 latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from apt_policy.control.realtime import CONTROLLER_PRIORITY, STREAM_PRIORITY

DEPLOY_VLM_LAYERS = 14  # of Qwen3-VL-2B's 28 decoder layers (docs/BACKBONE.md)
DEPLOY_EXPERT = {"width": 1024, "num_heads": 16, "head_dim": 64, "mlp_dim": 4096, "num_layers": 9}
DEPLOY_CAMERAS = ("front", "wrist")
DEPLOY_IMAGE = (224, 224)
# the deployment's widths with few layers (deployment_config(midsize=True)): exported and run in seconds
MIDSIZE = {"vision_depth": 2, "vlm_layers": 2, "expert_layers": 2, "vocab_size": 4096}
NOT_MEASURABLE = """\
Not measurable on this machine (no GPU, no TensorRT, no Jetson): TensorRT engines (fp16/bf16/fp8), CUDA
graphs, GPU ONNX Runtime providers, and anything about the Jetson's unified memory and clocks. To run the
same benchmarks on the robot computer (Jetson, JetPack 6) or a workstation GPU:

    apt-export onnx --bundle BUNDLE --out export/           # on the training machine
    apt-export trt  --onnx export/ --out engines/ --precision fp16
    apt-bench --model engines/ --backend tensorrt --vs onnxruntime --vs-model export/ --iters 200
    python -m apt_policy.bench.stream --model engines/ --rates 100 200 500 1000
    python -m apt_policy.bench.report --model-bundle BUNDLE --model-export engines/   # this report

(see docs/DEPLOY.md for the Jetson's power mode and clocks: fix them before measuring)."""


def _header(i: int, n: int, title: str) -> None:
    print(f"\n==> [{i}/{n}] {title}", flush=True)


def _pcts(samples_s: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}  # fmt: skip


def _mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


# -------------------------------------------------------------------------------------------- FLOPs


def full_inference(model: Any, pixels: Any, ids: Any, mask: Any, state: Any, noise: Any) -> Any:
    """One full inference of an APTModel (encode_prefix + sample) or an ActionPriorModel (encode_prefix,
    encode_history over K valid zero steps, sample); returns the normalised actions."""
    import torch

    if getattr(model.config, "family", "apt") == "action_prior":
        latent = model.encode_prefix(pixels, ids, mask, state)
        k = max(model.history_steps, 1)
        valid = torch.ones(state.shape[0], k, device=state.device)
        history = model.encode_history(
            state.new_zeros(state.shape[0], k, state.shape[-1]),
            noise.new_zeros(noise.shape[0], k, noise.shape[-1]),
            valid,
        )
        return model.sample(latent, history, state, noise)
    prefix = model.encode_prefix(pixels, ids, mask)
    return model.sample(*prefix, state, noise)


def inference_flops(model: Any, inputs: tuple) -> int:
    """FLOPs of one full inference (``full_inference``); works on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        full_inference(model, *inputs)
    return int(counter.get_total_flops())


def _torch_inputs(config: Any, device: str = "cpu") -> tuple:
    import torch

    h, w = config.image_size
    t = config.max_instruction_tokens
    with torch.device(device):
        return (
            torch.rand(1, len(config.cameras), 3, h, w),
            torch.ones(1, t, dtype=torch.long),
            torch.ones(1, t, dtype=torch.long),
            torch.zeros(1, config.state_dim),
            torch.randn(1, config.horizon, config.action_dim),
        )


# ----------------------------------------------------------------------------------- deployment shape


def deployment_config(midsize: bool = False) -> Any:
    """PolicyConfig of a deployment-shaped Stage-2 APT policy (see the module docstring).

    ``midsize``: the same layer widths, cameras, tokens, horizon and steps with only 2 vision blocks,
    2 decoder layers, a 2-layer (Stage-2: 4) expert and a 4096-token vocabulary: the deployment's matrix
    shapes in a model small enough to export and run in seconds (``MIDSIZE``).
    """
    import dataclasses

    from apt_policy.core.config import ActionSemantics, ExpertConfig, PolicyConfig
    from apt_policy.model.backbone import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig

    backbone = Qwen3VLBackboneConfig.qwen3vl_2b(
        num_cameras=len(DEPLOY_CAMERAS),
        image_size=DEPLOY_IMAGE,
        max_text_tokens=32,
        num_layers=DEPLOY_VLM_LAYERS,
    )
    expert = dict(DEPLOY_EXPERT)
    if midsize:
        vocab = MIDSIZE["vocab_size"]
        backbone = dataclasses.replace(
            backbone,
            vision=dataclasses.replace(
                backbone.vision, depth=MIDSIZE["vision_depth"], deepstack_visual_indexes=(0, 1)
            ),
            text=dataclasses.replace(backbone.text, vocab_size=vocab),
            num_layers=MIDSIZE["vlm_layers"],
            image_token_id=vocab - 3,
            vision_start_token_id=vocab - 2,
            vision_end_token_id=vocab - 1,
        )
        expert["num_layers"] = MIDSIZE["expert_layers"]
    vlm_layers = int(backbone.num_layers)
    n = expert["num_layers"]
    names = (*(f"fr3_joint{i}" for i in range(1, 8)), "gripper_width")
    return (
        PolicyConfig(
            architecture="pi",
            backbone=backbone.to_dict(),
            expert=ExpertConfig(**expert),
            layer_map=tuple(round((i + 1) * vlm_layers / n) - 1 for i in range(n)),
            cameras=DEPLOY_CAMERAS,
            image_size=DEPLOY_IMAGE,
            max_instruction_tokens=32,
            state_names=names,
            action_names=names,
            horizon=16,
            control_dt=0.1,
            sampling_steps=10,
            stage=1,
            action_semantics=ActionSemantics(arm="absolute"),
            normalization="quantile",
            image_mean=tuple(IMAGE_MEAN),
            image_std=tuple(IMAGE_STD),
            model_id="apt-midsize-shape" if midsize else "apt-deployment-shape",
        )
        .validate()
        .with_stage(2)
    )


def bench_deployment(iters: int, threads: int, min_free_gb: float) -> dict[str, Any]:
    """Parameters and FLOPs (meta device), and PyTorch latency with random weights if memory allows."""
    import torch

    from apt_policy.model.apt import APTModel

    torch.set_num_threads(threads)
    config = deployment_config()
    with torch.device("meta"):
        meta = APTModel(config)
    backbone = sum(p.numel() for p in meta.backbone.parameters())
    total = sum(p.numel() for p in meta.parameters())
    out: dict[str, Any] = {
        "config": {
            "backbone": f"Qwen3-VL-2B shape, {DEPLOY_VLM_LAYERS} of 28 decoder layers",
            "cameras": len(config.cameras),
            "image_size": list(config.image_size),
            "instruction_tokens": config.max_instruction_tokens,
            "horizon": config.horizon,
            "sampling_steps": config.sampling_steps,
            "expert": dict(DEPLOY_EXPERT, stage2_layers=2 * DEPLOY_EXPERT["num_layers"]),
        },
        "params_M": total / 1e6,
        "backbone_params_M": backbone / 1e6,
        "expert_params_M": (total - backbone) / 1e6,
    }
    try:
        out["flops"] = inference_flops(meta, _torch_inputs(config, "meta"))
    except Exception as exc:  # report, do not fail the whole bench
        out["flops_error"] = f"{type(exc).__name__}: {exc}"
    del meta
    need_gb = total * 4 / 2**30 * 1.3
    free_gb = _mem_available_gb()
    out["memory_needed_gb"], out["memory_available_gb"] = need_gb, free_gb
    if iters <= 0:
        out["latency_skipped"] = "--deploy-iters 0"
        return out
    if not (free_gb - need_gb >= min_free_gb):
        out["latency_skipped"] = f"needs ~{need_gb:.1f} GB, {free_gb:.1f} GB available"
        return out
    print(f"    building {total / 1e6:.0f}M random weights in PyTorch (~{need_gb:.1f} GB) ...", flush=True)
    torch.manual_seed(0)
    model = APTModel(config).eval()
    inputs = _torch_inputs(config)
    times = []
    with torch.inference_mode():
        for i in tqdm(range(iters + 1), desc="deployment shape, torch", unit="inference"):
            t = time.perf_counter()
            prefix = model.encode_prefix(*inputs[:3])
            actions = model.sample(*prefix, *inputs[3:])
            if i > 0:  # the first is warm-up
                times.append(time.perf_counter() - t)
    if not torch.isfinite(actions).all():
        raise RuntimeError("deployment-shaped model produced non-finite actions")
    out["torch_ms"] = _pcts(times)
    del model
    return out


# ------------------------------------------------------------------------ ONNX Runtime vs torch, peak


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """This CPU's measured matmul throughput at n x n x n, best median of ``reps`` calls: numpy sgemm
    (its BLAS, default threads), ONNX Runtime MatMul fp32 and MatMulInteger u8 x s8 (``threads``), in
    GFLOP/s (int8: GOP/s)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)

    def rate(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 2 * n**3 / float(np.median(times)) / 1e9

    def session(op: str, a_type: int, weight: np.ndarray, out_type: int) -> Any:
        graph = helper.make_graph(
            [helper.make_node(op, ["A", "B"], ["C"])],
            "peak",
            [helper.make_tensor_value_info("A", a_type, [n, n])],
            [helper.make_tensor_value_info("C", out_type, [n, n])],
            [numpy_helper.from_array(weight, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    fp32 = session("MatMul", TensorProto.FLOAT, b, TensorProto.FLOAT)
    int8 = session("MatMulInteger", TensorProto.UINT8, rng.integers(-127, 128, (n, n), dtype=np.int8), 6)
    a8 = rng.integers(0, 256, (n, n), dtype=np.uint8)
    return {
        "n": n,
        "numpy_sgemm_gflops": rate(lambda: a @ b),
        "ort_matmul_fp32_gflops": rate(lambda: fp32.run(None, {"A": a})),
        "ort_matmul_int8_gops": rate(lambda: int8.run(None, {"A": a8})),
    }


def _random_bundle(config: Any, root: Path) -> tuple[Path, int, float]:
    """A random-weight bundle of ``config`` in ``root`` (seed 0); returns (path, FLOPs, parameters M)."""
    import torch

    from apt_policy.core.normalize import Normalizer
    from apt_policy.core.preprocess import build_word_tokenizer
    from apt_policy.model.apt import APTModel
    from apt_policy.model.bundle import save_bundle

    torch.manual_seed(0)
    model = APTModel(config).eval()
    flops = inference_flops(model, _torch_inputs(config))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    states = rng.normal(0, 0.3, (64, config.state_dim))
    actions = np.repeat(states[:, None, : config.action_dim], config.horizon, 1)
    norm = Normalizer.fit(states, actions, config.normalization)
    build_word_tokenizer(["reach the red block"], root / "tokenizer.json")
    bundle = save_bundle(root / "bundle", model, norm, root / "tokenizer.json")
    return bundle, flops, params


def bench_onnx_vs_torch(
    config: Any,
    iters: int,
    threads: int,
    workdir: Path,
    precisions: Sequence[str] = ("fp32", "int8"),
    pairwise: bool = False,
    optimize: str = "ort",
    min_free_gb: float = 4.0,
) -> dict[str, Any]:
    """Random-weight ``config`` in torch eager and ONNX Runtime (each precision), interleaved (apt-bench).

    ``pairwise``: torch is interleaved with one ONNX Runtime precision at a time and each session is freed
    before the next (large models); otherwise all backends are interleaved together. Exports go to
    ``workdir`` (fp32 by ``export_onnx``, int8 derived from it by ``quantize_export``).
    """
    import gc

    from apt_export.bench import make_runner, run_bench
    from apt_export.onnx_export import export_onnx
    from apt_export.quantize import quantize_export

    from apt_policy.runtime import load_policy
    from apt_policy.runtime.torch_backend import APTPolicy

    workdir.mkdir(parents=True, exist_ok=True)
    with_meta = _meta_params_m(config)
    need_gb = with_meta * 1e6 * 4 / 2**30 * 2.2  # the model plus one copy (export, or the ORT session)
    free_gb = _mem_available_gb()
    out: dict[str, Any] = {"params_M": with_meta, "memory_needed_gb": need_gb, "memory_available_gb": free_gb}
    if not (free_gb - need_gb >= min_free_gb):
        out["skipped"] = f"needs ~{need_gb:.1f} GB, {free_gb:.1f} GB available"
        return out
    started = time.monotonic()
    bundle, flops, _ = _random_bundle(config, workdir)
    gc.collect()
    exports = {"fp32": workdir / "onnx-fp32"}
    print(f"    exporting {with_meta:.0f}M parameters to ONNX (fp32) ...", flush=True)
    export_onnx(bundle, exports["fp32"], optimize=optimize)
    if "int8" in precisions:
        print("    quantising the export to int8 ...", flush=True)
        exports["int8"] = workdir / "onnx-int8"
        quantize_export(exports["fp32"], exports["int8"], optimize=optimize)
    out["export_s"] = time.monotonic() - started
    out["flops"] = flops
    torch_policy = APTPolicy.from_bundle(bundle)
    torch_runner = make_runner(torch_policy, threads)

    def ort_runner(precision: str) -> Any:
        options = {"intra_op_threads": threads, "allow_spinning": False}
        policy = load_policy(exports[precision], "onnxruntime", **options)
        return dataclasses.replace(make_runner(policy, threads), name=f"onnxruntime {precision}")

    phases = [[p] for p in precisions] if pairwise else [list(precisions)]
    timings: dict[str, Any] = {}
    for phase in phases:
        runners = [torch_runner, *(ort_runner(p) for p in phase)]
        result = run_bench(runners, iters, warmup=1)
        key = "torch" if not pairwise else f"torch (with {phase[0]})"
        timings[key] = result.pop("torch")
        timings.update(result)
        del runners
        gc.collect()
    out["apt_bench"] = {"iters": iters, "threads": threads, "pairwise": pairwise, "results": timings}
    torch_names = [k for k in timings if k.startswith("torch")]
    for precision in precisions:
        name = f"onnxruntime {precision}"
        ref = next(k for k in torch_names if not pairwise or precision in k)
        key = "onnxruntime_ms" if precision == "fp32" else f"onnxruntime_{precision}_ms"
        out[key] = timings[name]["inference"]
        ratio = timings[ref]["inference"]["p50"] / timings[name]["inference"]["p50"]
        out[f"ratio_torch_over_{precision}"] = ratio
    out["torch_interleaved_ms"] = timings[torch_names[0]]["inference"]
    return out


def _meta_params_m(config: Any) -> float:
    import torch

    from apt_policy.model.apt import APTModel

    with torch.device("meta"):
        return sum(p.numel() for p in APTModel(config).parameters()) / 1e6


# -------------------------------------------------------------------------------------- demo model


def _apt_bench(bundle: Path, export: Path, iters: int, threads: int, workdir: Path) -> dict[str, Any]:
    json_path = workdir / f"apt_bench_demo_{threads}.json"
    cmd = [
        sys.executable, "-m", "apt_export.bench", "--model", str(bundle), "--backend", "torch",
        "--vs", "onnxruntime", "--vs-model", str(export), "--iters", str(iters), "--threads", str(threads),
        "--json", str(json_path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return dict(json.loads(json_path.read_text()))


def best_thread_counts(by_threads: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per backend, the thread count with the lowest inference p50 among the apt-bench runs ``by_threads``
    (thread count -> apt-bench JSON): {backend: {"threads": n, "p50": ms}}."""
    best: dict[str, dict[str, float]] = {}
    for threads, bench in by_threads.items():
        for backend, stages in bench["results"].items():
            p50 = stages["inference"]["p50"]
            if backend not in best or p50 < best[backend]["p50"]:
                best[backend] = {"threads": int(threads), "p50": p50}
    return best


def bench_demo_model(bundle: Path, export: Path, iters: int, threads: int, workdir: Path) -> dict[str, Any]:
    """apt-bench torch vs onnxruntime (subprocess) at ``threads`` and at 1 thread, and FLOPs of an inference.

    A 0.07 GFLOP model can be faster in one thread than in several (thread hand-offs cost more than they
    save), so both counts are run and each backend is also compared at its faster one."""
    import torch

    from apt_policy.runtime.torch_backend import APTPolicy

    by_threads = {str(t): _apt_bench(bundle, export, iters, t, workdir) for t in sorted({1, threads})}
    bench = by_threads[str(threads)]
    torch.set_num_threads(threads)
    policy = APTPolicy.from_bundle(bundle)
    config = policy.model.config
    flops = inference_flops(policy.model.eval(), _torch_inputs(config))
    return {
        "bundle": str(bundle),
        "export": str(export),
        "params_M": sum(p.numel() for p in policy.model.parameters()) / 1e6,
        "cameras": len(config.cameras),
        "image_size": list(config.image_size),
        "horizon": config.horizon,
        "sampling_steps": config.sampling_steps,
        "flops": flops,
        "apt_bench": bench,
        "by_threads": by_threads,
        "best_threads": best_thread_counts(by_threads),
    }


# -------------------------------------------------------------------------------------- preprocessing


def _image_msg(rgb: np.ndarray) -> Any:
    from sensor_msgs.msg import Image

    msg = Image()
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.step = "rgb8", rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def _time_calls(fn: Callable[[], object], iters: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return _pcts(times)


def bench_preprocessing(export: Path | None, iters: int) -> dict[str, Any]:
    """Two 640x480 camera messages -> model tensors, per call, for the demo export and deployment shape."""
    from apt_policy.core.normalize import Normalizer
    from apt_policy.core.preprocess import build_word_tokenizer
    from apt_policy.ros import conversions
    from apt_policy.runtime.inputs import ObservationEncoder
    from apt_policy.runtime.manifest import load_manifest

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    msgs = [_image_msg(f) for f in frames]
    state = np.zeros(64, np.float32)  # cut to each model's state_dim
    encoders: dict[str, ObservationEncoder] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = deployment_config()
        states = rng.normal(0, 0.3, (64, 8))
        norm = Normalizer.fit(states, np.repeat(states[:, None], config.horizon, 1), config.normalization)
        tok = build_word_tokenizer(["reach the red block"], Path(tmp) / "tok.json")
        encoders["deployment shape (2 x 224x224)"] = ObservationEncoder(config, norm, tok)
        if export is not None:
            enc = ObservationEncoder.from_manifest(export, load_manifest(export, verify=False))
            h, w = enc.config.image_size
            encoders[f"demo model ({len(enc.config.cameras)} x {h}x{w})"] = enc
        results: dict[str, Any] = {
            "decode 2 msgs (image_to_rgb)": _time_calls(
                lambda: [conversions.image_to_rgb(m) for m in msgs], iters
            )
        }
        for name, enc in encoders.items():
            cams = enc.config.cameras

            def full(enc: ObservationEncoder = enc, cams: tuple = cams) -> None:
                images = {c: conversions.image_to_rgb(msgs[i % 2]) for i, c in enumerate(cams)}
                enc.encode(images, state[: enc.config.state_dim], "reach the red block")

            results[f"msgs -> tensors, {name}"] = _time_calls(full, iters)
    return results


# ---------------------------------------------------------------------------------------------- control


# SCHED_FIFO of the node's stream and of fake_franka: the simulated controller outranks its client, as a
# real controller does (4 interleaved pairs of runs at 100 Hz: jitter p99 at fake_franka 0.54-1.32 ms with
# 60, 1.13-1.61 ms with 40; docs/NODE.md).


def bench_control(export: Path, ticks: int, rates: Sequence[float], workdir: Path) -> list[dict[str, Any]]:
    json_path = workdir / "bench_stream.json"
    cmd = [sys.executable, "-m", "apt_policy.bench.stream", "--model", str(export), "--ticks", str(ticks)]
    cmd += ["--rates", *(f"{r:g}" for r in rates), "--json", str(json_path)]
    # As on the robot: the stream thread and the simulated controller real-time (where not permitted, the
    # processes log a warning and run with normal scheduling).
    cmd += ["--realtime-priority", str(STREAM_PRIORITY), "--robot-priority", str(CONTROLLER_PRIORITY)]
    subprocess.run(cmd, check=True)
    return json.loads(json_path.read_text())


# -------------------------------------------------------------------------------------- chunk execution


def bench_chunking(export: Path | None, episodes: int, latencies: Sequence[str]) -> dict[str, Any]:
    """The strategy x latency table on the simulated clock: scripted stand-in, then the demo model."""
    from dataclasses import asdict

    from apt_policy.demo.run import default_params_file
    from apt_policy.sim.closed_loop import model_rows, node_params_from_yaml, run_table, scripted_rows

    out: dict[str, Any] = {"episodes": episodes, "latencies": list(latencies)}
    out["scripted"] = [asdict(c) for c in run_table(scripted_rows(), latencies, episodes)]
    if export is not None:
        rows = model_rows(export)
        params = node_params_from_yaml(default_params_file())  # the demo model runs with the demo's node
        out["model"] = [asdict(c) for c in run_table(rows, ("none", "orin"), episodes, node_params=params)]
        out["model_path"] = str(export)
        out["model_params"] = str(default_params_file().name)
    return out


def _chunking_markdown(chunking: dict[str, Any]) -> list[str]:
    from apt_policy.sim.closed_loop import CellResult, format_table

    def cells(key: str) -> list[CellResult]:
        return [CellResult(**c) for c in chunking.get(key, [])]

    lines = [
        "## Chunk execution at on-robot latency (simulated clock)",
        "",
        f"`apt_policy.sim.closed_loop`: {chunking['episodes']} episodes per cell (the >= 50-episode table:"
        " `python -m apt_policy.sim.closed_loop --table --episodes 50`, docs/CONTROL.md). Switch dv = jump"
        " of the policy target's velocity at a chunk switch (rad/s, max over joints); cmd da = jump of the"
        " commanded acceleration (the safety filter caps it at J = 4 rad/s^2 per tick).",
        "",
        "Scripted stand-in (the task expert with 1 cm chunk-to-chunk disagreement; RTC rows: prefix honoured"
        " with a trained-like continuation / with a hard prefix and no consistency):",
        "",
        format_table(cells("scripted")),
        "",
    ]
    if chunking.get("model"):
        lines += [f"Model `{chunking['model_path']}`:", "", format_table(cells("model")), ""]
    return lines


# ----------------------------------------------------------------------------------------------- report


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    labels, p50, p99 = [], [], []
    demo = results.get("demo_model", {}).get("apt_bench", {}).get("results", {})
    for backend, stages in demo.items():
        labels.append(f"demo\n{backend}")
        p50.append(stages["inference"]["p50"])
        p99.append(stages["inference"]["p99"])
    dep = results.get("deployment", {}).get("torch_ms")
    if dep:
        labels.append("deployment shape\ntorch")
        p50.append(dep["p50"])
        p99.append(dep["p99"])
    if labels:
        x = np.arange(len(labels))
        axes[0].bar(x, p50, color="tab:blue", label="p50")
        axes[0].scatter(x, p99, color="k", marker="_", s=400, label="p99", zorder=3)
        axes[0].set_xticks(x, labels)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("inference latency (ms, log)")
        axes[0].set_title("inference (one chunk)")
        axes[0].legend()
        axes[0].grid(alpha=0.3, axis="y")
    stream = results.get("control") or []
    if stream:
        rates = [r["rate_hz"] for r in stream]
        x = np.arange(len(rates))
        axes[1].bar(x - 0.2, [r["jitter_p50_ms"] for r in stream], 0.4, label="jitter p50")
        axes[1].bar(x + 0.2, [r["jitter_p99_ms"] for r in stream], 0.4, label="jitter p99")
        axes[1].set_xticks(
            x, [f"{r:g} Hz\n({s['achieved_hz']:.1f} achieved)" for r, s in zip(rates, stream, strict=True)]
        )
        axes[1].set_ylabel("|command interval - period| (ms)")
        axes[1].set_title("control stream at the simulated arm")
        axes[1].legend()
        axes[1].grid(alpha=0.3, axis="y")
    pre = results.get("preprocessing") or {}
    if pre:
        names = list(pre)
        axes[2].barh(np.arange(len(names)), [pre[n]["p50"] for n in names], color="tab:green", label="p50")
        axes[2].scatter([pre[n]["p99"] for n in names], np.arange(len(names)), color="k", marker="|", s=300,
                        label="p99", zorder=3)  # fmt: skip
        axes[2].set_yticks(np.arange(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=8)
        axes[2].set_xlabel("ms per call")
        axes[2].set_title("pre-processing: two 640x480 camera messages")
        axes[2].legend()
        axes[2].grid(alpha=0.3, axis="x")
    path = out / "bench.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path.name)
    return written


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _onnx_sections(results: dict[str, Any]) -> list[str]:
    """Markdown for the matmul peak and the ONNX Runtime vs torch runs of the mid-size / deployment shapes."""
    lines: list[str] = []
    peak = results.get("matmul_peak")
    if peak:
        lines += [
            f"## This CPU's matmul peak ({peak['n']}^3, best median of 5)",
            "",
            f"numpy sgemm {peak['numpy_sgemm_gflops']:.1f} GFLOP/s; ONNX Runtime MatMul fp32"
            f" {peak['ort_matmul_fp32_gflops']:.1f} GFLOP/s; MatMulInteger u8 x s8"
            f" {peak['ort_matmul_int8_gops']:.1f} GOP/s. Achieved rates below are FLOPs of one inference"
            " / inference p50, as a share of the fp32 peak (max of numpy and ORT).",
            "",
        ]
    fp32_peak = max(peak["numpy_sgemm_gflops"], peak["ort_matmul_fp32_gflops"]) if peak else None
    for key, title in (("midsize", "mid-size shape"), ("deployment", "deployment shape")):
        run = results.get(key)
        if not run or "apt_bench" not in run:
            if run and run.get("skipped"):
                lines += [f"## ONNX Runtime vs PyTorch: {title}", "", f"Skipped: {run['skipped']}.", ""]
            continue
        bench = run["apt_bench"]
        how = "one ORT precision at a time with torch" if bench["pairwise"] else "all backends together"
        lines += [
            f"## ONNX Runtime vs PyTorch eager: {title} (random weights)",
            "",
            f"{run['params_M']:.0f}M parameters, {run['flops'] / 1e9:.1f} GFLOP per inference;"
            f" {bench['iters']} runs per backend after one warm-up, interleaved ({how}),"
            f" {bench['threads']} thread(s); export + quantisation took {run['export_s']:.0f} s.",
            "",
            "| backend | inference p50 ms | p90 ms | total p50 ms | GFLOP/s | share of fp32 peak |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, stages in bench["results"].items():
            inf = stages["inference"]
            rate = run["flops"] / (inf["p50"] * 1e-3) / 1e9
            share = f"{rate / fp32_peak:.0%}" if fp32_peak else "-"
            if "int8" in name and peak:  # against the integer matmul's own peak
                share = f"{rate / peak['ort_matmul_int8_gops']:.0%} of int8"
            lines.append(
                f"| {name} | {inf['p50']:.0f} | {inf['p90']:.0f} | {stages['total']['p50']:.0f} |"
                f" {rate:.1f} | {share} |"
            )
        ratios = [f"{p}: **{run[f'ratio_torch_over_{p}']:.2f}x**" for p in ("fp32", "int8")
                  if f"ratio_torch_over_{p}" in run]  # fmt: skip
        lines += ["", f"Inference p50 ratio torch / ONNX Runtime, {', '.join(ratios)}.", ""]
        torch_ref = next((v for k, v in bench["results"].items() if k.startswith("torch")), None)
        if fp32_peak and torch_ref:
            needed = 2.5 * run["flops"] / (torch_ref["inference"]["p50"] * 1e-3) / 1e9
            verdict = " (not reachable in fp32)" if needed > fp32_peak else ""
            lines += [
                f"Roofline: 2.5x torch eager in fp32 needs {needed:.0f} GFLOP/s, {needed / fp32_peak:.0%} of"
                f" this CPU's measured fp32 matmul peak{verdict}.",
                "",
            ]
    return lines


def _thread_lines(demo: dict[str, Any]) -> list[str]:
    """The demo model at each thread count run, and each backend at its faster one."""
    by_threads, best = demo.get("by_threads"), demo.get("best_threads")
    if not by_threads or not best or len(best) != 2:
        return []
    lines = ["| threads | " + " | ".join(f"{b} p50 ms" for b in best) + " | ratio |", "|---:|---:|---:|---:|"]
    for threads, bench in by_threads.items():
        p50 = [bench["results"][b]["inference"]["p50"] for b in best]
        lines.append(f"| {threads} | {p50[0]:.2f} | {p50[1]:.2f} | {p50[0] / p50[1]:.2f}x |")
    (a, ba), (b, bb) = best.items()
    lines += [
        "",
        f"Each backend at its faster thread count: {a} {ba['p50']:.2f} ms ({ba['threads']} thread(s)),"
        f" {b} {bb['p50']:.2f} ms ({bb['threads']} thread(s)): **{ba['p50'] / bb['p50']:.2f}x**.",
    ]
    return lines


def write_markdown(results: dict[str, Any], out: Path, plots: list[str]) -> Path:
    ctx = results["context"]
    lines = [
        "# APT-ROS benchmarks",
        "",
        f"Machine: {ctx['machine']}; load average at start {ctx['load_start']:.1f}, at end"
        f" {_fmt(ctx.get('load_end'), '.1f')} (other work on the machine shows up in every figure);"
        f" {ctx['threads']} thread(s) per backend. Total time {_fmt(ctx.get('total_s'), '.0f')} s.",
        "",
    ]
    demo = results.get("demo_model")
    if demo:
        bench = demo["apt_bench"]["results"]
        lines += [
            f"## Inference: {demo.get('source', 'demo model')}",
            "",
            f"{demo['params_M']:.2f}M parameters, {demo['cameras']} camera(s) {demo['image_size']},"
            f" horizon {demo['horizon']}, {demo['sampling_steps']} flow steps;"
            f" {demo['flops'] / 1e9:.3f} GFLOP per inference. `apt-bench`, {demo['apt_bench']['iters']}"
            " iterations, backends interleaved in one process.",
            "",
            "| backend | stage | p50 ms | p90 ms | p99 ms | GFLOP/s (inference p50) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for backend, stages in bench.items():
            for stage, p in stages.items():
                rate = demo["flops"] / (p["p50"] * 1e-3) / 1e9 if stage == "inference" else None
                lines.append(
                    f"| {backend} | {stage} | {p['p50']:.2f} | {p['p90']:.2f} | {p['p99']:.2f}"
                    f" | {_fmt(rate, '.1f')} |"
                )
        names = list(bench)
        if len(names) == 2:
            a, b = names
            for stage in ("inference", "total"):
                lines.append(
                    f"\n{stage} p50 ratio {a}/{b}: **{bench[a][stage]['p50'] / bench[b][stage]['p50']:.2f}x**"
                )
        lines += ["", *_thread_lines(demo)]
        lines.append("")
    lines += _onnx_sections(results)
    dep = results.get("deployment")
    if dep:
        c = dep["config"]
        lines += [
            "## Inference: deployment-shaped policy (random weights)",
            "",
            f"{c['backbone']}, {c['cameras']} cameras {c['image_size']},"
            f" {c['instruction_tokens']} instruction tokens, horizon {c['horizon']},"
            f" {c['sampling_steps']} flow steps; expert width {c['expert']['width']},"
            f" {c['expert']['stage2_layers']} Stage-2 layers.",
            "",
            "| parameters | backbone | expert | GFLOP / inference | PyTorch p50 ms | p99 ms | GFLOP/s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        t = dep.get("torch_ms") or {}
        flops = dep.get("flops")
        rate = flops / (t["p50"] * 1e-3) / 1e9 if flops and t else None
        lines.append(
            f"| {dep['params_M']:.0f}M | {dep['backbone_params_M']:.0f}M | {dep['expert_params_M']:.0f}M |"
            f" {_fmt(flops / 1e9 if flops else None, '.0f')} | {_fmt(t.get('p50'), '.0f')} |"
            f" {_fmt(t.get('p99'), '.0f')} | {_fmt(rate, '.1f')} |"
        )
        notes = []
        if t:
            runs = f"{t['n']} run(s)" if "n" in t else "its runs"
            notes.append(f"PyTorch latency over {runs} after one warm-up (slow on this CPU).")
        if dep.get("latency_skipped"):
            notes.append(f"PyTorch latency not measured: {dep['latency_skipped']}.")
        if dep.get("flops_error"):
            notes.append(f"FLOPs not counted: {dep['flops_error']}.")
        if "onnxruntime_ms" not in dep:
            notes.append(
                "ONNX Runtime not run for this shape in this run: it needs the ~7 GB fp32 export; run"
                " `python -m apt_policy.bench.report --skip demo midsize preprocessing control --deploy-onnx"
                " --merge` (docs/DEMO.md)."
            )
        lines += ["", *notes, ""]
    pre = results.get("preprocessing")
    if pre:
        lines += [
            "## Pre-processing: two 640x480 rgb8 camera messages -> model tensors",
            "",
            "The node's own path: `conversions.image_to_rgb` (zero-copy view honouring `step`)"
            " then the runtime's `ObservationEncoder` (resize, normalise, tokenise, state normalisation).",
            "",
            "| path | p50 ms | p90 ms | p99 ms | calls |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, p in pre.items():
            lines.append(f"| {name} | {p['p50']:.3f} | {p['p90']:.3f} | {p['p99']:.3f} | {p['n']} |")
        lines.append("")
    stream = results.get("control")
    if stream:
        lines += [
            "## Control: command stream at the simulated arm (`python -m apt_policy.bench.stream`)",
            "",
            "Policy node (ONNX Runtime, inference back to back) -> JointTrajectory -> fake_franka over DDS on"
            " loopback; arrivals timed at the receiver. Node `realtime_priority:"
            f" {STREAM_PRIORITY}`, fake_franka `realtime_priority: {CONTROLLER_PRIORITY}` (SCHED_FIFO where"
            " permitted). Machine stalls: wake-ups of a SCHED_FIFO 99 probe on each CPU later than 2 ms"
            " (`apt_policy.bench.stall_probe`); a gap (> 1.5 periods) with one in it was not the"
            " software's.",
            "",
            "| rate Hz | commands | achieved Hz | jitter p50 ms | p99 ms | max ms | missed"
            " | node lateness p99 ms | inference p50 ms | chunks | machine stalls (max ms)"
            " | gaps with a stall |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in stream:
            stalls = r.get("machine_stalls", -1)
            probe = (
                f" {stalls} ({r['machine_stall_max_ms']:.1f}) |"
                f" {r['gaps_with_machine_stall']} of {r['gaps']} |"
                if stalls >= 0
                else " - | - |"
            )
            lines.append(
                f"| {r['rate_hz']:g} | {r['commands']} | {r['achieved_hz']:.1f} | {r['jitter_p50_ms']:.2f} |"
                f" {r['jitter_p99_ms']:.2f} | {r['jitter_max_ms']:.1f} | {r['missed_ticks']} |"
                f" {r['node_lateness_p99_ms']:.2f} | {r['inference_p50_ms']:.1f} | {r['chunks']} |" + probe
            )
        lines.append("")
    if results.get("chunking"):
        lines += _chunking_markdown(results["chunking"])
    for name, err in results.get("errors", {}).items():
        lines.append(f"**{name} failed**: {err}\n")
    lines += [
        "## Plots",
        "",
        *(f"![{p}]({p})" for p in plots),
        "",
        "## Not measured here",
        "",
        NOT_MEASURABLE,
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# -------------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apt_policy.bench.report",
        description="Inference, pre-processing and control benchmarks -> <out>/report.md and bench.png.",
    )
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output directory (default bench_out)")
    p.add_argument("--model-bundle", type=Path, default=None, help="bundle (default: the cached demo bundle)")
    p.add_argument(
        "--model-export", type=Path, default=None, help="export of it (default: cached demo export)"
    )
    p.add_argument("--iters", type=int, default=30, help="apt-bench iterations per backend (default 30)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads per backend")
    p.add_argument("--deploy-iters", type=int, default=2, help="deployment-shape PyTorch runs (0: skip; 2)")
    p.add_argument(
        "--deploy-onnx",
        action="store_true",
        help="also export the deployment shape (fp32 ~7 GB + int8, in a temp dir) and run ONNX Runtime"
        " interleaved with PyTorch, one precision at a time (minutes; needs ~16 GB free)",
    )
    p.add_argument("--mid-iters", type=int, default=3, help="mid-size shape runs per backend (default 3)")
    p.add_argument(
        "--merge",
        action="store_true",
        help="update <out>/results.json with this run's sections (keeping the others) and rewrite report.md",
    )
    p.add_argument("--min-free-gb", type=float, default=4.0, help="memory to leave free for others (4 GB)")
    p.add_argument("--pre-iters", type=int, default=100, help="pre-processing calls timed (default 100)")
    p.add_argument("--stream-ticks", type=int, default=1500, help="commands per rate in bench_stream (1500)")
    p.add_argument("--rates", type=float, nargs="+", default=[50.0, 100.0, 200.0], help="control rates (Hz)")
    p.add_argument("--chunking-episodes", type=int, default=6, help="episodes per chunk-execution cell (6)")
    p.add_argument(
        "--chunking-latencies", nargs="+", default=["none", "rtx4090", "thor", "orin", "fixed:300"]
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("demo", "midsize", "deployment", "preprocessing", "control", "chunking"),
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "context": {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs,"
            f" {platform.system()} {platform.release()}",
            "load_start": os.getloadavg()[0],
            "threads": args.threads,
        },
        "errors": {},
    }
    bundle, export = args.model_bundle, args.model_export
    total = 6
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _header(1, total, "inference: demo model, torch vs onnxruntime (apt-bench)")
        if bundle is None or export is None:
            from apt_policy.demo.model_cache import ensure_demo_model

            cached_bundle, cached_export = ensure_demo_model()
            bundle, export = bundle or cached_bundle, export or cached_export
            source = "demo model (the trained policy `make demo` runs, from the cache)"
        else:
            source = f"given model `{bundle}` (not the cached demo model)"
        if "demo" not in args.skip:
            try:
                results["demo_model"] = bench_demo_model(bundle, export, args.iters, args.threads, work)
                results["demo_model"]["source"] = source
            except (subprocess.CalledProcessError, OSError, ValueError, RuntimeError) as exc:
                results["errors"]["demo model inference"] = f"{type(exc).__name__}: {exc}"
        _header(2, total, "inference: mid-size shape (deployment widths, few layers), torch vs ORT")
        if "midsize" not in args.skip:
            try:
                results["matmul_peak"] = matmul_peak(args.threads)
                mid = bench_onnx_vs_torch(
                    deployment_config(midsize=True), args.mid_iters, args.threads, work / "midsize",
                    min_free_gb=args.min_free_gb,
                )  # fmt: skip
                results["midsize"] = {**mid, "config": dict(MIDSIZE)}
            except (subprocess.CalledProcessError, OSError, MemoryError, RuntimeError, ValueError) as exc:
                results["errors"]["mid-size shape"] = f"{type(exc).__name__}: {exc}"
        _header(3, total, "inference: deployment-shaped policy (Qwen3-VL-2B truncated, 300M expert)")
        if "deployment" not in args.skip:
            try:
                iters = 0 if args.deploy_onnx else args.deploy_iters  # interleaved with ORT below instead
                results["deployment"] = bench_deployment(iters, args.threads, args.min_free_gb)
                if args.deploy_onnx:
                    results.setdefault("matmul_peak", matmul_peak(args.threads))
                    onnx_run = bench_onnx_vs_torch(
                        deployment_config(), args.deploy_iters, args.threads, work / "deployment",
                        pairwise=True, optimize="none", min_free_gb=args.min_free_gb,
                    )  # fmt: skip
                    results["deployment"].update(onnx_run)
                    if "torch_interleaved_ms" in onnx_run:
                        torch_ms = {**onnx_run["torch_interleaved_ms"], "n": args.deploy_iters}
                        results["deployment"]["torch_ms"] = torch_ms
                        results["deployment"].pop("latency_skipped", None)
            except (subprocess.CalledProcessError, OSError, MemoryError, RuntimeError, ValueError) as exc:
                results["errors"]["deployment shape"] = f"{type(exc).__name__}: {exc}"
        _header(4, total, "pre-processing: two 640x480 camera messages -> model tensors")
        if "preprocessing" not in args.skip:
            results["preprocessing"] = bench_preprocessing(export, args.pre_iters)
        _header(5, total, f"control: bench_stream at {', '.join(f'{r:g}' for r in args.rates)} Hz")
        if "control" not in args.skip:
            try:
                results["control"] = bench_control(export, args.stream_ticks, args.rates, work)
            except (subprocess.CalledProcessError, OSError, ValueError) as exc:
                results["errors"]["control stream"] = f"{type(exc).__name__}: {exc}"
        _header(6, total, "chunk execution: strategy x latency on the simulated clock")
        if "chunking" not in args.skip:
            try:
                results["chunking"] = bench_chunking(export, args.chunking_episodes, args.chunking_latencies)
            except (OSError, ValueError, RuntimeError) as exc:
                results["errors"]["chunk execution"] = f"{type(exc).__name__}: {exc}"
    results["context"]["load_end"] = os.getloadavg()[0]
    results["context"]["total_s"] = time.monotonic() - started
    if args.merge and (out / "results.json").is_file():  # read now: another run may have written it since
        previous = json.loads((out / "results.json").read_text())
        previous.update({k: v for k, v in results.items() if k not in ("context", "errors")})
        previous.setdefault("context", {})["merged_run"] = results["context"]
        previous["errors"] = {**previous.get("errors", {}), **results["errors"]}
        results = previous
    plots = _plots(results, out)
    if results.get("chunking"):
        from apt_policy.sim.closed_loop import CellResult, plot_table

        cells = [CellResult(**c) for c in results["chunking"]["scripted"]]
        plots.append(plot_table(cells, out / "chunking.png").name)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report = write_markdown(results, out, plots)
    print(f"\n{report.read_text()}")
    print(f"wrote {report}, {', '.join(plots)}, results.json in {out}", flush=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
