"""Qwen3-VL backbone for deployment: fixed shapes, exportable, numerically the transformers model.

See docs/BACKBONE.md for the sequence layout, preprocessing and parity evidence.
"""

from .config import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig, TextConfig, VisionConfig
from .layout import SequenceLayout, sequence_layout
from .loading import CheckpointError, load_qwen3vl_checkpoint
from .modeling import BackboneOutput, Qwen3VLBackbone

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "BackboneOutput",
    "CheckpointError",
    "Qwen3VLBackbone",
    "Qwen3VLBackboneConfig",
    "SequenceLayout",
    "TextConfig",
    "VisionConfig",
    "load_qwen3vl_checkpoint",
    "sequence_layout",
]
