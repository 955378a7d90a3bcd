"""Stage 0 of the CPU demo: give the tiny random VLM the spatial grounding a pretrained Qwen3-VL has.

APT starts from a *pretrained* VLM that already knows what and where things are in an image and which
object a phrase refers to. No pretrained Qwen3-VL exists on a CPU-only machine, and a random tiny one
encodes block positions worse than raw pixels (docs/APT_MODEL.md), so the demo first pretrains its
tiny backbone on two generic grounding objectives over the task's images, then freezes it for
Stage 1 and Stage 2 exactly as APT freezes Qwen3-VL:

* dense colour grounding: every merged image token predicts the fraction of its cell covered by
  red, green and blue pixels (segmentation-style supervision, computed from the image itself);
* referring-expression grounding: a caption of random vocabulary words containing one colour word
  is appended after the images; every text token from the colour word on predicts that block's image
  position in every camera and its table position (Qwen3-VL is trained to ground phrases to boxes).

With several cameras every view is grounded alike: the dense targets of each camera's tokens come from
its own image, and the referring targets hold one (u, v) per camera, in the model's camera order.

No action, state, instruction template or held-out phrasing is used here: captions are random word
sequences, so what Stage 2 later relies on is "find the colour word and its object", not a phrasing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..model.backbone.layout import IMAGE, TEXT, sequence_layout
from ..tasks.camera import make_camera
from ..tasks.scene import BLOCK_SIZE, COLORS, WORKSPACE, Scene
from .vocabulary import vocabulary

__all__ = ["GroundingConfig", "colour_fractions", "pretrain_grounding", "referring_targets"]

GROUNDED_COLORS = ("red", "green", "blue")  # the channels of colour_masks, in order


@dataclass(frozen=True)
class GroundingConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0


def colour_masks(images: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., H, W, 3] -> float32 [..., H, W, 3] masks of strongly red / green / blue pixels."""
    x = images.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    red = (r > 90) & (r > 1.6 * g) & (r > 1.6 * b)
    green = (g > 70) & (g > 1.3 * r) & (g > 1.15 * b)
    blue = (b > 70) & (b > 1.4 * r) & (b > 1.15 * g)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


def colour_fractions(images: np.ndarray, grid: tuple[int, int], chunk: int = 512) -> np.ndarray:
    """Fraction of each grid cell covered by each colour: [N, H, W, 3] -> [N, gh * gw, 3].

    Computed ``chunk`` images at a time: the float masks of the demo's 24 000 frames at once took ~10 GB."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n, h, w, _ = images.shape
    gh, gw = grid
    out = np.empty((n, gh * gw, 3), dtype=np.float32)
    for start in range(0, n, chunk):
        part = images[start : start + chunk]
        masks = colour_masks(part).reshape(len(part), gh, h // gh, gw, w // gw, 3)
        out[start : start + len(part)] = masks.mean(axis=(2, 4)).reshape(len(part), gh * gw, 3)
    return out


def block_targets(scene: Scene, color: str, camera_name: str, image_size: tuple[int, int]) -> np.ndarray:
    """(u, v) of the block's top centre in [-1, 1] image coordinates and (x, y) in [-1, 1] workspace units."""
    h, w = image_size
    cam = make_camera(camera_name, width=w, height=h)
    block = scene.block(color)
    uv, _ = cam.project(np.array([block.x, block.y, BLOCK_SIZE]))
    (x0, x1), (y0, y1) = WORKSPACE["x"], WORKSPACE["y"]
    return np.array(
        [
            2 * uv[0] / (w - 1) - 1,
            2 * uv[1] / (h - 1) - 1,
            2 * (block.x - x0) / (x1 - x0) - 1,
            2 * (block.y - y0) / (y1 - y0) - 1,
        ],
        dtype=np.float32,
    )


def referring_targets(
    scene: Scene, color: str, cameras: Sequence[str], image_size: tuple[int, int]
) -> np.ndarray:
    """(u, v) of the block in each camera, then its (x, y) table position: [2 * len(cameras) + 2].

    One camera: exactly ``block_targets``."""
    per_camera = [block_targets(scene, color, name, image_size) for name in cameras]
    return np.concatenate([*(t[:2] for t in per_camera), per_camera[0][2:]])


class GroundingHeads(nn.Module):
    """Linear read-outs on the VLM layers the action expert reads (one pair per layer)."""

    def __init__(self, width: int, layers: int, refer_dim: int = 4) -> None:
        super().__init__()
        self.dense = nn.ModuleList(nn.Linear(width, 3) for _ in range(layers))
        self.refer = nn.ModuleList(nn.Linear(width, refer_dim) for _ in range(layers))


