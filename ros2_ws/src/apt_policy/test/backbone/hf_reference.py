"""The transformers Qwen3-VL reference for parity tests: same config, weights and inputs as ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from apt_policy.model.backbone import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig
from apt_policy.model.backbone.layout import IMAGE, VISION_END, VISION_START, sequence_layout
from transformers import Qwen3VLConfig, Qwen3VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


def hf_config(cfg: Qwen3VLBackboneConfig) -> Qwen3VLConfig:
    """A transformers config with the architecture of ``cfg`` (all text layers, not truncated)."""
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


def random_hf_model(cfg: Qwen3VLBackboneConfig, seed: int = 0, scale: float = 1.0) -> Qwen3VLModel:
    """transformers' model with weights large enough that every layer matters.

    ``scale`` 1 gives activations up to ~20 (outputs of every layer differ strongly between inputs);
    smaller values give smaller activations, for comparisons across different kernels (ONNX Runtime).
    """
    torch.manual_seed(seed)
    config = hf_config(cfg)
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    model = Qwen3VLModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed" in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 + scale) / fan_in**0.5)
    return model


def save_hf_model(model: Qwen3VLModel, path: Path, max_shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return path


def random_inputs(cfg: Qwen3VLBackboneConfig, batch: int, seed: int = 0):
    """uint8 images [B, n_cam, H, W, 3], instruction ids [B, T] and right-padded text mask [B, T]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, cfg.num_cameras, *cfg.image_size, 3), dtype=np.uint8)
    ids = rng.integers(0, cfg.image_token_id, size=(batch, cfg.max_text_tokens))
    lengths = np.linspace(cfg.max_text_tokens, max(1, cfg.max_text_tokens // 2), batch).round().astype(int)
    mask = (np.arange(cfg.max_text_tokens)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    return images, torch.from_numpy(ids), torch.from_numpy(mask)


def normalise(images: np.ndarray) -> torch.Tensor:
    """Our preprocessing: uint8 HWC -> (x/255 - mean)/std, float32 [B, n_cam, 3, H, W]."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))


def hf_forward(
    model: Qwen3VLModel,
    cfg: Qwen3VLBackboneConfig,
    images: np.ndarray,
    input_ids: torch.Tensor,
    text_mask: torch.Tensor,
) -> torch.Tensor:
    """Every decoder layer's output [L, B, S, D] from transformers for the same sequence.

    Pixels go through transformers' own Qwen2-VL image processor (no resize, mean = std = 0.5) and the
    sequence is the one our layout describes, with image-pad tokens on the image positions.
    """
    batch = images.shape[0]
    processor = Qwen2VLImageProcessorPil(
        patch_size=cfg.vision.patch_size,
        merge_size=cfg.vision.spatial_merge_size,
        temporal_patch_size=cfg.vision.temporal_patch_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_resize=False,
    )
    flat = [images[b, c] for b in range(batch) for c in range(cfg.num_cameras)]
    pixels = processor(flat, return_tensors="pt")

    layout = sequence_layout(cfg)
    prefix = np.zeros(cfg.text_offset, dtype=np.int64)
    kind = layout.kind[: cfg.text_offset]
    prefix[kind == IMAGE] = cfg.image_token_id
    prefix[kind == VISION_START] = cfg.vision_start_token_id
    prefix[kind == VISION_END] = cfg.vision_end_token_id
    full_ids = torch.cat([torch.from_numpy(prefix).expand(batch, -1), input_ids], dim=1)
    attention_mask = torch.cat([torch.ones(batch, cfg.text_offset, dtype=torch.long), text_mask], dim=1)
    mm_types = (full_ids == cfg.image_token_id).long()

    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in model.language_model.layers
    ]
    try:
        with torch.no_grad():
            model(
                input_ids=full_ids,
                attention_mask=attention_mask,
                pixel_values=pixels["pixel_values"],
                image_grid_thw=pixels["image_grid_thw"],
                mm_token_type_ids=mm_types,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(captured)
