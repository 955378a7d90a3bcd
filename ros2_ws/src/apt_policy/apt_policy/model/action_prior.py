"""ActionPriorModel: the action-prior VLA (arXiv 2606.26095) as this project reads it (docs/ACTION_PRIOR.md).

Parts (sizes in ``core.action_prior.ActionPriorConfig`` and, for the head, ``PolicyConfig.expert``):

    encoder  ActionEncoder: L steps of (state, action, valid) -> ONE latent token [B, latent_dim]; used on
             an action chunk (the latent the decoder reconstructs from, Stage 1; the distillation target,
             Stage 2) and on the last K (state, executed action) pairs (the history token).
    decoder  FlowDecoder: flow-matching transformer over the H action tokens plus three condition tokens
             (action latent, history token, state). Stage 1 trains it with the chunk's own latent (or, with
             probability ``LATENT_DROPOUT``, a learned null latent: the unconditional motion prior).
    head     LatentHead: VLM features -> the action latent (a learned query + state token cross-attending
             to the ``layer_map`` layers of the frozen VLM, vision + language tokens).
    backbone the frozen Qwen3-VL of APT (same interface, same weights layout).

Graph API (traced by the exporter, docs/ARCHITECTURE.md "Policy families"):

    encode_prefix(pixel_values, input_ids, text_mask, state) -> latent [B, latent_dim]
                  (stage 1: the null latent: the prior alone, the images and instruction unused)
    encode_history(history_states, history_actions, history_mask) -> history_token [B, latent_dim]
    velocity(latent, history_token, state, x_t, t[, clean_mask]) -> v
    sample(latent, history_token, state, noise[, action_prefix, prefix_len, rtc_trained]) -> actions

States and actions are normalised; ``history_mask`` [B, K] float 1 = a real step (oldest first; at episode
start the first rows are 0). Flow convention and real-time chunking as APT (model/flow.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..core.action_prior import ActionPriorConfig
from ..core.config import PolicyConfig
from . import flow
from .apt import build_backbone
from .layers import MLP, ContextProjection, attend, mask_to_bias, merge_heads, split_heads, timestep_embedding

PREFIX_NAMES = ("latent",)
LATENT_DROPOUT = 0.2  # Stage 1: share of samples decoded from the null latent (the unconditional prior)


def family_settings(config: PolicyConfig) -> ActionPriorConfig:
    """The validated ``family_config`` of an action-prior PolicyConfig."""
    if config.family != "action_prior":
        raise ValueError(f"family={config.family!r}: not an action-prior config")
    return ActionPriorConfig.from_mapping(config.family_config)


class Block(nn.Module):
    """Pre-norm self-attention + MLP over tokens [B, N, W] with an additive key bias [B, 1, 1, N]."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_dim)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(x, self.num_heads) for x in self.qkv(self.norm1(h)).chunk(3, dim=-1))
        h = h + self.out(merge_heads(attend(q, k, v, bias)))
        return h + self.mlp(self.norm2(h))


