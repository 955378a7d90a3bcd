"""TensorRT decisions as pure functions: build flags, shape profiles, engine cache keys, buffer plans.

Nothing here imports tensorrt or CUDA, so the logic is tested on machines without a GPU; the builder
(apt_export.trt) and the runtime backend (runtime.tensorrt_backend) only carry the decisions out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..core.action_prior import HISTORY_INPUTS
from .manifest import RTC_SAMPLER_INPUTS, EngineSpec, TensorSpec

ENGINE_PRECISIONS = ("fp16", "bf16", "fp8")
_ITEMSIZE = {"bfloat16": 2, "float8_e4m3fn": 1, "bool": 1}

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)


class EngineMismatchError(RuntimeError):
    """An engine was built for another GPU, TensorRT version or graph than the one at hand."""


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder. ``flags`` are trt.BuilderFlag member names."""

    strongly_typed: bool
    flags: tuple[str, ...]
    reason: str


def build_plan(graph_precision: str, engine_precision: str, has_fp8_qdq: bool = False) -> BuildPlan:
    """Choose strongly typed vs. builder precision flags for an ONNX graph of ``graph_precision``.

    Strongly typed engines keep exactly the graph's types, so an fp16 export (softmax, norms and the flow
    integration already kept in fp32 by the exporter) builds strongly typed for fp16. An fp32 graph asked
    for fp16/bf16 is built weakly typed with that flag (TensorRT then chooses per layer). fp8 needs an
    explicitly quantised graph (Q/DQ nodes), built strongly typed.
    """
    if engine_precision not in ENGINE_PRECISIONS:
        raise ValueError(f"engine precision must be one of {ENGINE_PRECISIONS}, got {engine_precision!r}")
    if engine_precision == "fp8":
        if not has_fp8_qdq:
            raise ValueError(
                "fp8 engines need an explicitly quantised ONNX graph (QuantizeLinear/DequantizeLinear to "
                "float8, e.g. from NVIDIA ModelOpt); this export has none. Use fp16 or bf16."
            )
        return BuildPlan(True, (), "fp8 Q/DQ graph: strongly typed, types taken from the graph")
    if graph_precision == engine_precision:
        return BuildPlan(True, (), f"{graph_precision} graph: strongly typed, types taken from the graph")
    if graph_precision == "fp32":
        flag = engine_precision.upper()
        return BuildPlan(False, (flag,), f"fp32 graph: weakly typed with BuilderFlag.{flag}")
    raise ValueError(
        f"cannot build a {engine_precision} engine from a {graph_precision} graph; "
        f"export with --precision fp32 (or {engine_precision}) first"
    )


def resolve_profile(
    inputs: Sequence[TensorSpec], dynamic: Mapping[str, tuple[int, int, int]] | None = None
) -> Profile:
    """min/opt/max shapes per input: fixed dims as they are, symbolic dims from ``dynamic`` (min, opt, max).

    With no range given for a symbolic axis, "batch" defaults to (1, 1, 1) (the robot runs one observation);
    any other symbolic axis is an error, so a profile is never guessed.
    """
    ranges = {"batch": (1, 1, 1), **(dynamic or {})}
    for axis, (lo, opt, hi) in ranges.items():
        if not 1 <= lo <= opt <= hi:
            raise ValueError(
                f"profile range for {axis!r} must satisfy 1 <= min <= opt <= max, got {lo, opt, hi}"
            )
    profile: Profile = {}
    for spec in inputs:
        shapes: list[list[int]] = [[], [], []]
        for dim in spec.shape:
            if isinstance(dim, int):
                if dim < 0:
                    raise ValueError(f"input {spec.name} has an unnamed dynamic dim; name it in the manifest")
                for s in shapes:
                    s.append(dim)
            elif dim in ranges:
                for s, v in zip(shapes, ranges[dim], strict=True):
                    s.append(v)
            else:
                raise ValueError(
                    f"input {spec.name} has dynamic axis {dim!r}; give its (min, opt, max) range"
                )
        profile[spec.name] = (tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2]))
    return profile


def profile_to_json(profile: Profile) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}


