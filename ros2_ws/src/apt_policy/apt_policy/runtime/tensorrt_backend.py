"""TensorRT backend: the export's engines on pre-allocated device buffers, replayed as a CUDA graph.

Every family runs one chain (runtime.trt_plan.engine_order): prefix -> sampler for APT and action
distillation; prefix, history -> sampler for the action-prior family (its K executed steps go in, the
history token is computed by the history engine).

Torch-free: CUDA is driven through cuda-python (``cuda.bindings.runtime``). Written against the
TensorRT 10 Python API (IRuntime.deserialize_cuda_engine, named I/O tensors, execute_async_v3) and not
run in this repository's CI (no GPU there); see docs/EXPORT.md.

The prefix engine's outputs and the sampler engine's inputs of the same name share one device buffer
(runtime.trt_plan.buffer_plan), so nothing crosses the PCIe bus between the two graphs; only the
observation goes in and the normalised actions come out, through page-locked host buffers.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import ModelInputs, ObservationEncoder
from .manifest import Manifest, ManifestError, load_manifest
from .policy import GraphPolicy, InferenceError, PolicyInfo, resolve_rtc_mode
from .trt_plan import (
    Buffer,
    buffer_plan,
    check_engine_compatible,
    check_host_inputs,
    engine_order,
    fed_inputs,
)

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the TensorRT backend needs TensorRT 10 (`import tensorrt`; JetPack ships it, on x86 install NVIDIA's "
    "tensorrt wheels) and cuda-python (`pip install 'cuda-python>=12'`)"
)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT or the CUDA Python binding is not installed."""


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(f"{INSTALL_HINT}: {exc}") from exc
    return trt


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise TensorRTUnavailableError(f"{INSTALL_HINT}: {exc}") from exc
    return cudart


