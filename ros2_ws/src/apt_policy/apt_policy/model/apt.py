"""APTModel: frozen Qwen3-VL backbone + flow-matching action expert with APT gated fusion.

Graph API (traced by the exporter; see docs/ARCHITECTURE.md):

    encode_prefix(pixel_values, input_ids, text_mask)
        -> (prefix_keys, prefix_values, vision_mask, context_mask)
    velocity(*prefix, state, x_t, t[, clean_mask]) -> v
    sample(*prefix, state, noise[, action_prefix, prefix_len, rtc_trained]) -> normalised actions
                                                        (Euler loop unrolled over config.sampling_steps)

Real-time chunking (RTC; docs/APT_MODEL.md): ``sample`` takes a committed action prefix (normalised
actions [B, H, A], the first ``prefix_len`` [B] rows used) and keeps the first rows on the path from the
initial noise to it (training-free "hard prefix", ``rtc_trained`` 0) or gives them as clean data with the
clean per-token flow time (trained RTC, ``rtc_trained`` 1; the bundle's ``rtc_max_delay`` > 0). Per-token
time enters ``velocity`` as ``clean_mask`` [B, H] (1 = that action token is at the data end, t = 0).

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
DRIFT_RETURN_ROWS = 4  # trained RTC with prefix drift: rows after the prefix over which the target returns


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
        clean_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One denoising step: velocity [B, H, A] for normalised state [B, S_d], x_t [B, H, A], t [B].

        ``clean_mask`` [B, H] (float, 1 = clean): per-token flow time, action token i at ``flow.CLEAN_TIME``
        where the mask is 1 and at t elsewhere. The clean-time embedding is computed separately and selected
        per token (never mixed into one matmul), so with an all-zero mask every value equals the
        mask-less call bit for bit. π-style: the selected time embedding enters the action token; GR00T-style:
        each DiT block selects between the adaLN modulation of t and of the clean time per token (the state
        token always takes t).
        """
        w = self.config.expert.width
        temb = timestep_embedding(t, w).to(x_t.dtype)
        actions = self.action_in(x_t)
        clean: torch.Tensor | None = None
        temb_clean: torch.Tensor | None = None
        if clean_mask is not None:
            clean = clean_mask > 0.5  # [B, H] bool
            temb_clean = timestep_embedding(torch.full_like(t, flow.CLEAN_TIME), w).to(x_t.dtype)
        clean_cond: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.config.architecture == "pi":  # π0: time mixed into every action token
            if clean is None or temb_clean is None:
                token_time = temb[:, None, :].expand_as(actions)
            else:
                token_time = torch.where(clean[..., None], temb_clean[:, None, :], temb[:, None, :])
            actions = self.time_mlp(torch.cat([actions, token_time], dim=-1))
            cond = temb
        else:  # GR00T: time conditions adaptive LayerNorm
            cond = self.time_mlp(temb)
            if clean is not None and temb_clean is not None:
                state_token = torch.zeros_like(clean[:, :1])
                tokens = torch.cat([state_token, clean], dim=1)[..., None]  # [B, 1 + H, 1]
                clean_cond = (self.time_mlp(temb_clean), tokens)
        h = torch.cat([self.state_in(state)[:, None, :], actions], dim=1) + self.position
        vision_bias = mask_to_bias(vision_mask)
        context_bias = mask_to_bias(context_mask)
        stage2 = self.config.stage == 2
        for i, layer in enumerate(self.layers):
            j = 2 * i if stage2 else i
            h = h + layer.delta(
                h, cond, prefix_keys[j], prefix_values[j], vision_bias, self.suffix_bias, clean_cond
            )
            if stage2:
                ins = self.inserted[i]
                h = h + ins.delta(
                    h,
                    cond,
                    prefix_keys[j + 1],
                    prefix_values[j + 1],
                    context_bias,
                    self.suffix_bias,
                    clean_cond,
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
        action_prefix: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        rtc_trained: torch.Tensor | None = None,
        ramp: int = 0,
    ) -> torch.Tensor:
        """Euler-integrate from noise (t=1) to actions (t=0), unrolled; x and dt kept in float32.

        Real-time chunking: ``action_prefix`` [B, H, A] (normalised; rows from ``prefix_len`` [B] int64 on
        are ignored, except the ``ramp`` rows after the prefix) and ``rtc_trained`` [B] (1.0: trained RTC,
        the prefix rows are clean tokens; 0.0 or None: training-free hard prefix). Before every step the
        prefix rows are set to ``flow.prefix_path`` at the step's time; the result's prefix rows equal
        the prefix exactly. ``ramp`` > 0 (torch only, not exported) blends the ``ramp`` rows after the
        prefix towards the training-free path with weights ``flow.ramp_weights`` (the prefix must then
        carry those rows too). ``prefix_len`` all 0 gives the prefix-less result bit for bit.
        """
        steps = self.config.sampling_steps
        x = noise.float()
        ones = torch.ones_like(x[:, 0, 0])
        if action_prefix is None:
            for t in flow.euler_times(steps):
                v = self.velocity(
                    prefix_keys, prefix_values, vision_mask, context_mask, state, x.to(noise.dtype), ones * t
                )
                x = x - v.float() * (1.0 / steps)
            return x
        if prefix_len is None:
            raise ValueError("sample: action_prefix needs prefix_len")
        x0 = x
        target = action_prefix.float()
        rows = flow.prefix_rows(prefix_len, x.shape[1])  # [B, H] bool
        fixed = rows[..., None]
        trained = torch.zeros_like(ones) if rtc_trained is None else rtc_trained.float()
        clean_mask = rows.float() * trained[:, None]  # 1 where a token is given clean (trained RTC)
        soft = flow.ramp_weights(prefix_len, x.shape[1], ramp)[..., None] if ramp > 0 else None
        for t in flow.euler_times(steps):
            x = torch.where(fixed, flow.prefix_path(target, x0, t, trained), x)
            if soft is not None:
                x = x + soft * (flow.prefix_path(target, x0, t, torch.zeros_like(trained)) - x)
            v = self.velocity(
                prefix_keys,
                prefix_values,
                vision_mask,
                context_mask,
                state,
                x.to(noise.dtype),
                ones * t,
                clean_mask.to(noise.dtype),
            )
            x = x - v.float() * (1.0 / steps)
        x = torch.where(fixed, target, x)  # t = 0: the path ends at the prefix
        if soft is not None:
            x = x + soft * (target - x)
        return x

    # ----------------------------------------------------------------------------------- training
    def flow_loss(
        self,
        prefix: tuple[torch.Tensor, ...],
        state: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        delay: torch.Tensor | None = None,
        drift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error between predicted and target velocity.

        ``delay`` [B] int64 (trained RTC, arXiv 2512.05964): the first delay[b] actions of sample b are given
        clean (x = the action, per-token time ``flow.CLEAN_TIME``) and the loss is the mean over the other
        rows only. None: the plain loss over every row. ``drift`` [B, A] (with ``delay``): the given rows
        drift away from the demonstration and the target returns to it over ``DRIFT_RETURN_ROWS`` rows
        (``flow.drift_offsets``), so the model learns to join a committed prefix that is off (a model's own
        late rows) and steer back, instead of continuing its trend.
        """
        if drift is not None and delay is not None:
            actions = actions + flow.drift_offsets(drift, delay, actions.shape[1], DRIFT_RETURN_ROWS)
        x_t, target = flow.interpolate(actions, noise, t)
        if delay is None:
            v = self.velocity(*prefix, state, x_t, t)
            return torch.mean((v - target) ** 2)
        clean = flow.prefix_rows(delay, actions.shape[1])  # [B, H]
        x_t = torch.where(clean[..., None], actions, x_t)
        v = self.velocity(*prefix, state, x_t, t, clean.float())
        keep = (~clean)[..., None].to(v.dtype)
        count = keep.sum() * v.shape[-1]
        return torch.sum((v - target) ** 2 * keep) / torch.clamp(count, min=1.0)

    def expert_parameters(self, inserted_only: bool = False) -> list[nn.Parameter]:
        """Trainable parameters: the inserted layers + gates (+ their contexts), or all but the backbone."""
        if inserted_only:
            return [*self.inserted.parameters(), *self.inserted_contexts.parameters()]
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def gate_values(self) -> list[float]:
        """Mean sigmoid gate per inserted layer (diagnostics)."""
        return [float(torch.sigmoid(m.gate.detach()).mean()) for m in self.inserted]
