"""Small export-friendly building blocks: attention with additive masks, MLP, time embedding.

Attention is written with explicit matmuls and a float32 softmax (no data-dependent shapes, no fused
kernels), so the graph traces to ONNX and stays accurate when the rest runs in fp16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MASK_VALUE = -1.0e4  # additive bias for masked keys; finite in fp16, exp() underflows to 0 in fp32


def mask_to_bias(valid: torch.Tensor) -> torch.Tensor:
    """[B, S] 1/0 (or bool) validity -> additive bias [B, 1, 1, S] (0 where valid, MASK_VALUE where not)."""
    return ((1.0 - valid.float()) * MASK_VALUE)[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention; q [B,h,Q,d], k/v [B,h,K,d], bias broadcastable to [B,h,Q,K]."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (1.0 / math.sqrt(q.shape[-1])) + bias
    weights = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(weights, v)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, h*d] -> [B, h, N, d]."""
    b, n, _ = x.shape
    return x.reshape(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, h, N, d] -> [B, N, h*d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MLP(nn.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class ContextProjection(nn.Module):
    """Keys and values for one expert layer, projected from one VLM layer's hidden states [B, S, D].

    A learned embedding per sequence position is added to keys and values: the VLM's hidden states
    do not carry their (M-RoPE) positions, and the expert needs to know WHERE a token is to locate
    an object (the sequence layout is fixed, so position s is always the same image cell).
    """

    def __init__(self, vlm_width: int, num_heads: int, head_dim: int, seq_len: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(vlm_width)
        self.k = nn.Linear(vlm_width, num_heads * head_dim)
        self.v = nn.Linear(vlm_width, num_heads * head_dim)
        self.pos_k = nn.Parameter(torch.randn(seq_len, num_heads * head_dim) * 0.02)
        self.pos_v = nn.Parameter(torch.randn(seq_len, num_heads * head_dim) * 0.02)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(hidden)
        k = self.k(x) + self.pos_k
        v = self.v(x) + self.pos_v
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)


def timestep_embedding(
    t: torch.Tensor, width: int, min_period: float = 4e-3, max_period: float = 4.0
) -> torch.Tensor:
    """Sine-cosine embedding of flow time t [B] in [0, 1] -> [B, width] (π0's periods)."""
    half = width // 2
    fraction = torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.float()[:, None] * (2.0 * math.pi / period)[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def zero_(module: nn.Linear) -> nn.Linear:
    """Zero a linear layer's weight and bias in place (so its output is exactly 0 at init)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module
