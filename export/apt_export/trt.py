"""ONNX export dir -> TensorRT engine dir (TensorRT 10 Python API), with an engine cache and timing cache.

Every decision (strongly typed or not, builder flags, profile shapes, cache key) comes from the pure
functions in apt_policy.runtime.trt_plan, tested without a GPU. This module only drives TensorRT;
it imports tensorrt lazily and has not been run in this repository's CI (no TensorRT there).

Engine cache: ``<cache_dir>/<key>.engine`` where key = sha256(graph sha256, TensorRT version, GPU name,
compute capability, precision, profile). A second build with the same key copies the cached engine
instead of rebuilding (``--force`` rebuilds). The timing cache (``timing-<trt>-sm<cc>.cache``) makes
rebuilds after a graph change faster.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from apt_policy.runtime.manifest import (
    EngineSpec,
    Manifest,
    hash_files,
    load_manifest,
)
from apt_policy.runtime.tensorrt_backend import gpu_identity, import_cudart, import_tensorrt
from apt_policy.runtime.trt_plan import build_plan, engine_cache_key, profile_to_json, resolve_profile
from tqdm import tqdm

DEFAULT_CACHE = Path(os.environ.get("APT_ENGINE_CACHE", Path.home() / ".cache" / "apt_export" / "engines"))
ENGINE_GRAPHS = ("prefix", "sampler")  # what the runtime runs; the denoiser is for parity and custom loops


def _progress_monitor(trt: Any) -> Any | None:
    """An IProgressMonitor printing TensorRT build phases as tqdm bars (None on TensorRT < 10)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                position = len(self._bars)
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=phase_name, leave=False, position=position
                )

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()


def _build_engine(
    trt: Any,
    onnx_path: Path,
    profile: dict[str, tuple],
    strongly_typed: bool,
    flags: tuple[str, ...],
    timing_cache_path: Path,
    workspace_bytes: int | None,
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network_flags = 0
    if strongly_typed:
        network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(blob)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
    timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    precision: str = "fp16",
    force: bool = False,
    cache_dir: str | Path = DEFAULT_CACHE,
    batch: tuple[int, int, int] = (1, 1, 1),
    workspace_bytes: int | None = None,
    device: int = 0,
    graphs: tuple[str, ...] = ENGINE_GRAPHS,
) -> Manifest:
    """Build (or reuse from the cache) one engine per graph; write an engine dir with its manifest."""
    trt = import_tensorrt()
    cudart = import_cudart()
    src = Path(onnx_dir)
    manifest = load_manifest(src)
    if "history" in manifest.graphs and "history" not in graphs:  # action-prior family: runs on the robot too
        graphs = (*graphs, "history")
    out, cache = Path(out_dir), Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    gpu_name, cc = gpu_identity(cudart, device)
    has_qdq = bool(manifest.exporter.get("fp8_qdq", False))
    plan = build_plan(manifest.precision, precision, has_fp8_qdq=has_qdq)
    timing_cache = cache / f"timing-{trt.__version__}-sm{cc.replace('.', '')}.cache"
    engines: dict[str, EngineSpec] = {}
    for name in tqdm(graphs, desc=f"apt-export trt ({precision}, {gpu_name})", unit="engine"):
        graph = manifest.graphs[name]
        profile = resolve_profile(graph.inputs, {"batch": batch})
        graph_sha = manifest.graph_sha256(name)
        key = engine_cache_key(graph_sha, trt.__version__, gpu_name, cc, precision, profile)
        cached = cache / f"{key}.engine"
        if force or not cached.is_file():
            tqdm.write(f"building {name} engine ({plan.reason}); this can take minutes")
            blob = _build_engine(
                trt, src / graph.file, profile, plan.strongly_typed, plan.flags, timing_cache, workspace_bytes
            )
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(cached)
        else:
            tqdm.write(f"{name}: reusing cached engine {cached}")
        file = f"{name}.engine"
        shutil.copyfile(cached, out / file)
        engines[name] = EngineSpec(
            file=file,
            graph_sha256=graph_sha,
            tensorrt_version=trt.__version__,
            gpu_name=gpu_name,
            compute_capability=cc,
            precision=precision,
            strongly_typed=plan.strongly_typed,
            profile=profile_to_json(profile),
            cache_key=key,
        )
    shutil.copyfile(src / manifest.tokenizer, out / manifest.tokenizer)
    files = hash_files(out, [e.file for e in engines.values()] + [manifest.tokenizer])
    engine_manifest = Manifest(
        model_id=manifest.model_id,
        precision=manifest.precision,
        opset=manifest.opset,
        steps=manifest.steps,
        graphs=manifest.graphs,
        config=manifest.config,
        normalization=manifest.normalization,
        tokenizer=manifest.tokenizer,
        files=files,
        exporter={**manifest.exporter, "onnx_dir": str(src.resolve())},
        engines=engines,
    )
    engine_manifest.write(out)
    return engine_manifest
