"""``Qwen3VLBackbone``: Qwen3-VL for fixed shapes, returning every decoder layer's hidden states.

All positions, rotary tables, position-embedding taps and the causal mask are precomputed from the
config, so ``forward`` has static shapes and no Python control flow on tensor values: it traces and
exports to ONNX as one graph.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from .config import Qwen3VLBackboneConfig
from .layout import sequence_layout
from .tables import causal_mask, pos_embed_taps, text_rope_tables, vision_rope_tables
from .text import TextDecoder
from .vision import VisionTower


class BackboneOutput(NamedTuple):
    """hidden_states [num_layers, B, S, D]: output of decoder layer i (as transformers records it:
    before the deepstack addition, without the final norm); vision_mask [B, S]: camera-block positions
    (image tokens and their start/end markers); language_mask [B, S]: valid instruction tokens."""

    hidden_states: torch.Tensor
    vision_mask: torch.Tensor
    language_mask: torch.Tensor


_TABLES = (
    "vision_cos",
    "vision_sin",
    "pos_indices",
    "pos_weights",
    "text_cos",
    "text_sin",
    "attn_mask",
    "vision_positions",
)


class Qwen3VLBackbone(nn.Module):
    """Qwen3-VL (vision tower + text decoder) for ``config.num_cameras`` images and one instruction.

    forward(pixel_values f32 [B, n_cam, 3, H, W] normalised as Qwen3-VL's processor does,
            input_ids i64 [B, max_text_tokens] right-padded, text_mask i64 [B, max_text_tokens])
        -> BackboneOutput
    Parameter names follow transformers' ``Qwen3VLModel`` (``visual.*``, ``language_model.*``).
    """

    def __init__(self, config: Qwen3VLBackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTower(config.vision, config.num_deepstack_layers)
        self.language_model = TextDecoder(config.text, config.num_layers)
        self._build_tables(self.language_model.embed_tokens.weight.device)  # where the weights were made

    # ------------------------------------------------------------------------------------- tables
    def _build_tables(self, device: torch.device) -> None:
        """(Re)compute the constant tables (float32 / int64 / bool); they never follow a dtype cast."""
        with torch.device("cpu"):
            tables = {}
            tables["vision_cos"], tables["vision_sin"] = vision_rope_tables(self.config)
            tables["pos_indices"], tables["pos_weights"] = pos_embed_taps(self.config)
            tables["text_cos"], tables["text_sin"] = text_rope_tables(self.config)
            tables["attn_mask"] = causal_mask(self.config.sequence_length)
            tables["vision_positions"] = torch.from_numpy(sequence_layout(self.config).vision_mask.copy())
        for name in _TABLES:
            self.register_buffer(name, tables[name].to(device), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Qwen3VLBackbone:
        super()._apply(fn, recurse)
        # .half()/.to(dtype)/.to_empty() also hit the buffers: rebuild them in float32 on the new device.
        device = self.language_model.embed_tokens.weight.device
        if device.type != "meta":
            self._build_tables(device)
        return self

    # ------------------------------------------------------------------------------------ forward
    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor
    ) -> BackboneOutput:
        cfg = self.config
        b, n_cam = pixel_values.shape[0], pixel_values.shape[1]
        if not torch.jit.is_tracing():  # shapes are Python ints here; under tracing they would be baked in
            _check_shapes(cfg, pixel_values, input_ids, text_mask)
        embed = self.language_model.embed_tokens
        dtype = embed.weight.dtype
        h, w = cfg.image_size

        # Vision: every camera image is one batch entry of the tower.
        images = pixel_values.reshape(b * n_cam, 3, h, w)
        tokens, deepstack = self.visual(
            images, self.vision_cos, self.vision_sin, self.pos_indices, self.pos_weights
        )
        n_vis = cfg.num_vision_tokens_per_camera
        tokens = tokens.to(dtype).reshape(b, n_cam, n_vis, -1)

        # Sequence: [vision_start, image tokens, vision_end] per camera, then the instruction.
        start = embed.weight[cfg.vision_start_token_id].to(dtype).expand(b, 1, -1)
        end = embed.weight[cfg.vision_end_token_id].to(dtype).expand(b, 1, -1)
        pieces = []
        for cam in range(n_cam):
            pieces += [start, tokens[:, cam], end]
        pieces.append(embed(input_ids))
        x = torch.cat(pieces, dim=1)

        # Deepstack features placed on the image positions (zeros elsewhere), added after early layers.
        injections = [self._scatter_to_images(f.to(dtype).reshape(b, n_cam, n_vis, -1)) for f in deepstack]

        outputs = []
        for i, layer in enumerate(self.language_model.layers):
            x = layer(x, self.text_cos, self.text_sin, self.attn_mask)
            outputs.append(x)
            if i < len(injections):
                x = x + injections[i]

        vision_mask = self.vision_positions.expand(b, -1)
        language_mask = torch.cat(
            [torch.zeros(b, cfg.text_offset, dtype=torch.bool, device=x.device), text_mask.to(torch.bool)],
            dim=1,
        )
        return BackboneOutput(torch.stack(outputs), vision_mask, language_mask)

    def _scatter_to_images(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, n_cam, N_v, D] -> [B, S, D] with features on image positions and zeros elsewhere."""
        b, n_cam, _, d = feats.shape
        marker = feats.new_zeros(b, 1, d)
        pieces = []
        for cam in range(n_cam):
            pieces += [marker, feats[:, cam], marker]
        pieces.append(feats.new_zeros(b, self.config.max_text_tokens, d))
        return torch.cat(pieces, dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _check_shapes(
    cfg: Qwen3VLBackboneConfig, pixel_values: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor
) -> None:
    pixels_ok = tuple(pixel_values.shape[1:]) == (cfg.num_cameras, 3, *cfg.image_size)
    if pixel_values.ndim != 5 or not pixels_ok:
        raise ValueError(
            f"pixel_values must be [B, {cfg.num_cameras}, 3, {cfg.image_size[0]}, {cfg.image_size[1]}],"
            f" got {tuple(pixel_values.shape)}"
        )
    text_shape = (pixel_values.shape[0], cfg.max_text_tokens)
    if tuple(input_ids.shape) != text_shape or tuple(text_mask.shape) != text_shape:
        raise ValueError(
            f"input_ids and text_mask must be [B={text_shape[0]}, {cfg.max_text_tokens}],"
            f" got {tuple(input_ids.shape)} and {tuple(text_mask.shape)}"
        )