def engine_cache_key(
    graph_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profile: Profile,
) -> str:
    """Stable key of an engine: any change of graph, TensorRT, GPU, precision or profile changes it."""
    payload = {
        "graph_sha256": graph_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "sm": compute_capability,
        "precision": precision,
        "profile": profile_to_json(profile),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def check_engine_compatible(
    spec: EngineSpec, tensorrt_version: str, gpu_name: str, compute_capability: str, graph_sha256: str
) -> None:
    """Raise EngineMismatchError (saying what to do) unless the engine was built for exactly this setup."""
    problems = []
    if spec.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT {spec.tensorrt_version} (this machine has {tensorrt_version})")
    if spec.compute_capability != compute_capability or spec.gpu_name != gpu_name:
        problems.append(
            f"GPU {spec.gpu_name} sm_{spec.compute_capability} "
            f"(this machine: {gpu_name} sm_{compute_capability})"
        )
    if spec.graph_sha256 != graph_sha256:
        problems.append("another ONNX graph than the one in this directory")
    if problems:
        raise EngineMismatchError(
            f"engine {spec.file} was built for " + "; ".join(problems) + ". Rebuild it on this machine with "
            "`apt-export trt --onnx <export dir> --out <engine dir> --force`."
        )


def itemsize(dtype: str) -> int:
    """Bytes per element of a numpy dtype name (plus bfloat16 / float8, which numpy lacks)."""
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    import numpy as np

    return int(np.dtype(dtype).itemsize)


@dataclass(frozen=True)
class Buffer:
    """One device allocation and every (graph, tensor) bound to it."""

    name: str
    dtype: str
    shape: Shape
    nbytes: int
    bindings: tuple[tuple[str, str], ...]
    host_input: bool  # filled from the host before each run
    host_output: bool  # copied back to the host after each run


def buffer_plan(
    graphs: Mapping[str, tuple[Sequence[TensorSpec], Sequence[TensorSpec]]],
    order: Sequence[str],
    shapes: Mapping[str, Shape],
    outputs: Sequence[str],
) -> list[Buffer]:
    """Plan device buffers for graphs run in ``order`` where an output feeds a later input of the same name.

    ``graphs`` maps graph -> (inputs, outputs); ``shapes`` gives concrete shapes for symbolic tensors (by
    tensor name; fixed shapes are read from the specs); ``outputs`` are the tensors the host reads back.
    A tensor produced by an earlier graph and consumed by a later one shares one buffer (no copy); inputs
    nobody produces are host inputs. Raises if a consumed tensor's dtype or shape differs from the producer's.
    """
    buffers: dict[str, dict] = {}
    for graph in order:
        ins, outs = graphs[graph]
        for spec, is_input in [(s, True) for s in ins] + [(s, False) for s in outs]:
            shape = tuple(shapes[spec.name]) if spec.name in shapes else spec.shape
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(
                    f"{graph}.{spec.name} has symbolic shape {spec.shape}; give a concrete shape"
                )
            entry = buffers.get(spec.name)
            if entry is None:
                buffers[spec.name] = {
                    "dtype": spec.dtype,
                    "shape": tuple(int(d) for d in shape),
                    "bindings": [(graph, spec.name)],
                    "host_input": is_input,
                }
                continue
            if entry["dtype"] != spec.dtype or entry["shape"] != tuple(shape):
                raise ValueError(
                    f"{graph}.{spec.name} is {spec.dtype}{list(shape)} but was planned as "
                    f"{entry['dtype']}{list(entry['shape'])}"
                )
            if not is_input and any(g == graph for g, _ in entry["bindings"]):
                raise ValueError(f"{graph}.{spec.name} is both an input and an output of {graph}")
            entry["bindings"].append((graph, spec.name))
    missing = [o for o in outputs if o not in buffers]
    if missing:
        raise ValueError(f"requested outputs {missing} are produced by no graph")
    return [
        Buffer(
            name=name,
            dtype=e["dtype"],
            shape=e["shape"],
            nbytes=itemsize(e["dtype"]) * math.prod(e["shape"]),
            bindings=tuple(e["bindings"]),
            host_input=e["host_input"],
            host_output=name in outputs,
        )
        for name, e in buffers.items()
    ]


def check_host_inputs(plan: Sequence[Buffer], fed: Sequence[str]) -> None:
    """Every host input of ``plan`` must be among the tensors the backend fills before a run (``fed``);
    an unfed input would run on uninitialised device memory. Raises ValueError naming the missing ones."""
    missing = sorted(b.name for b in plan if b.host_input and b.name not in fed)
    if missing:
        raise ValueError(
            f"the engines take inputs {missing} that this runtime does not feed; re-export with a matching "
            "apt-export or update apt_policy"
        )


RUN_ORDER = ("prefix", "history", "sampler")  # history: the action-prior family's encoder, when exported
APT_FED = ("pixel_values", "input_ids", "text_mask", "state", "noise")


def engine_order(engines: Collection[str]) -> tuple[str, ...]:
    """The engines one inference runs, in order: prefix, the history encoder where there is one, sampler.

    Every family fits this chain (APT and action distillation: prefix -> sampler; action prior with K > 0:
    prefix, history -> sampler); the denoiser is never run. Raises ValueError if prefix or sampler is missing.
    """
    missing = [g for g in ("prefix", "sampler") if g not in engines]
    if missing:
        raise ValueError(f"no engine for {missing}; run apt-export trt")
    return tuple(g for g in RUN_ORDER if g in engines)


def fed_inputs(family: str, order: Sequence[str], rtc: bool) -> tuple[str, ...]:
    """The host tensors the TensorRT runtime fills before a run (``check_host_inputs`` holds the engines
    to them): APT's five, the RTC inputs for a sampler that takes them, and for the action-prior family the
    K executed steps (history engine) or, with no history engine (K = 0), a zero ``history_token``."""
    fed = [*APT_FED, *(RTC_SAMPLER_INPUTS if rtc else ())]
    if family == "action_prior":
        fed += HISTORY_INPUTS if "history" in order else ("history_token",)
    return tuple(fed)