class ActionEncoder(nn.Module):
    """L steps of (state, action, valid) -> one latent token (a summary token attending over the steps).

    ``kind`` 0 = history (state + executed action per step), 1 = action chunk (actions only, states 0)."""

    def __init__(self, config: PolicyConfig, ap: ActionPriorConfig) -> None:
        super().__init__()
        w = ap.width
        self.step_in = nn.Linear(config.state_dim + config.action_dim + 1, w)
        self.position = nn.Parameter(torch.randn(max(config.horizon, ap.history_steps, 1), w) * 0.02)
        self.kind = nn.Parameter(torch.randn(2, w) * 0.02)
        self.summary = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, ap.num_heads, ap.mlp_dim) for _ in range(ap.encoder_layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, ap.latent_dim)

    def forward(
        self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, kind: int
    ) -> torch.Tensor:
        m = mask.to(actions.dtype)[..., None]
        steps = self.step_in(torch.cat([states * m, actions * m, m], dim=-1))
        steps = steps + self.position[: steps.shape[1]] + self.kind[kind]
        h = torch.cat([self.summary.expand(steps.shape[0], -1, -1), steps], dim=1)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        bias = mask_to_bias(valid)
        for block in self.blocks:
            h = block(h, bias)
        return self.out(self.norm(h[:, 0]))

    def encode_chunk(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised chunk [B, H, A] -> its latent [B, latent_dim]."""
        zeros = torch.zeros(*actions.shape[:2], self.step_in.in_features - actions.shape[-1] - 1)
        return self.forward(zeros.to(actions), actions, torch.ones_like(actions[..., 0]), kind=1)


class FlowDecoder(nn.Module):
    """Flow-matching decoder: [latent, history token, state] + H noisy action tokens -> velocity [B, H, A].

    Time enters every action token (π-style); per-token time (``clean_mask``, trained RTC) selects the clean
    time's embedding per token exactly as APT's expert does."""

    def __init__(self, config: PolicyConfig, ap: ActionPriorConfig) -> None:
        super().__init__()
        w = ap.width
        self.width = w
        self.latent_in = nn.Linear(ap.latent_dim, w)
        self.history_in = nn.Linear(ap.latent_dim, w)
        self.state_in = nn.Linear(config.state_dim, w)
        self.action_in = nn.Linear(config.action_dim, w)
        self.time_mix = nn.Sequential(nn.Linear(2 * w, w), nn.SiLU(), nn.Linear(w, w))
        self.position = nn.Parameter(torch.randn(3 + config.horizon, w) * 0.02)
        self.blocks = nn.ModuleList(Block(w, ap.num_heads, ap.mlp_dim) for _ in range(ap.decoder_layers))
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, config.action_dim)
        self.register_buffer("no_bias", torch.zeros(1, 1, 1, 3 + config.horizon), persistent=False)

    def forward(
        self,
        latent: torch.Tensor,
        history_token: torch.Tensor,
        state: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clean_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        temb = timestep_embedding(t, self.width).to(x_t.dtype)[:, None, :].expand(-1, x_t.shape[1], -1)
        if clean_mask is not None:
            clean = timestep_embedding(torch.full_like(t, flow.CLEAN_TIME), self.width).to(x_t.dtype)
            temb = torch.where(clean_mask[..., None] > 0.5, clean[:, None, :], temb)
        actions = self.time_mix(torch.cat([self.action_in(x_t), temb], dim=-1))
        cond = torch.stack(
            [self.latent_in(latent), self.history_in(history_token), self.state_in(state)], dim=1
        )
        h = torch.cat([cond, actions], dim=1) + self.position
        for block in self.blocks:
            h = block(h, self.no_bias)
        return self.out(self.norm(h[:, 3:]))


class LatentHead(nn.Module):
    """VLM features -> action latent: a query token and a state token cross-attend (then self-attend)
    to each ``layer_map`` layer's hidden states in turn, vision + language tokens."""

    def __init__(self, config: PolicyConfig, vlm_width: int, seq_len: int, latent_dim: int) -> None:
        super().__init__()
        e = config.expert
        w = e.width
        self.num_heads = e.num_heads
        self.query = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.state_in = nn.Linear(config.state_dim, w)
        self.contexts = nn.ModuleList(
            ContextProjection(vlm_width, e.num_heads, e.head_dim, seq_len) for _ in range(e.num_layers)
        )
        inner = e.num_heads * e.head_dim
        self.norms = nn.ModuleList(nn.LayerNorm(w) for _ in range(e.num_layers))
        self.q = nn.ModuleList(nn.Linear(w, inner) for _ in range(e.num_layers))
        self.o = nn.ModuleList(nn.Linear(inner, w) for _ in range(e.num_layers))
        self.blocks = nn.ModuleList(Block(w, e.num_heads, e.mlp_dim) for _ in range(e.num_layers))
        self.register_buffer("no_bias", torch.zeros(1, 1, 1, 2), persistent=False)
        self.norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, latent_dim)

    def forward(
        self, hidden: list[torch.Tensor], context_mask: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """hidden: the ``layer_map`` layers' states, each [B, S, D]; context_mask [B, S]; state [B, S_d]."""
        b = state.shape[0]
        h = torch.cat([self.query.expand(b, -1, -1), self.state_in(state)[:, None, :]], dim=1)
        bias = mask_to_bias(context_mask)
        for i, layer_hidden in enumerate(hidden):
            k, v = self.contexts[i](layer_hidden)
            q = split_heads(self.q[i](self.norms[i](h)), self.num_heads)
            h = h + self.o[i](merge_heads(attend(q, k, v, bias)))
            h = self.blocks[i](h, self.no_bias)
        return self.out(self.norm(h[:, 0]))


class ActionPriorModel(nn.Module):
    """The whole policy for one action-prior PolicyConfig (stage 1: prior only; stage 2: the VLA)."""

    prefix_names = PREFIX_NAMES

    def __init__(self, config: PolicyConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.settings = family_settings(config)
        ap = self.settings
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.backbone.requires_grad_(False)
        vlm_width = int(self.backbone.config.hidden_size)
        seq_len = int(self.backbone.config.sequence_length)
        self.encoder = ActionEncoder(config, ap)
        self.decoder = FlowDecoder(config, ap)
        self.null_latent = nn.Parameter(torch.zeros(ap.latent_dim))
        self.head = LatentHead(config, vlm_width, seq_len, ap.latent_dim)

    @property
    def history_steps(self) -> int:
        return self.settings.history_steps

    # ------------------------------------------------------------------------------------ prefix
    def encode_prefix(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        """The action latent the decoder is conditioned on: from the VLM (stage 2) or the null latent."""
        if self.config.stage == 1:
            return self.null_latent.to(state.dtype)[None].expand(state.shape[0], -1) + 0.0 * state[:, :1]
        out = self.backbone(pixel_values, input_ids, text_mask)
        return self.latent_from_features(out.hidden_states, out.vision_mask, out.language_mask, state)

    def latent_from_features(
        self,
        hidden_states: torch.Tensor,
        vision_mask: torch.Tensor,
        language_mask: torch.Tensor,
        state: torch.Tensor,
        preselected: bool = False,
    ) -> torch.Tensor:
        """Backbone outputs -> latent; ``preselected``: hidden holds only the layer_map layers (cache)."""
        layers = [hidden_states[i if preselected else j] for i, j in enumerate(self.config.layer_map)]
        context = torch.clamp(vision_mask.float() + language_mask.float(), max=1.0)
        return self.head(layers, context, state)

    def encode_history(
        self, history_states: torch.Tensor, history_actions: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """The temporal context token [B, latent_dim] of the last K steps (K = 0: a zero token)."""
        if self.history_steps == 0:
            return history_states.new_zeros(history_states.shape[0], self.settings.latent_dim)
        return self.encoder(history_states, history_actions, history_mask, kind=0)

    # ---------------------------------------------------------------------------------- sampling
    def velocity(
        self,
        latent: torch.Tensor,
        history_token: torch.Tensor,
        state: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clean_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decoder(latent, history_token, state, x_t, t, clean_mask)

    def sample(
        self,
        latent: torch.Tensor,
        history_token: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor,
        action_prefix: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        rtc_trained: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Euler from noise (t=1) to actions (t=0), unrolled; RTC prefix as ``APTModel.sample``. x and dt stay
        float32; the decoder gets x in ``noise``'s dtype (float16 in an fp16 export)."""
        steps = self.config.sampling_steps
        x = noise.float()
        ones = torch.ones_like(x[:, 0, 0])
        if action_prefix is None:
            for t in flow.euler_times(steps):
                v = self.velocity(latent, history_token, state, x.to(noise.dtype), ones * t)
                x = x - v.float() * (1.0 / steps)
            return x
        if prefix_len is None:
            raise ValueError("sample: action_prefix needs prefix_len")
        x0 = x
        target = action_prefix.float()
        fixed = flow.prefix_rows(prefix_len, x.shape[1])[..., None]
        trained = torch.zeros_like(ones) if rtc_trained is None else rtc_trained.float()
        clean_mask = fixed[..., 0].float() * trained[:, None]
        for t in flow.euler_times(steps):
            x = torch.where(fixed, flow.prefix_path(target, x0, t, trained), x)
            v = self.velocity(
                latent, history_token, state, x.to(noise.dtype), ones * t, clean_mask.to(noise.dtype)
            )
            x = x - v.float() * (1.0 / steps)
        return torch.where(fixed, target, x)

    # ----------------------------------------------------------------------------------- training
    def flow_loss(
        self,
        latent: torch.Tensor,
        history_token: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        delay: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity MSE; ``delay`` [B]: the first delay[b] rows given clean and left out (trained RTC)."""
        x_t, target = flow.interpolate(actions, noise, t)
        if delay is None:
            return torch.mean((self.velocity(latent, history_token, state, x_t, t) - target) ** 2)
        clean = flow.prefix_rows(delay, actions.shape[1])
        x_t = torch.where(clean[..., None], actions, x_t)
        v = self.velocity(latent, history_token, state, x_t, t, clean.float())
        keep = (~clean)[..., None].to(v.dtype)
        return torch.sum((v - target) ** 2 * keep) / torch.clamp(keep.sum() * v.shape[-1], min=1.0)

    def action_parameters(self) -> list[nn.Parameter]:
        """The Stage-1 action module: encoder, decoder and the null latent."""
        return [*self.encoder.parameters(), *self.decoder.parameters(), self.null_latent]

    def expert_parameters(self) -> list[nn.Parameter]:
        """Everything trained in Stage 2 end to end (all but the frozen backbone)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]


def tiny_action_prior_config(history_steps: int = 3, rtc_max_delay: int = 2, **kwargs: Any) -> PolicyConfig:
    """A small action-prior config around ``presets.tiny_policy_config`` (tests; seconds on a CPU)."""
    from .presets import tiny_policy_config

    kwargs.setdefault("cameras", ("front",))
    kwargs.setdefault("state_names", (*tuple(f"fr3_joint{i}" for i in range(1, 8)), "gripper_width"))
    kwargs.setdefault("action_names", (*tuple(f"fr3_joint{i}" for i in range(1, 8)), "gripper_width"))
    base = tiny_policy_config(model_id="action-prior-tiny", **kwargs)
    settings = ActionPriorConfig(
        history_steps=history_steps,
        latent_dim=16,
        width=32,
        num_heads=2,
        mlp_dim=64,
        encoder_layers=1,
        decoder_layers=1,
    )
    return replace(
        base, family="action_prior", family_config=settings.to_dict(), rtc_max_delay=rtc_max_delay
    ).validate()
