"""The fixed token layout of the backbone sequence and its multimodal RoPE positions (numpy only).

Layout, for ``num_cameras`` cameras and ``max_text_tokens`` instruction positions::

    [<|vision_start|> img_0 ... img_{N-1} <|vision_end|>] x num_cameras   [instr_0 ... instr_{T-1}]

Images come first, so under causal attention no vision position ever sees language (APT Stage 1 is
language-agnostic by construction); instructions are right-padded, so valid positions never see padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Qwen3VLBackboneConfig

# Kinds of sequence position.
TEXT, IMAGE, VISION_START, VISION_END = 0, 1, 2, 3


@dataclass(frozen=True)
class SequenceLayout:
    """Per-position facts of the sequence, all of length S = config.sequence_length."""

    kind: np.ndarray  # int8 [S]: TEXT / IMAGE / VISION_START / VISION_END
    camera: np.ndarray  # int16 [S]: camera index of a camera-block position, -1 on instruction positions
    mrope_positions: np.ndarray  # int64 [3, S]: (temporal, height, width) RoPE positions

    @property
    def vision_mask(self) -> np.ndarray:
        """Positions of the camera blocks (markers included): everything language-independent."""
        return self.kind != TEXT

    @property
    def image_mask(self) -> np.ndarray:
        """Positions holding merged image tokens (where deepstack features are added)."""
        return self.kind == IMAGE

    @property
    def text_mask(self) -> np.ndarray:
        """Instruction positions (valid or padding)."""
        return self.kind == TEXT


def sequence_layout(config: Qwen3VLBackboneConfig) -> SequenceLayout:
    """Kinds, cameras and M-RoPE positions exactly as transformers' ``get_rope_index`` gives them.

    Text-like positions (markers, instruction) advance all three axes together; an image block of an
    ``h x w`` merged grid starting at ``p`` has positions ``(p, p + i, p + j)`` and advances ``p`` by
    ``max(h, w)``.
    """
    h, w = config.merged_grid
    kinds: list[np.ndarray] = []
    cameras: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    pos = 0
    for cam in range(config.num_cameras):
        kinds.append(np.array([VISION_START]))
        positions.append(np.full((3, 1), pos))
        pos += 1
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        positions.append(np.stack([np.full(h * w, pos), pos + rows.ravel(), pos + cols.ravel()]))
        kinds.append(np.full(h * w, IMAGE))
        pos += max(h, w)
        kinds.append(np.array([VISION_END]))
        positions.append(np.full((3, 1), pos))
        pos += 1
        cameras.append(np.full(h * w + 2, cam))
    t = config.max_text_tokens
    kinds.append(np.full(t, TEXT))
    cameras.append(np.full(t, -1))
    positions.append(np.broadcast_to(pos + np.arange(t), (3, t)))
    return SequenceLayout(
        kind=np.concatenate(kinds).astype(np.int8),
        camera=np.concatenate(cameras).astype(np.int16),
        mrope_positions=np.concatenate(positions, axis=1).astype(np.int64),
    )


def patch_rows_cols(config: Qwen3VLBackboneConfig) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) in the patch grid of each vision-tower token, in Qwen3-VL's merge-block order.

    Tokens are ordered (block_row, block_col, in_row, in_col) so that every ``m x m`` merge window is
    contiguous, as the Qwen2-VL/Qwen3-VL image processor flattens patches.
    """
    gh, gw = config.patch_grid
    m = config.vision.spatial_merge_size
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    shape = (gh // m, m, gw // m, m)
    return (
        rows.reshape(shape).transpose(0, 2, 1, 3).ravel(),
        cols.reshape(shape).transpose(0, 2, 1, 3).ravel(),
    )


def qwen_patchify(
    image: np.ndarray, patch_size: int = 16, merge_size: int = 2, temporal: int = 2
) -> np.ndarray:
    """transformers' Qwen2-VL/Qwen3-VL ``pixel_values`` rows for one normalised image [3, H, W].

    Rows are patches in merge-block order, each laid out (channel, temporal copies, patch, patch):
    [H/p * W/p, 3 * temporal * p * p]. The backbone takes the image itself; this documents (and the
    tests check) how the two input formats correspond.
    """
    c, h, w = image.shape
    gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
    patches = image.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    frames = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], temporal, p, p))
    return frames.reshape(gh * gw, c * temporal * p * p)
