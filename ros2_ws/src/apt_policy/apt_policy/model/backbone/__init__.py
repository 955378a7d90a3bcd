"""Qwen3-VL backbone for deployment: fixed shapes, exportable, numerically the transformers model.

See docs/BACKBONE.md for the sequence layout, preprocessing and parity evidence.
"""

from .config import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig, TextConfig, VisionConfig
from .layout import SequenceLayout, sequence_layout
from .modeling import BackboneOutput, Qwen3VLBackbone

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "BackboneOutput",
    "Qwen3VLBackbone",
    "Qwen3VLBackboneConfig",
    "SequenceLayout",
    "TextConfig",
    "VisionConfig",
    "load_qwen3vl_checkpoint",
    "sequence_layout",
]


def __getattr__(name: str):  # lazy: the loader pulls in safetensors
    if name == "load_qwen3vl_checkpoint":
        from .loading import load_qwen3vl_checkpoint

        return load_qwen3vl_checkpoint
    raise AttributeError(name)
