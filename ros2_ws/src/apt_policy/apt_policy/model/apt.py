"""APTModel: frozen Qwen3-VL backbone + flow-matching action expert with APT gated fusion.

Graph API (traced by the exporter; see docs/ARCHITECTURE.md):

    encode_prefix(pixel_values, input_ids, text_mask)
        -> (prefix_keys, prefix_values, vision_mask, context_mask)
    velocity(*prefix, state, x_t, t) -> v
    sample(*prefix, state, noise) -> normalised actions   (Euler loop unrolled over config.sampling_steps)

Prefix tensors (names in ``prefix_names``):
    prefix_keys / prefix_values  [L_e, B, heads, S, head_dim]  K/V for each expert layer, projected once
                                  from its VLM layer's hidden states (L_e = N in Stage 1, 2N in Stage 2)
    vision_mask                  [B, S] float 1/0: vision tokens (what Stage-1 layers may see)
    context_mask                 [B, S] float 1/0: vision + real language tokens (Stage-2 inserted layers)

Expert layers run in the order  S1_0, [I_0], S1_1, [I_1], ...  where S1_i are Stage-1 layers (vision
only, in both stages) and I_i the Stage-2 inserted layers (vision + language, sigmoid-gated).
Stage-1 layer i and inserted layer i both read VLM layer ``config.layer_map[i]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import PolicyConfig
from . import flow
from .experts import DiTBlock, GatedInserted, PiLayer
from .layers import ContextProjection, mask_to_bias, timestep_embedding

PREFIX_NAMES = ("prefix_keys", "prefix_values", "vision_mask", "context_mask")


def build_backbone(config: PolicyConfig) -> nn.Module:
    """The frozen deployment Qwen3-VL described by ``config.backbone``."""
    from .backbone import Qwen3VLBackbone, Qwen3VLBackboneConfig

    return Qwen3VLBackbone(Qwen3VLBackboneConfig.from_dict(config.backbone))


class APTModel(nn.Module):
    """The whole policy graph for one PolicyConfig (architecture "pi" or "groot", stage 1 or 2)."""

    prefix_names = PREFIX_NAMES

    def __init__(self, config: PolicyConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.backbone.requires_grad_(False)
        vlm_width = int(self.backbone.config.hidden_size)
        seq_len = int(self.backbone.config.sequence_length)
        e = config.expert
        w = e.width
        layer_cls = PiLayer if config.architecture == "pi" else DiTBlock

        def context() -> ContextProjection:
            return ContextProjection(vlm_width, e.num_heads, e.head_dim, seq_len)

        self.layers = nn.ModuleList(
            layer_cls(w, e.num_heads, e.head_dim, e.mlp_dim) for _ in range(e.num_layers)
        )
        self.contexts = nn.ModuleList(context() for _ in range(e.num_layers))
        if config.stage == 2:
            self.inserted = nn.ModuleList(
                GatedInserted(layer_cls(w, e.num_heads, e.head_dim, e.mlp_dim), w)
                for _ in range(e.num_layers)
            )
            self.inserted_contexts = nn.ModuleList(context() for _ in range(e.num_layers))
        else:
            self.inserted = nn.ModuleList()
            self.inserted_contexts = nn.ModuleList()

        self.state_in = nn.Linear(config.state_dim, w)
        self.action_in = nn.Linear(config.action_dim, w)
        self.time_mlp = nn.Sequential(
            nn.Linear(2 * w if config.architecture == "pi" else w, w), nn.SiLU(), nn.Linear(w, w)
        )
        self.position = nn.Parameter(torch.randn(1 + config.horizon, w) * 0.02)
        self.final_norm = nn.LayerNorm(w)
        self.action_out = nn.Linear(w, config.action_dim)
        n = 1 + config.horizon
        if config.architecture == "pi":  # block-causal: the state token sees only itself
            suffix = torch.zeros(n, n)
            suffix[0, 1:] = -1.0e4
        else:  # GR00T-style: full self-attention over state + action tokens
            suffix = torch.zeros(n, n)
        self.register_buffer("suffix_bias", suffix[None, None], persistent=False)

    # ------------------------------------------------------------------------------------ prefix
    def encode_prefix(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Run the frozen backbone once and project every expert layer's context K/V."""
        out = self.backbone(pixel_values, input_ids, text_mask)
        return self.project_prefix(out.hidden_states, out.vision_mask, out.language_mask)

    def project_prefix(
        self,
        hidden_states: torch.Tensor,
        vision_mask: torch.Tensor,
        language_mask: torch.Tensor,
        preselected: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Backbone outputs (hidden [L, B, S, D], masks [B, S]) -> the prefix tuple (see module doc).

        With ``preselected`` the hidden states hold only the ``layer_map`` layers, in that order
        (the trainer's feature cache).
        """
        keys, values = [], []
        for i, vlm_layer in enumerate(self.config.layer_map):
            hidden = hidden_states[i if preselected else vlm_layer]
            k, v = self.contexts[i](hidden)
            keys.append(k)
            values.append(v)
            if self.config.stage == 2:
                k, v = self.inserted_contexts[i](hidden)
                keys.append(k)
                values.append(v)
        vision = vision_mask.float()
        context = torch.clamp(vision + language_mask.float(), max=1.0)
        return torch.stack(keys), torch.stack(values), vision, context

    # ---------------------------------------------------------------------------------- velocity
    def velocity(
        self,
        prefix_keys: torch.Tensor,
        prefix_values: torch.Tensor,
        vision_mask: torch.Tensor,
        context_mask: torch.Tensor,
        state: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """One denoising step: velocity [B, H, A] for normalised state [B, S_d], x_t [B, H, A], t [B]."""
        w = self.config.expert.width
        temb = timestep_embedding(t, w).to(x_t.dtype)
        actions = self.action_in(x_t)
        if self.config.architecture == "pi":  # π0: time mixed into every action token
            actions = self.time_mlp(torch.cat([actions, temb[:, None, :].expand_as(actions)], dim=-1))
            cond = temb
        else:  # GR00T: time conditions adaptive LayerNorm
            cond = self.time_mlp(temb)
        h = torch.cat([self.state_in(state)[:, None, :], actions], dim=1) + self.position
        vision_bias = mask_to_bias(vision_mask)
        context_bias = mask_to_bias(context_mask)
        stage2 = self.config.stage == 2
        for i, layer in enumerate(self.layers):
            j = 2 * i if stage2 else i
            h = h + layer.delta(h, cond, prefix_keys[j], prefix_values[j], vision_bias, self.suffix_bias)
            if stage2:
                ins = self.inserted[i]
                h = h + ins.delta(
                    h, cond, prefix_keys[j + 1], prefix_values[j + 1], context_bias, self.suffix_bias
                )
        return self.action_out(self.final_norm(h[:, 1:]))

    def sample(
        self,
        prefix_keys: torch.Tensor,
        prefix_values: torch.Tensor,
        vision_mask: torch.Tensor,
        context_mask: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Euler-integrate from noise (t=1) to actions (t=0), unrolled; x and dt kept in float32."""
        steps = self.config.sampling_steps
        x = noise.float()
        ones = torch.ones_like(x[:, 0, 0])
        for t in flow.euler_times(steps):
            v = self.velocity(
                prefix_keys, prefix_values, vision_mask, context_mask, state, x.to(noise.dtype), ones * t
            )
            x = x - v.float() * (1.0 / steps)
        return x

    # ----------------------------------------------------------------------------------- training
    def flow_loss(
        self,
        prefix: tuple[torch.Tensor, ...],
        state: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared error between predicted and target velocity."""
        x_t, target = flow.interpolate(actions, noise, t)
        v = self.velocity(*prefix, state, x_t, t)
        return torch.mean((v - target) ** 2)

    def expert_parameters(self, inserted_only: bool = False) -> list[nn.Parameter]:
        """Trainable parameters: the inserted layers + gates (+ their contexts), or all but the backbone."""
        if inserted_only:
            return [*self.inserted.parameters(), *self.inserted_contexts.parameters()]
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def gate_values(self) -> list[float]:
        """Mean sigmoid gate per inserted layer (diagnostics)."""
        return [float(torch.sigmoid(m.gate.detach()).mean()) for m in self.inserted]
