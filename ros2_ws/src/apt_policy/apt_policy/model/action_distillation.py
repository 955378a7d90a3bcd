"""DistillationModel: the action-distillation student (docs/ACTION_DISTILLATION.md).

The VLM (the deployment Qwen3-VL) keeps its structure; its text sequence [camera blocks, instruction] is
extended by a **state token** (state encoder: robot state -> one token) and ``num_action_tokens``
learnable **action tokens**, which run through the same decoder layers (causal, right after the
instruction, M-RoPE positions continuing the text positions; padded instruction positions are masked).
Each action token's final hidden state goes through the **action mapper** (MLP, VLM width -> the teacher's
action-feature width) into the teacher's **action decoder**, reused frozen, which gives ``pred_steps``
actions per token. One forward pass: no noise, no denoising loop.

Graph API (traced by the exporter):

    encode_prefix(pixel_values, input_ids, text_mask) -> (sequence, deepstack, key_mask)
        sequence  [B, S, D]        decoder-layer-0 input (marker/vision/instruction embeddings)
        deepstack [n, B, S, D]     deepstack features added after the first n layers (n >= 1; zeros if none)
        key_mask  [B, S]           1 = visible (camera blocks and valid instruction tokens)
    head(sequence, deepstack, key_mask, state) -> normalised actions [B, horizon, action_dim]

The prefix holds only the frozen vision tower's work, so Stage 2 can fine-tune the language model: the head
runs every decoder layer over the whole extended sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import PolicyConfig
from ..core.distillation_config import DistillationConfig
from .apt import build_backbone
from .backbone.layout import sequence_layout
from .teacher import ActionDecoder

PREFIX_NAMES = ("sequence", "deepstack", "key_mask")
_KEY_MASKED = -1.0e9


def extended_text_rope(backbone_config: object, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S + extra, head_dim]: the backbone's M-RoPE tables plus ``extra`` text-like positions
    continuing after the last one (all three axes advance together, as for text)."""
    import numpy as np

    text = backbone_config.text  # type: ignore[attr-defined]
    positions = sequence_layout(backbone_config).mrope_positions  # type: ignore[arg-type]
    start = int(positions.max()) + 1
    tail = np.broadcast_to(start + np.arange(extra), (3, extra))
    pos = torch.from_numpy(np.concatenate([positions, tail], axis=1).astype(np.int64))
    inv_freq = 1.0 / (
        text.rope_theta ** (torch.arange(0, text.head_dim, 2, dtype=torch.float) / text.head_dim)
    )
    freqs = pos[..., None].float() * inv_freq
    mixed = freqs[0].clone()
    for axis, offset in ((1, 1), (2, 2)):
        sl = slice(offset, text.mrope_section[axis] * 3, 3)
        mixed[..., sl] = freqs[axis, ..., sl]
    emb = torch.cat([mixed, mixed], dim=-1)
    return emb.cos(), emb.sin()


