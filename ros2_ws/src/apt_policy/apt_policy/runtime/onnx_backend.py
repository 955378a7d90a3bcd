"""ONNX Runtime backend: prefix graph once, then the unrolled sampler graph. Never imports torch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import ObservationEncoder
from .manifest import GraphSpec, Manifest, ManifestError, TensorSpec, load_manifest
from .policy import GraphPolicy, InferenceError, PolicyInfo, resolve_rtc_mode

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """Requested providers that exist (error if none), else CUDA when present, always ending with CPU."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(
                f"ONNX Runtime providers {missing} are not available here (available: {list(available)})"
            )
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


def session_options(ort: Any, intra_op_threads: int = 0, allow_spinning: bool = True) -> Any:
    """Session options every ONNX Runtime policy uses: all graph optimisations, ``intra_op_threads`` (0: one
    per physical core), sequential graphs without inter-op threads, optionally no spinning workers."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(intra_op_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if not allow_spinning:  # idle worker threads sleep instead of spinning (shared CPUs, benchmarks)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def graph_path(directory: Path, manifest: Manifest, name: str, use_optimized: bool, ort_version: str) -> Path:
    """The file run for graph ``name``: its saved ORT-optimised version where usable (``use_optimized`` and
    the same ONNX Runtime version), else the graph."""
    spec = manifest.graphs[name]
    opt = spec.optimized
    if use_optimized and opt is not None and opt.onnxruntime_version == ort_version:
        return directory / opt.file
    return directory / spec.file


def open_session(
    ort: Any, path: Path, options: Any, providers: Sequence[str], spec: GraphSpec | None = None
) -> Any:
    """An InferenceSession of ``path``; ManifestError naming the file when ONNX Runtime cannot load it, or
    when the graph's input / output names differ from the manifest's ``spec`` of it."""
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
        raise ManifestError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    if spec is not None:
        for kind, declared, actual in (
            ("inputs", spec.input_names, [i.name for i in session.get_inputs()]),
            ("outputs", spec.output_names, [o.name for o in session.get_outputs()]),
        ):
            if sorted(declared) != sorted(actual):
                raise ManifestError(
                    f"{path.name}: the manifest lists {kind} {list(declared)}, the graph has {actual}"
                )
    return session


def _empty(spec: TensorSpec) -> np.ndarray:
    if not all(isinstance(d, int) and d >= 0 for d in spec.shape):
        raise ManifestError(f"{spec.name} has a dynamic shape {spec.shape}; exports must have static shapes")
    return np.empty(tuple(int(d) for d in spec.shape), dtype=np.dtype(spec.dtype))


class OnnxRuntimePolicy(GraphPolicy):
    """Policy over an export directory (see apt-export onnx) run by ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        seed: int | None = None,
        allow_spinning: bool = True,
        rtc_mode: str = "auto",
        use_optimized: bool = True,
    ) -> None:
        """``intra_op_threads`` 0 = ONNX Runtime's default, one thread per physical core (the graphs run
        sequentially, so there are no inter-op threads). ``use_optimized``: run the ORT-optimised graphs
        saved at export (``<graph>.opt.onnx``) when the provider is CPU and ONNX Runtime's version matches."""
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else load_manifest(self.directory)
        for name in ("prefix", "sampler"):
            if name not in self.manifest.graphs:
                raise ManifestError(f"{self.directory} has no {name!r} graph; re-export with apt-export onnx")
        self.encoder = ObservationEncoder.from_manifest(self.directory, self.manifest, seed)
        self.config = self.encoder.config
        options = session_options(ort, intra_op_threads, allow_spinning)
        self.providers = choose_providers(ort.get_available_providers(), providers)
        self.use_optimized = use_optimized and self.providers == ["CPUExecutionProvider"]
        self._ort_version = ort.__version__
        self._sessions = {name: self._open(ort, name, options) for name in ("prefix", "sampler")}
        self._prefix_outputs = list(self.manifest.graphs["prefix"].output_names)
        self._sampler_inputs = list(self.manifest.graphs["sampler"].input_names)
        self._rtc = self.manifest.rtc_inputs
        mode = resolve_rtc_mode(rtc_mode, self.config)
        self._info = PolicyInfo.from_config(
            self.config, self.backend, self.manifest.steps, rtc_inputs=self._rtc, rtc_mode=mode
        )
        self._rtc_trained = np.full((1,), 1.0 if mode == "trained" else 0.0, np.float32)
        self._lock = threading.RLock()  # buffers are reused: one prediction at a time (thread-safe)
        self._bind_outputs()

    def graph_file(self, name: str) -> Path:
        """The file run for graph ``name``: its saved ORT-optimised version where usable, else the graph."""
        return graph_path(self.directory, self.manifest, name, self.use_optimized, self._ort_version)

    def _open(self, ort: Any, name: str, options: Any) -> Any:
        return open_session(ort, self.graph_file(name), options, self.providers, self.manifest.graphs[name])

    def _bind_outputs(self) -> None:
        """I/O bindings: prefix outputs feed the sampler without a copy, outputs land in fixed buffers.

        On CPU the prefix outputs and the actions go to numpy buffers allocated once (static shapes). With
        the CUDA provider the prefix outputs stay on the GPU (ORT allocates them) and only the actions
        come back to the host.
        """
        self._device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._bindings = {name: sess.io_binding() for name, sess in self._sessions.items()}
        prefix, sampler = self._bindings["prefix"], self._bindings["sampler"]
        self._buffers: dict[str, np.ndarray] = {}
        for spec in self.manifest.graphs["prefix"].outputs:
            if self._device == "cuda":
                prefix.bind_output(spec.name, "cuda")
            else:
                self._buffers[spec.name] = buf = _empty(spec)
                prefix.bind_output(spec.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
                if spec.name in self._sampler_inputs:
                    sampler.bind_input(spec.name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        (actions,) = self.manifest.graphs["sampler"].outputs
        self._actions = _empty(actions)
        sampler.bind_output(
            actions.name, "cpu", 0, self._actions.dtype, list(self._actions.shape), self._actions.ctypes.data
        )

    def run(
        self,
        pixel_values: np.ndarray,
        input_ids: np.ndarray,
        text_mask: np.ndarray,
        state: np.ndarray,
        noise: np.ndarray,
        prefix: np.ndarray | None = None,
        prefix_len: np.ndarray | None = None,
    ) -> np.ndarray:
        """Graphs only: normalised inputs -> normalised actions [B, horizon, action_dim].

        A sampler with RTC inputs always gets them: a zero prefix of length 0 when none is given (which
        the graph turns into exactly the prefix-less result)."""
        has_prefix = prefix_len is not None and int(np.max(prefix_len, initial=0)) > 0
        if has_prefix and not self._rtc:
            raise InferenceError(f"{self.directory}: the sampler graph has no real-time-chunking inputs")
        prefix_io, sampler = self._bindings["prefix"], self._bindings["sampler"]
        with self._lock:
            try:
                for name, value in (
                    ("pixel_values", pixel_values),
                    ("input_ids", input_ids),
                    ("text_mask", text_mask),
                ):
                    prefix_io.bind_cpu_input(name, np.ascontiguousarray(value))
                self._sessions["prefix"].run_with_iobinding(prefix_io)
                if self._device == "cuda":
                    for name, value in zip(self._prefix_outputs, prefix_io.get_outputs(), strict=True):
                        if name in self._sampler_inputs:
                            sampler.bind_ortvalue_input(name, value)
                sampler.bind_cpu_input("state", np.ascontiguousarray(state))
                if "noise" in self._sampler_inputs:  # one-pass families (action_distillation) take none
                    sampler.bind_cpu_input("noise", np.ascontiguousarray(noise))
                if self._rtc:
                    if prefix is None or prefix_len is None:
                        prefix, prefix_len = np.zeros_like(noise), np.zeros((noise.shape[0],), np.int64)
                    sampler.bind_cpu_input("prefix", np.ascontiguousarray(prefix))
                    sampler.bind_cpu_input("prefix_len", np.ascontiguousarray(prefix_len))
                    trained = np.broadcast_to(self._rtc_trained, (noise.shape[0],))
                    sampler.bind_cpu_input("rtc_trained", np.ascontiguousarray(trained))
                self._sessions["sampler"].run_with_iobinding(sampler)
            except Exception as exc:  # onnxruntime raises its own exception types for shape/type errors
                raise InferenceError(f"ONNX Runtime inference failed: {exc}") from exc
            return self._actions.copy()
