"""load_policy: open an engine dir, an ONNX export dir or a training bundle with the right backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .manifest import MANIFEST_NAME, ManifestError, load_manifest
from .policy import Policy

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (library missing or wrong kind of directory)."""


def detect_kind(path: str | Path) -> str:
    """'engines' (TensorRT engine dir), 'onnx' (ONNX export dir) or 'bundle' (torch training bundle)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"policy path {root} is not a directory")
    if (root / MANIFEST_NAME).is_file():
        manifest = load_manifest(root, verify=False)
        return "engines" if manifest.engines else "onnx"
    if (root / "config.json").is_file():
        return "bundle"
    raise ManifestError(
        f"{root} is neither an export directory ({MANIFEST_NAME}) nor a policy bundle (config.json)"
    )


def load_policy(path: str | Path, backend: str = "auto", **options: Any) -> Policy:
    """Load a policy satisfying the Policy contract.

    ``backend="auto"`` picks by directory: TensorRT engine dir -> tensorrt, ONNX export dir -> onnxruntime
    (CUDA EP when present), bundle dir -> torch. ``options`` go to the backend (e.g. ``providers``,
    ``intra_op_threads``, ``seed`` for onnxruntime; ``device`` for torch/tensorrt).
    The onnxruntime and tensorrt backends never import torch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kind = detect_kind(path)
    if backend == "auto":
        backend = {"engines": "tensorrt", "onnx": "onnxruntime", "bundle": "torch"}[kind]
    wanted = {"tensorrt": "engines", "onnxruntime": "onnx", "torch": "bundle"}[backend]
    if kind != wanted:
        hint = {
            "engines": "a TensorRT engine dir (apt-export trt)",
            "onnx": "an ONNX export dir (apt-export onnx)",
            "bundle": "a training bundle (config.json + weights)",
        }
        raise BackendUnavailableError(f"backend {backend!r} needs {hint[wanted]}, but {path} is {hint[kind]}")
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailableError(
                "backend 'onnxruntime' needs `pip install onnxruntime` (or onnxruntime-gpu)"
            )
        if load_manifest(path, verify=False).config.get("family") == "action_prior":
            from .onnx_action_prior import OnnxActionPriorPolicy

            return OnnxActionPriorPolicy(path, **options)
        from .onnx_backend import OnnxRuntimePolicy

        return OnnxRuntimePolicy(path, **options)
    if backend == "tensorrt":
        from .tensorrt_backend import TensorRTPolicy

        return TensorRTPolicy(path, **options)
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError("backend 'torch' needs torch (pip install 'apt_policy[torch]')")
    from .torch_backend import load_torch_policy

    return load_torch_policy(path, **options)
