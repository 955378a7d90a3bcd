"""Constant tables precomputed from the config: rotary cos/sin, position-embedding taps, causal mask.

Computed in float32 with the same formulas as transformers' Qwen3-VL so they match it bit for bit.
"""

from __future__ import annotations

import torch

from .config import Qwen3VLBackboneConfig
from .layout import patch_rows_cols, sequence_layout


def vision_rope_tables(config: Qwen3VLBackboneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N_patches, head_dim] of the vision tower's axial 2-D rope (h half, w half, repeated)."""
    spatial_dim = config.vision.head_dim // 2
    inv_freq = 1.0 / (
        config.vision.rope_theta ** (torch.arange(0, spatial_dim, 2, dtype=torch.float) / spatial_dim)
    )
    rows, cols = patch_rows_cols(config)
    pos = torch.stack([torch.from_numpy(rows), torch.from_numpy(cols)], dim=1)  # [N, 2]
    freqs = pos[..., None].float() * inv_freq  # [N, 2, hd/4]
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)  # [N, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def text_rope_tables(config: Qwen3VLBackboneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim] of the interleaved multimodal rope for the fixed layout.

    Frequency ``j`` takes its position from the H axis when ``j % 3 == 1`` and ``j < 3 * section[1]``,
    from the W axis when ``j % 3 == 2`` and ``j < 3 * section[2]``, else from the T axis.
    """
    text = config.text
    inv_freq = 1.0 / (
        text.rope_theta ** (torch.arange(0, text.head_dim, 2, dtype=torch.float) / text.head_dim)
    )
    positions = torch.from_numpy(sequence_layout(config).mrope_positions)  # [3, S]
    freqs = positions[..., None].float() * inv_freq  # [3, S, hd/2]
    mixed = freqs[0].clone()
    for axis, offset in ((1, 1), (2, 2)):
        sl = slice(offset, text.mrope_section[axis] * 3, 3)
        mixed[..., sl] = freqs[axis, ..., sl]
    emb = torch.cat([mixed, mixed], dim=-1)
    return emb.cos(), emb.sin()


def pos_embed_taps(config: Qwen3VLBackboneConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """indices, weights [N_patches, 4] resampling the learned square position table to the patch grid.

    Bilinear with ``align_corners=True`` (Qwen3-VL's ``fast_pos_embed_interpolate``), patches in
    merge-block order.
    """
    side = round(config.vision.num_position_embeddings**0.5)
    gh, gw = config.patch_grid
    rows, cols = patch_rows_cols(config)
    h_idx, h_w = _axis_taps(torch.from_numpy(rows), gh, side)
    w_idx, w_w = _axis_taps(torch.from_numpy(cols), gw, side)
    indices = (h_idx[:, :, None] * side + w_idx[:, None, :]).reshape(-1, 4)
    weights = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
    return indices, weights


def _axis_taps(index: torch.Tensor, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    src = index.to(torch.float32) * (side - 1) / max(size - 1, 1)
    floor = torch.floor(src)
    offsets = torch.arange(0, 2)
    taps = (floor.long()[:, None] + offsets).clamp(0, side - 1)
    weights = (1 - (src[:, None] - floor[:, None] - offsets).abs()).clamp(min=0)
    return taps, weights


def causal_mask(length: int) -> torch.Tensor:
    """Additive float32 mask [length, length]: 0 where key <= query, float32 min elsewhere."""
    allowed = torch.ones(length, length, dtype=torch.bool).tril()
    return torch.zeros(length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
