"""Run an exported (or bundled) APT policy with one of several backends behind one Policy contract.

    from apt_policy.runtime import load_policy
    policy = load_policy("export_dir", backend="auto")   # tensorrt | onnxruntime | torch
    actions = policy.predict({"wrist": rgb}, state, "reach the red cube")

``ProcessPolicy(dir, backend)`` serves the same contract from a child process (its own interpreter: what
the ROS node uses so that inference never holds its command stream's GIL).

The ONNX Runtime and TensorRT backends never import torch.
"""

from .load import BACKENDS, BackendUnavailableError, detect_kind, load_policy
from .manifest import IntegrityError, Manifest, ManifestError, load_manifest
from .policy import InferenceError, Policy, PolicyInfo
from .process_policy import ProcessPolicy

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "InferenceError",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "Policy",
    "PolicyInfo",
    "ProcessPolicy",
    "detect_kind",
    "load_manifest",
    "load_policy",
]