class DistillationModel(nn.Module):
    """The student for one PolicyConfig with ``family == "action_distillation"`` (see module doc)."""

    prefix_names = PREFIX_NAMES

    def __init__(self, config: PolicyConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        if config.family != "action_distillation":
            raise ValueError(f"DistillationModel needs family 'action_distillation', got {config.family!r}")
        self.config = config
        self.family_config = dc = DistillationConfig.from_mapping(config.family_config)
        self.backbone = backbone if backbone is not None else build_backbone(config)
        self.backbone.requires_grad_(False)
        bcfg = self.backbone.config
        d = int(bcfg.hidden_size)
        k = dc.num_action_tokens
        self.state_encoder = nn.Sequential(
            nn.Linear(config.state_dim, dc.state_hidden), nn.SiLU(), nn.Linear(dc.state_hidden, d)
        )
        self.action_tokens = nn.Parameter(torch.randn(k, d) * 0.02)
        self.mapper = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, dc.mapper_hidden),
            nn.GELU(),
            nn.Linear(dc.mapper_hidden, dc.teacher.width),
        )
        self.decoder = ActionDecoder(dc.teacher.width, dc.pred_steps, config.action_dim, config.state_dim)
        self.decoder.requires_grad_(False)  # the teacher's, reused unchanged
        s = int(bcfg.sequence_length)
        n = s + 1 + k
        cos, sin = extended_text_rope(bcfg, 1 + k)
        causal = torch.zeros(n, n).masked_fill(
            ~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo(torch.float32).min
        )
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("causal", causal, persistent=False)
        self.num_deepstack = int(bcfg.num_deepstack_layers)
        self.text_offset = int(bcfg.text_offset)

    # ------------------------------------------------------------------------------------ prefix
    def encode_prefix(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The frozen vision tower and embeddings: the decoder's input sequence (see module doc)."""
        bb = self.backbone
        cfg = bb.config
        b, n_cam = pixel_values.shape[0], pixel_values.shape[1]
        embed = bb.language_model.embed_tokens
        dtype = embed.weight.dtype
        h, w = cfg.image_size
        tokens, deepstack = bb.visual(
            pixel_values.reshape(b * n_cam, 3, h, w),
            bb.vision_cos,
            bb.vision_sin,
            bb.pos_indices,
            bb.pos_weights,
        )
        n_vis = cfg.num_vision_tokens_per_camera
        tokens = tokens.to(dtype).reshape(b, n_cam, n_vis, -1)
        start = embed.weight[cfg.vision_start_token_id].to(dtype).expand(b, 1, -1)
        end = embed.weight[cfg.vision_end_token_id].to(dtype).expand(b, 1, -1)
        pieces = []
        for cam in range(n_cam):
            pieces += [start, tokens[:, cam], end]
        pieces.append(embed(input_ids))
        sequence = torch.cat(pieces, dim=1)
        injections = [bb._scatter_to_images(f.to(dtype).reshape(b, n_cam, n_vis, -1)) for f in deepstack][
            : self.num_deepstack
        ]
        stacked = torch.stack(injections) if injections else torch.zeros_like(sequence)[None]
        key_mask = torch.cat(
            [torch.ones(b, self.text_offset, dtype=dtype, device=sequence.device), text_mask.to(dtype)], dim=1
        )
        return sequence, stacked, key_mask

    # -------------------------------------------------------------------------------------- head
    def action_features(
        self, sequence: torch.Tensor, deepstack: torch.Tensor, key_mask: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """The action tokens' final hidden states [B, num_action_tokens, D] (before the mapper)."""
        b = sequence.shape[0]
        k = self.action_tokens.shape[0]
        state_token = self.state_encoder(state.to(sequence.dtype))[:, None]
        x = torch.cat([sequence, state_token, self.action_tokens.to(sequence.dtype).expand(b, -1, -1)], dim=1)
        visible = torch.cat(
            [key_mask, torch.ones(b, 1 + k, dtype=key_mask.dtype, device=key_mask.device)], dim=1
        )
        mask = self.causal + ((1.0 - visible.float()) * _KEY_MASKED)[:, None, None, :]
        tail = torch.zeros(b, 1 + k, sequence.shape[-1], dtype=sequence.dtype, device=sequence.device)
        for i, layer in enumerate(self.backbone.language_model.layers):
            x = layer(x, self.rope_cos, self.rope_sin, mask)
            if i < self.num_deepstack:
                x = x + torch.cat([deepstack[i], tail], dim=1)
        return x[:, -k:]

    def mapped_features(self, *prefix_and_state: torch.Tensor) -> torch.Tensor:
        """The action mapper's output [B, K, teacher width]: what Stage 1 aligns to the teacher's features."""
        return self.mapper(self.action_features(*prefix_and_state))

    def head(
        self, sequence: torch.Tensor, deepstack: torch.Tensor, key_mask: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """Normalised actions [B, horizon, action_dim]: mapper -> the teacher's frozen decoder."""
        return self.decoder(
            self.mapped_features(sequence, deepstack, key_mask, state), state.to(sequence.dtype)
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        return self.head(*self.encode_prefix(pixel_values, input_ids, text_mask), state)

    # ----------------------------------------------------------------------------------- training
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage 1: state encoder, action tokens, mapper. Stage 2: those + the language model's layers."""
        params = [*self.state_encoder.parameters(), self.action_tokens, *self.mapper.parameters()]
        if stage == 2:
            params += list(self.backbone.language_model.layers.parameters())
        return params
