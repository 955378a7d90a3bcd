"""Random transformers Qwen3-VL checkpoints and inputs for parity tests (the comparison itself lives in
``apt_policy.model.backbone.reference``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from apt_policy.model.backbone import Qwen3VLBackboneConfig
from apt_policy.model.backbone.reference import hf_config, normalise
from apt_policy.model.backbone.reference import hf_layer_outputs as hf_forward
from transformers import Qwen3VLModel

__all__ = ["hf_config", "hf_forward", "normalise", "random_hf_model", "random_inputs", "save_hf_model"]


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
