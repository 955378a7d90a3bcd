"""Compare the backbone with transformers' ``Qwen3VLModel`` on any Qwen3-VL checkpoint.

    python -m apt_policy.model.backbone.reference CHECKPOINT_DIR [--num-cameras 2] [--num-layers 14]
        [--image-size 224 224] [--max-text-tokens 32] [--dtype float32] [--device cpu] [--tolerance 1e-4]

Loads the checkpoint twice (ours and transformers', so it needs transformers and twice the model's
memory), feeds both the same random uint8 images (through transformers' own image processor on its
side) and the same instruction tokens in our sequence layout, and prints every decoder layer's max abs
difference and worst cosine over the valid positions. Exit status 1 when a layer exceeds the tolerance.
Development tool only: transformers is imported here and nowhere on the deployment path.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig
from .layout import IMAGE, VISION_END, VISION_START, sequence_layout
from .modeling import Qwen3VLBackbone


def hf_config(cfg: Qwen3VLBackboneConfig) -> Any:
    """A transformers ``Qwen3VLConfig`` with the architecture of ``cfg`` (all text layers)."""
    from transformers import Qwen3VLConfig

    v, t = cfg.vision, cfg.text
    return Qwen3VLConfig(
        vision_config={
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "hidden_act": v.hidden_act,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
            "out_hidden_size": v.out_hidden_size,
            "num_position_embeddings": v.num_position_embeddings,
            "deepstack_visual_indexes": list(v.deepstack_visual_indexes),
        },
        text_config={
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "hidden_act": t.hidden_act,
            "rms_norm_eps": t.rms_norm_eps,
            "attention_bias": t.attention_bias,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
                "mrope_interleaved": True,
            },
        },
        image_token_id=cfg.image_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
    )


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, n_cam, H, W, 3] RGB -> (x/255 - IMAGE_MEAN)/IMAGE_STD as float32 [B, n_cam, 3, H, W]."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))


def hf_layer_outputs(
    hf_model: Any,
    cfg: Qwen3VLBackboneConfig,
    images: np.ndarray,
    input_ids: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """Every decoder layer's output [L, B, S, D] from transformers for our sequence.

    Pixels go through transformers' own Qwen2-VL image processor (no resize, mean = std = 0.5); the
    token sequence is our layout with image-pad tokens on the image positions.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    batch = images.shape[0]
    processor = Qwen2VLImageProcessorPil(
        patch_size=cfg.vision.patch_size,
        merge_size=cfg.vision.spatial_merge_size,
        temporal_patch_size=cfg.vision.temporal_patch_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_resize=False,
    )
    pixels = processor(
        [images[b, c] for b in range(batch) for c in range(cfg.num_cameras)], return_tensors="pt"
    )

    kind = sequence_layout(cfg).kind[: cfg.text_offset]
    prefix = np.zeros(cfg.text_offset, dtype=np.int64)
    prefix[kind == IMAGE] = cfg.image_token_id
    prefix[kind == VISION_START] = cfg.vision_start_token_id
    prefix[kind == VISION_END] = cfg.vision_end_token_id
    device = next(hf_model.parameters()).device
    full_ids = torch.cat([torch.from_numpy(prefix).expand(batch, -1), input_ids.cpu()], dim=1).to(device)
    attention_mask = torch.cat([torch.ones(batch, cfg.text_offset, dtype=torch.long), text_mask.cpu()], dim=1)

    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in hf_model.language_model.layers
    ]
    try:
        with torch.no_grad():
            hf_model(
                input_ids=full_ids,
                attention_mask=attention_mask.to(device),
                pixel_values=pixels["pixel_values"].to(device),
                image_grid_thw=pixels["image_grid_thw"].to(device),
                mm_token_type_ids=(full_ids == cfg.image_token_id).long(),
            )
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(captured)


@dataclass(frozen=True)
class LayerDiff:
    layer: int
    max_abs_diff: float
    max_abs_value: float
    min_cosine: float


def compare(
    ours: Qwen3VLBackbone,
    hf_model: Any,
    images: np.ndarray,
    input_ids: torch.Tensor,
    text_mask: torch.Tensor,
) -> list[LayerDiff]:
    """Per-layer differences on the valid (vision + valid instruction) positions."""
    device = ours.language_model.embed_tokens.weight.device
    with torch.no_grad():
        out = ours(normalise(images).to(device), input_ids.to(device), text_mask.to(device))
    reference = hf_layer_outputs(hf_model, ours.config, images, input_ids, text_mask)
    valid = out.vision_mask | out.language_mask
    diffs = []
    for i in range(ours.config.num_layers):
        a, b = out.hidden_states[i][valid].float(), reference[i].to(device)[valid].float()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
        diffs.append(LayerDiff(i, (a - b).abs().max().item(), b.abs().max().item(), cosine))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", type=Path, help="Qwen3-VL checkpoint directory (config.json + safetensors)"
    )
    parser.add_argument("--num-cameras", type=int, default=1)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--max-text-tokens", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=None, help="compare only the first layers")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff allowed per layer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import Qwen3VLModel

    from .loading import load_qwen3vl_checkpoint

    dtype = getattr(torch, args.dtype)
    ours = load_qwen3vl_checkpoint(
        args.checkpoint,
        num_layers=args.num_layers,
        dtype=dtype,
        num_cameras=args.num_cameras,
        image_size=tuple(args.image_size),
        max_text_tokens=args.max_text_tokens,
    ).to(args.device)
    hf_model = Qwen3VLModel.from_pretrained(args.checkpoint, dtype=dtype, attn_implementation="eager")
    hf_model = hf_model.to(args.device).eval()

    cfg = ours.config
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, size=(1, cfg.num_cameras, *cfg.image_size, 3), dtype=np.uint8)
    ids = torch.from_numpy(rng.integers(0, min(cfg.image_token_id, 150_000), size=(1, cfg.max_text_tokens)))
    mask = torch.ones(1, cfg.max_text_tokens, dtype=torch.long)
    mask[:, cfg.max_text_tokens * 3 // 4 :] = 0  # include padding
    ids = ids * mask

    worst = 0.0
    print(f"{'layer':>5} {'max|diff|':>10} {'max|h|':>9} {'min cos':>9}")
    for d in compare(ours, hf_model, images, ids, mask):
        worst = max(worst, d.max_abs_diff)
        print(f"{d.layer:>5} {d.max_abs_diff:>10.3g} {d.max_abs_value:>9.3g} {d.min_cosine:>9.6f}")
    ok = worst <= args.tolerance
    print(f"{'OK' if ok else 'FAIL'}: worst max abs diff {worst:.3g} (tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