def cuda_check(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(cudart: Any, device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of a CUDA device."""
    prop = cuda_check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"


def engine_feeds(
    x: ModelInputs, rtc: bool, rtc_trained: np.ndarray, zero_history: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Host tensors for one run, by engine input name (each engine reads the ones it lists).

    A sampler with RTC inputs always gets them (a zero prefix of length 0 when none is given);
    ``zero_history``: the history token of an action-prior export without history (K = 0)."""
    feeds = {
        "pixel_values": x.pixel_values,
        "input_ids": x.input_ids,
        "text_mask": x.text_mask,
        "state": x.state,
        "noise": x.noise,
    }
    if rtc:
        feeds.update(prefix=x.prefix, prefix_len=x.prefix_len, rtc_trained=rtc_trained)
    if x.history_states is not None and x.history_actions is not None and x.history_mask is not None:
        feeds.update(
            history_states=x.history_states, history_actions=x.history_actions, history_mask=x.history_mask
        )
    if zero_history is not None:
        feeds["history_token"] = zero_history
    return feeds


class TensorRTPolicy(GraphPolicy):
    """Policy over an engine directory (see apt-export trt)."""

    backend = "tensorrt"
    warmup_iterations = 3

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest | None = None,
        device: int = 0,
        use_cuda_graph: bool = True,
        seed: int | None = None,
        rtc_mode: str = "auto",
    ) -> None:
        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else load_manifest(self.directory)  # integrity first
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        try:
            self._order = order = engine_order(self.manifest.engines)
        except ValueError as exc:
            raise ManifestError(f"{self.directory}: {exc}") from exc
        if "history" in self.manifest.graphs and "history" not in order:
            raise ManifestError(
                f"{self.directory} has a history graph but no history engine; rebuild with apt-export trt"
            )
        self.encoder = ObservationEncoder.from_manifest(self.directory, self.manifest, seed)
        self.config = self.encoder.config
        self._rtc = self.manifest.rtc_inputs  # engines built from a sampler with RTC inputs
        mode = resolve_rtc_mode(rtc_mode, self.config)
        self._info = PolicyInfo.from_config(
            self.config, self.backend, self.manifest.steps, rtc_inputs=self._rtc, rtc_mode=mode
        )
        self._rtc_trained = np.full((1,), 1.0 if mode == "trained" else 0.0, np.float32)

        cuda_check(cudart.cudaSetDevice(device))
        gpu_name, cc = gpu_identity(cudart, device)
        for name in order:
            spec = self.manifest.engines[name]
            check_engine_compatible(spec, trt.__version__, gpu_name, cc, spec.graph_sha256)

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines = {}
        self._contexts = {}
        for name in order:
            blob = (self.directory / self.manifest.engines[name].file).read_bytes()
            engine = self._runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise ManifestError(f"TensorRT could not deserialize {self.manifest.engines[name].file}")
            self._engines[name] = engine
            self._contexts[name] = engine.create_execution_context()

        graphs = {g: (self.manifest.graphs[g].inputs, self.manifest.graphs[g].outputs) for g in order}
        shapes = {
            spec.name: tuple(1 if d == "batch" else int(d) for d in spec.shape)
            for g in order
            for spec in (*graphs[g][0], *graphs[g][1])
        }
        try:
            self._plan: list[Buffer] = buffer_plan(graphs, order, shapes, outputs=["actions"])
            check_host_inputs(self._plan, fed_inputs(self.config.family, order, self._rtc))
        except ValueError as exc:
            raise ManifestError(f"{self.directory}: {exc}") from exc
        token = next((b for b in self._plan if b.name == "history_token" and b.host_input), None)
        self._zero_history = None if token is None else np.zeros(token.shape, np.dtype(token.dtype))
        self._stream = cuda_check(cudart.cudaStreamCreate())
        self._device: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._host_ptrs: list[int] = []
        for buf in self._plan:
            self._device[buf.name] = cuda_check(cudart.cudaMalloc(max(buf.nbytes, 1)))
            if buf.host_input or buf.host_output:
                self._host[buf.name] = self._pinned(buf)
            for graph, tensor in buf.bindings:
                ctx = self._contexts[graph]
                if self._engines[graph].get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                    ctx.set_input_shape(tensor, buf.shape)
                ctx.set_tensor_address(tensor, self._device[buf.name])
        for name in order:
            unset = self._contexts[name].infer_shapes()
            if unset:
                raise ManifestError(f"engine {name}: input shapes not set for {unset}")
        self._graph_exec = None
        self._use_cuda_graph = use_cuda_graph
        self._lock = threading.RLock()  # buffers are reused: one prediction at a time (thread-safe)

    def _pinned(self, buf: Buffer) -> np.ndarray:
        ptr = cuda_check(self._cudart.cudaMallocHost(buf.nbytes))
        self._host_ptrs.append(ptr)
        raw = (ctypes.c_byte * buf.nbytes).from_address(int(ptr))
        return np.frombuffer(memoryview(raw), dtype=np.dtype(buf.dtype)).reshape(buf.shape)

    def _enqueue(self) -> None:
        """Copies in, both engines, copy out: all asynchronous on one stream."""
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for buf in self._plan:
            if buf.host_input:
                src = self._host[buf.name].ctypes.data
                cuda_check(cudart.cudaMemcpyAsync(self._device[buf.name], src, buf.nbytes, h2d, self._stream))
        for name in self._order:
            if not self._contexts[name].execute_async_v3(int(self._stream)):
                raise InferenceError(f"TensorRT execute_async_v3 failed for {name}")
        for buf in self._plan:
            if buf.host_output:
                dst = self._host[buf.name].ctypes.data
                cuda_check(cudart.cudaMemcpyAsync(dst, self._device[buf.name], buf.nbytes, d2h, self._stream))

    def _capture(self) -> None:
        """Record one inference as a CUDA graph; engines that cannot be captured run eagerly instead."""
        cudart = self._cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        try:
            cuda_check(cudart.cudaStreamBeginCapture(self._stream, mode))
            try:
                self._enqueue()
            finally:
                graph = cuda_check(cudart.cudaStreamEndCapture(self._stream))
            self._graph_exec = cuda_check(cudart.cudaGraphInstantiate(graph, 0))
        except Exception as exc:  # capture is an optimisation; eager execution stays correct
            log.warning("CUDA graph capture failed (%s); running TensorRT engines eagerly", exc)
            self._use_cuda_graph = False
            self._graph_exec = None

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
        """Normalised inputs (batch 1) -> normalised actions [1, horizon, action_dim] (a fresh array)."""
        x = ModelInputs(
            pixel_values,
            input_ids,
            text_mask,
            state,
            noise,
            np.zeros_like(noise) if prefix is None else prefix,
            np.zeros((1,), np.int64) if prefix_len is None else prefix_len,
        )
        return self.run_inputs(x)

    def run_inputs(self, x: ModelInputs) -> np.ndarray:
        """Encoded inputs (with the action-prior history where the engines take it) -> normalised actions."""
        if int(np.max(x.prefix_len, initial=0)) > 0 and not self._rtc:
            raise InferenceError(f"{self.directory}: the sampler engine has no real-time-chunking inputs")
        feeds = engine_feeds(x, self._rtc, self._rtc_trained, self._zero_history)
        with self._lock:
            for buf in self._plan:
                if not buf.host_input:
                    continue
                value, host = feeds[buf.name], self._host[buf.name]
                if value.shape != host.shape:
                    raise InferenceError(
                        f"{buf.name} has shape {value.shape}, the engine expects {host.shape}"
                    )
                np.copyto(host, value, casting="same_kind")
            cudart = self._cudart
            if self._use_cuda_graph and self._graph_exec is None:
                self._enqueue()  # TensorRT needs one eager run before capture (lazy allocations)
                cuda_check(cudart.cudaStreamSynchronize(self._stream))
                self._capture()
            if self._graph_exec is not None:
                cuda_check(cudart.cudaGraphLaunch(self._graph_exec, self._stream))
            else:
                self._enqueue()
            cuda_check(cudart.cudaStreamSynchronize(self._stream))
            return self._host["actions"].copy()

    def close(self) -> None:
        """Free device and page-locked memory (also done at interpreter exit by the driver)."""
        cudart = self._cudart
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        for ptr in self._device.values():
            cudart.cudaFree(ptr)
        for ptr in self._host_ptrs:
            cudart.cudaFreeHost(ptr)
        self._device, self._host_ptrs, self._host = {}, [], {}
        cudart.cudaStreamDestroy(self._stream)
