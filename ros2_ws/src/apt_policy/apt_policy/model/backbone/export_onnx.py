"""Export the backbone alone to ONNX (fp32 or fp16 weights; softmax and norms stay float32).

The full policy graph is the exporter's job (``apt_export``); this is the backbone-only graph used for
parity checks and for benchmarking the backbone in ONNX Runtime.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from .modeling import Qwen3VLBackbone

INPUT_NAMES = ("pixel_values", "input_ids", "text_mask")
OUTPUT_NAMES = ("hidden_states", "vision_mask", "language_mask")


def example_inputs(model: Qwen3VLBackbone, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes and dtypes for tracing (values are irrelevant: no data-dependent flow)."""
    cfg = model.config
    device = model.language_model.embed_tokens.weight.device
    pixels = torch.zeros(batch_size, cfg.num_cameras, 3, *cfg.image_size, device=device)
    ids = torch.zeros(batch_size, cfg.max_text_tokens, dtype=torch.long, device=device)
    mask = torch.ones(batch_size, cfg.max_text_tokens, dtype=torch.long, device=device)
    return pixels, ids, mask


def export_backbone_onnx(
    model: Qwen3VLBackbone,
    path: str | Path,
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    dynamic_batch: bool = False,
    opset: int = 18,
) -> Path:
    """Write ``model`` as one ONNX graph with inputs INPUT_NAMES and outputs OUTPUT_NAMES.

    Every shape is static except, with ``dynamic_batch``, the batch axis (named "batch").
    ``dtype`` (e.g. ``torch.float16``) casts a copy of the weights; ``pixel_values`` stays float32 and
    ``hidden_states`` comes out in ``dtype``. Large models get their weights in ``<path>.data``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=64)
        dynamic_shapes = tuple({0: batch} for _ in INPUT_NAMES)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                example_inputs(model, batch_size),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=model.num_parameters() * 4 > 1_500_000_000,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    return path
