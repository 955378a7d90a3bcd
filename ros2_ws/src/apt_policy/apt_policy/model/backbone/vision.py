"""Qwen3-VL vision tower for fixed-size still images.

Parameter names match transformers' ``Qwen3VLVisionModel`` so checkpoints load without renaming.
A still image is repeated over the temporal patch axis, as the processor does, and goes through the
same Conv3d (summing the two kernel slices into a Conv2d is mathematically equal but rounds differently,
~1e-5 off transformers after a few layers). Every image attends only to itself as one batch entry,
which is what transformers' ``cu_seqlens`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import LayerNorm, activation, apply_rope, attention


class PatchEmbed(nn.Module):
    """Conv3d(kernel = stride = (temporal_patch, patch, patch)) applied to a still image repeated in time."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        k = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=k, stride=k, bias=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, C, H, W] -> patch features [N, D, H/p, W/p]."""
        n, c, h, w = images.shape
        frames = images[:, :, None].expand(n, c, self.proj.kernel_size[0], h, w)
        return self.proj(frames)[:, :, 0]


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [n, heads, length, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v, self.head_dim**-0.5)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(config.hidden_size, eps=1e-6)
        self.norm2 = LayerNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Concatenate each 2x2 window of tokens and project to the LLM width.

    ``use_postshuffle_norm`` (deepstack mergers) normalises the concatenated window instead of each token.
    """

    def __init__(self, config: VisionConfig, use_postshuffle_norm: bool) -> None:
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.use_postshuffle_norm = use_postshuffle_norm
        self.norm = LayerNorm(self.merged_size if use_postshuffle_norm else config.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.merged_size, self.merged_size)
        self.linear_fc2 = nn.Linear(self.merged_size, config.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, tokens, D] in merge-block order -> [n, tokens / m^2, out_hidden_size]."""
        n = x.shape[0]
        if self.use_postshuffle_norm:
            x = self.norm(x.reshape(n, -1, self.merged_size))
        else:
            x = self.norm(x).reshape(n, -1, self.merged_size)
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class VisionTower(nn.Module):
    """Images [n, C, H, W] -> (merged tokens [n, N_v, D_out], deepstack features list of the same shape)."""

    def __init__(self, config: VisionConfig, num_deepstack: int) -> None:
        super().__init__()
        self.config = config
        self.merge = config.spatial_merge_size
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config, use_postshuffle_norm=False)
        # All of the checkpoint's deepstack mergers exist (so weights load); only the used ones run.
        self.deepstack_merger_list = nn.ModuleList(
            PatchMerger(config, use_postshuffle_norm=True) for _ in config.deepstack_visual_indexes
        )
        self.num_deepstack = num_deepstack

    def forward(
        self,
        images: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        pos_indices: torch.Tensor,
        pos_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n = images.shape[0]
        m = self.merge
        feats = self.patch_embed(images.to(self.patch_embed.proj.weight.dtype))  # [n, D, gh, gw]
        d, gh, gw = feats.shape[1], feats.shape[2], feats.shape[3]
        # Raster grid -> merge-block order (block_row, block_col, in_row, in_col).
        x = feats.reshape(n, d, gh // m, m, gw // m, m).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, d)
        pos = (self.pos_embed.weight.float()[pos_indices] * pos_weights[..., None]).sum(1)
        x = x + pos.to(x.dtype)
        cos, sin = rope_cos, rope_sin  # [tokens, hd], broadcast over images and heads
        deepstack: list[torch.Tensor] = []
        used = self.config.deepstack_visual_indexes[: self.num_deepstack]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin)
            if layer in used:
                deepstack.append(self.deepstack_merger_list[used.index(layer)](x))
        return self.merger(x), deepstack
