"""Action-expert layers for both architectures, and APT's gated inserted layers.

π-style (``PiLayer``): the expert's own tokens (state token + action tokens) attend jointly over
[keys/values projected from the VLM layer's hidden states ; their own keys/values]. Prefix keys are
gated by a validity mask; the suffix is block-causal (the state token sees only itself, the action
tokens see the state and every action token).

GR00T-style (``DiTBlock``): a DiT block with adaptive LayerNorm on the flow time: self-attention over
state + action tokens, cross-attention to the VLM layer's features, MLP; each modulated by
shift/scale/gate from the time embedding. Per-token flow time (trained real-time chunking: committed
action tokens at the clean time, the rest at t) selects, per token, between the modulation of t and that
of the clean time (``clean_cond``); see docs/APT_MODEL.md.

APT fusion (``GatedInserted``): a Stage-2 layer of the same kind, inserted after each Stage-1 layer,
that sees vision AND language tokens and adds its residual update through a learnable per-channel
sigmoid gate: h <- h + sigmoid(g) * delta(h). Its output projections are zero-initialised, so at init
delta == 0 exactly and the Stage-2 model computes exactly the Stage-1 policy (sigmoid never reaches 0,
so the gate alone could not do that; see docs/APT_MODEL.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import MLP, attend, merge_heads, split_heads, zero_

# per-token flow time for DiT blocks: (time condition of the clean time [B, W], clean tokens [B, N, 1] bool)
CleanCondition = tuple[torch.Tensor, torch.Tensor]


class PiLayer(nn.Module):
    """Pre-norm transformer layer attending jointly over prefix K/V and its own tokens."""

    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * inner)
        self.out = nn.Linear(inner, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_dim)

    def delta(
        self,
        h: torch.Tensor,
        cond: torch.Tensor,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        prefix_bias: torch.Tensor,
        suffix_bias: torch.Tensor,
        clean_cond: CleanCondition | None = None,
    ) -> torch.Tensor:
        """Residual update for tokens h [B, N, W] (cond and clean_cond unused: π-style puts time into the
        tokens)."""
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        q, k, v = (split_heads(x, self.num_heads) for x in (q, k, v))
        keys = torch.cat([prefix_k, k], dim=2)
        values = torch.cat([prefix_v, v], dim=2)
        bias = torch.cat(
            [prefix_bias.expand(-1, -1, h.shape[1], -1), suffix_bias.expand(h.shape[0], -1, -1, -1)], -1
        )
        a = self.out(merge_heads(attend(q, keys, values, bias)))
        m = self.mlp(self.norm2(h + a))
        return a + m

    def zero_output(self) -> None:
        zero_(self.out)
        zero_(self.mlp.down)


class DiTBlock(nn.Module):
    """GR00T-style DiT block: adaLN(t) self-attention, adaLN cross-attention to VLM features, adaLN MLP."""

    def __init__(self, width: int, num_heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.norm_sa = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * inner)
        self.out_sa = nn.Linear(inner, width)
        self.norm_ca = nn.LayerNorm(width, elementwise_affine=False)
        self.q_ca = nn.Linear(width, inner)
        self.out_ca = nn.Linear(inner, width)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = MLP(width, mlp_dim)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))
        with torch.no_grad():  # start with gates near 1 and no shift/scale (standard DiT-like start)
            self.modulation[1].weight.mul_(0.1)
            self.modulation[1].bias.zero_()
            self.modulation[1].bias[2 * width : 3 * width] = 1.0
            self.modulation[1].bias[5 * width : 6 * width] = 1.0
            self.modulation[1].bias[8 * width : 9 * width] = 1.0

    def delta(
        self,
        h: torch.Tensor,
        cond: torch.Tensor,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        prefix_bias: torch.Tensor,
        suffix_bias: torch.Tensor,
        clean_cond: CleanCondition | None = None,
    ) -> torch.Tensor:
        """Residual update for tokens h [B, N, W] given the time condition cond [B, W].

        ``clean_cond`` (per-token flow time, trained RTC): (condition of the clean time [B, W], token mask
        [B, N, 1] bool); masked tokens take the adaLN shift/scale/gate of the clean time, the others those
        of ``cond``. Both modulations are computed as [B, W] -> [B, 1, 9W] and selected per token, so an
        all-false mask reproduces the single-time block bit for bit.
        """
        mod = self.modulation(cond)[:, None, :]
        if clean_cond is not None:
            cond_clean, tokens = clean_cond
            mod = torch.where(tokens, self.modulation(cond_clean)[:, None, :], mod)
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = mod.chunk(9, dim=-1)
        x = self.norm_sa(h) * (1 + sc1) + sh1
        q, k, v = (split_heads(y, self.num_heads) for y in self.qkv(x).chunk(3, dim=-1))
        a = g1 * self.out_sa(merge_heads(attend(q, k, v, suffix_bias)))
        x = self.norm_ca(h + a) * (1 + sc2) + sh2
        q = split_heads(self.q_ca(x), self.num_heads)
        c = g2 * self.out_ca(merge_heads(attend(q, prefix_k, prefix_v, prefix_bias)))
        x = self.norm_mlp(h + a + c) * (1 + sc3) + sh3
        m = g3 * self.mlp(x)
        return a + c + m

    def zero_output(self) -> None:
        zero_(self.out_sa)
        zero_(self.out_ca)
        zero_(self.mlp.down)


class GatedInserted(nn.Module):
    """A Stage-2 layer whose update enters through a learnable sigmoid gate; exactly inert at init."""

    def __init__(self, layer: PiLayer | DiTBlock, width: int, gate_init: float = 0.0) -> None:
        super().__init__()
        layer.zero_output()
        self.layer = layer
        self.gate = nn.Parameter(torch.full((width,), float(gate_init)))

    def delta(self, h: torch.Tensor, *args: Any) -> torch.Tensor:
        return torch.sigmoid(self.gate) * self.layer.delta(h, *args)