def random_caption(color: str, rng: np.random.Generator, max_tokens: int) -> tuple[str, int]:
    """Random vocabulary words with ``color`` at a random position; returns (caption, colour word index)."""
    # Other colour words stay in as distractors, except the three nearest the task's (changing this list
    # changes the trained demo model).
    words = [w for w in vocabulary() if w not in COLORS and w not in ("yellow", "orange", "purple")]
    n = int(rng.integers(1, max_tokens + 1))
    at = int(rng.integers(n))
    caption = [str(rng.choice(words)) for _ in range(n)]
    caption[at] = color
    return " ".join(caption), at


def pretrain_grounding(
    backbone: nn.Module,
    images: Mapping[str, np.ndarray],
    scenes: Sequence[Scene],
    *,
    layer_map: Sequence[int],
    preprocessor: ImagePreprocessor,
    tokenizer: InstructionTokenizer,
    config: GroundingConfig = GroundingConfig(),
    progress: bool = True,
) -> list[float]:
    """Train ``backbone`` in place on the two objectives; ``images[camera][i]`` (H, W, 3) shows
    ``scenes[i]`` from that camera, cameras in the backbone's (and ``preprocessor``'s) order.

    Returns the loss per step. The caller freezes the backbone afterwards."""
    bcfg = backbone.config
    layout = sequence_layout(bcfg)
    cameras = tuple(images)
    if cameras != tuple(preprocessor.cameras):
        raise ValueError(f"images of cameras {cameras}; the preprocessor takes {tuple(preprocessor.cameras)}")
    image_positions = torch.from_numpy(np.flatnonzero(layout.kind == IMAGE))
    n, h, w = images[cameras[0]].shape[:3]
    if any(images[c].shape[:3] != (n, h, w) for c in cameras) or len(scenes) != n:
        raise ValueError(
            f"{len(scenes)} scenes and images {[images[c].shape for c in cameras]}: one frame per scene"
            " and camera, all of one size"
        )
    patch = bcfg.vision.patch_size * bcfg.vision.spatial_merge_size
    grid = (h // patch, w // patch)
    if len(image_positions) != len(cameras) * grid[0] * grid[1]:
        raise ValueError(
            f"the backbone has {len(image_positions)} image tokens; {len(cameras)} camera(s) of"
            f" {h}x{w} give {len(cameras) * grid[0] * grid[1]}"
        )
    text_positions = torch.from_numpy(np.flatnonzero(layout.kind == TEXT))
    fractions = (
        torch.from_numpy(np.concatenate([colour_fractions(images[c], grid) for c in cameras], 1)) * 10.0
    )
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    refer_dim = 2 * len(cameras) + 2
    heads = GroundingHeads(int(bcfg.hidden_size), len(layer_map), refer_dim)
    backbone.requires_grad_(True)
    backbone.train()
    params = [*backbone.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=max(config.steps, 1), pct_start=0.05
    )
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="stage 0 (VLM grounding)", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.randint(n, (config.batch_size,), generator=gen).tolist()
        pixels, ids, masks, refer, refer_mask = [], [], [], [], []
        for i in idx:
            pixels.append(preprocessor.batch({c: images[c][i] for c in cameras}))
            color = GROUNDED_COLORS[int(rng.integers(len(GROUNDED_COLORS)))]
            caption, at = random_caption(color, rng, tokenizer.max_tokens)
            tok_ids, tok_mask = tokenizer(caption)
            ids.append(tok_ids)
            masks.append(tok_mask)
            m = np.array(tok_mask[0], dtype=np.float32)
            m[:at] = 0.0
            refer_mask.append(m)
            refer.append(referring_targets(scenes[i], color, cameras, (h, w)))
        out = backbone(
            torch.from_numpy(np.concatenate(pixels)),
            torch.from_numpy(np.concatenate(ids)),
            torch.from_numpy(np.concatenate(masks)),
        )
        dense_target = fractions[idx]
        refer_target = torch.from_numpy(np.stack(refer))[:, None, :]
        rmask = torch.from_numpy(np.stack(refer_mask))[..., None]
        loss = torch.zeros(())
        for k, layer in enumerate(layer_map):
            hid = out.hidden_states[layer]
            dense = heads.dense[k](hid[:, image_positions])
            loss = loss + torch.mean((dense - dense_target) ** 2)
            text = heads.refer[k](hid[:, text_positions])
            loss = loss + torch.sum(rmask * (text - refer_target) ** 2) / (rmask.sum() * refer_dim)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    backbone.requires_grad_(False)
    backbone.eval()
    return losses
