"""The dataset interface of the trainer, and the frozen-backbone feature cache.

A dataset is anything with ``len(ds)`` and ``ds[i] -> {"images": {camera: HxWx3 uint8 RGB},
"state": (state_dim,), "instruction": str, "actions": (horizon, action_dim)}`` (robot units), e.g.
``apt_policy.tasks.dataset.DemoDataset``. Images are preprocessed and instructions tokenised by the
same ``core`` code the deployed policy uses.

Because the VLM is frozen in both stages, its outputs are computed once per sample (``encode_dataset``)
and training then runs the action expert only. Only the VLM layers named in ``config.layer_map`` are
kept. In Stage 1 the instruction is replaced by "" so the backbone never sees language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..model.apt import APTModel


class ChunkDataset(Protocol):
    """Samples of (images, state, instruction, action chunk); see the module docstring."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class DatasetError(ValueError):
    """A dataset sample does not fit the policy config; the message names sample and field."""


@dataclass
class EncodedDataset:
    """Frozen-backbone features and normalised targets of a whole dataset (CPU tensors).

    hidden [N, len(layer_map), S, D] (the layer_map layers, in order), vision_mask/language_mask
    [N, S] bool, states [N, state_dim], actions [N, horizon, action_dim] (normalised).
    """

    hidden: torch.Tensor
    vision_mask: torch.Tensor
    language_mask: torch.Tensor
    states: torch.Tensor
    actions: torch.Tensor
    instructions: list[str]

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(hidden [L, B, S, D] in layer_map order, vision_mask, language_mask, states, actions)."""
        return (
            self.hidden[index].transpose(0, 1),
            self.vision_mask[index],
            self.language_mask[index],
            self.states[index],
            self.actions[index],
        )


def check_sample(sample: dict[str, Any], config: PolicyConfig, index: int) -> None:
    for key in ("images", "state", "instruction", "actions"):
        if key not in sample:
            raise DatasetError(f"sample {index}: missing '{key}'")
    state = np.asarray(sample["state"])
    if state.shape != (config.state_dim,):
        raise DatasetError(f"sample {index}: state shape {state.shape}, config needs ({config.state_dim},)")
    actions = np.asarray(sample["actions"])
    if actions.shape != (config.horizon, config.action_dim):
        raise DatasetError(
            f"sample {index}: actions shape {actions.shape},"
            f" config needs ({config.horizon}, {config.action_dim})"
        )
    if not (np.all(np.isfinite(state)) and np.all(np.isfinite(actions))):
        raise DatasetError(f"sample {index}: non-finite state or actions")


def fit_normalizer(dataset: ChunkDataset, mode: str) -> Normalizer:
    """State/action statistics over the whole dataset (uses array attributes when present)."""
    states = getattr(dataset, "states", None)
    actions = getattr(dataset, "actions", None)
    if states is None or actions is None:
        rows = [dataset[i] for i in range(len(dataset))]
        states = np.stack([r["state"] for r in rows])
        actions = np.stack([r["actions"] for r in rows])
    return Normalizer.fit(np.asarray(states), np.asarray(actions), mode)


@torch.no_grad()
def encode_dataset(
    model: APTModel,
    dataset: ChunkDataset,
    tokenizer: InstructionTokenizer,
    normalizer: Normalizer,
    *,
    use_language: bool,
    batch_size: int = 64,
    progress: bool = True,
    indices: Sequence[int] | None = None,
) -> EncodedDataset:
    """Run the frozen backbone over every sample once (see module docstring)."""
    cfg = model.config
    order = list(range(len(dataset))) if indices is None else list(indices)
    if not order:
        raise DatasetError("dataset is empty")
    images = ImagePreprocessor(cfg.cameras, cfg.image_size, cfg.image_mean, cfg.image_std)
    model.backbone.eval()
    layer_map = list(cfg.layer_map)
    hidden, vision, language, states, actions, texts = [], [], [], [], [], []
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="encoding (frozen VLM)", unit="batch", disable=not progress):
        chunk = order[start : start + batch_size]
        pixels, ids, masks = [], [], []
        for i in chunk:
            sample = dataset[i]
            check_sample(sample, cfg, i)
            text = str(sample["instruction"]) if use_language else ""
            pixels.append(images.batch(sample["images"]))
            token_ids, token_mask = tokenizer(text)
            ids.append(token_ids)
            masks.append(token_mask)
            states.append(normalizer.normalize_state(sample["state"]))
            actions.append(normalizer.normalize_actions(sample["actions"]))
            texts.append(text)
        out = model.backbone(
            torch.from_numpy(np.concatenate(pixels)),
            torch.from_numpy(np.concatenate(ids)),
            torch.from_numpy(np.concatenate(masks)),
        )
        hidden.append(out.hidden_states[layer_map].transpose(0, 1).contiguous())
        vision.append(out.vision_mask)
        language.append(out.language_mask)
    return EncodedDataset(
        hidden=torch.cat(hidden),
        vision_mask=torch.cat(vision),
        language_mask=torch.cat(language),
        states=torch.from_numpy(np.stack(states)).float(),
        actions=torch.from_numpy(np.stack(actions)).float(),
        instructions=texts,
    )
