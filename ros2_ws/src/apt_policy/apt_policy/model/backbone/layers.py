"""Building blocks shared by the vision tower and the text decoder.

Norms, softmax and rotary embedding always compute in float32 and cast back, so the module can run in
fp16/bf16 without the overflow and precision loss that destroys attention-based VLA outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation transformers' ``ACT2FN[name]`` gives, for the names Qwen3-VL uses."""
    if name in ("gelu_pytorch_tanh", "gelu_new"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "silu":
        return F.silu
    raise ValueError(f"unsupported activation {name!r}")


class RMSNorm(nn.Module):
    """Qwen3 RMSNorm, computed in float32."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameter / input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., S, head_dim] by float32 tables broadcastable to it; returns x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with [B, H, S, hd] inputs; scores and softmax in float32.

    In float32 the scale is applied after the product, as transformers does (bit-identical results);
    in fp16/bf16 ``q`` is scaled first so the half-precision scores stay in range. ``mask`` is additive
    float32.
    """
    if q.dtype == torch.float32:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    else:
        scores = torch.matmul(q * scale, k.transpose(-1, -2)).float()
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)
