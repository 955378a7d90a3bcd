"""Training the action-distillation family (docs/ACTION_DISTILLATION.md): the teacher, then the student.

    train_teacher    the small Seer-like action model on (image, state, instruction) -> action chunk
    train_student    Stage 1 (alignment: state encoder, action tokens, mapper; MSE between the mapped
                     action-token states and the teacher's action features, VLM frozen) and Stage 2
                     (selective fine-tuning: + the language model's decoder layers; MSE between the actions
                     the teacher's frozen decoder gives and the demonstrations)

The teacher additionally learns to ground the instruction (an auxiliary loss on the named block's image and
table position, when given); action losses are in the decoder's standardised residual units.

The frozen vision tower and embeddings run once per sample (``encode_prefix``, cached), so both stages
train only the decoder layers over the extended sequence and the new modules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..model.action_distillation import DistillationModel
from ..model.teacher import TeacherModel


@dataclass(frozen=True)
class StepConfig:
    steps: int
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 1e-4


@dataclass
class Inputs:
    """Every sample's model inputs (CPU tensors): pixels [N, n_cam, 3, H, W] built per batch from uint8."""

    images: dict[str, np.ndarray]  # camera -> [N, H, W, 3] uint8
    input_ids: torch.Tensor  # [N, T]
    text_mask: torch.Tensor  # [N, T]
    states: torch.Tensor  # [N, state_dim] normalised
    actions: torch.Tensor  # [N, horizon, action_dim] normalised

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def pixels(self, index: np.ndarray, pre: ImagePreprocessor) -> torch.Tensor:
        rows = [pre.batch({c: v[i] for c, v in self.images.items()}) for i in index]
        return torch.from_numpy(np.concatenate(rows))


def build_inputs(data: Any, tokenizer: InstructionTokenizer, normalizer: Normalizer, horizon: int) -> Inputs:
    """A DemoDataset-like object (images, states, actions [N, >=horizon, A], instructions) -> Inputs."""
    tokens = {}
    for text in set(map(str, data.instructions)):
        ids, mask = tokenizer(text)
        tokens[text] = (ids[0].copy(), mask[0].copy())
    ids = np.stack([tokens[str(t)][0] for t in data.instructions])
    mask = np.stack([tokens[str(t)][1] for t in data.instructions])
    states = normalizer.normalize_state(np.asarray(data.states, np.float32))
    actions = normalizer.normalize_actions(np.asarray(data.actions, np.float32)[:, :horizon])
    return Inputs(
        images=dict(data.images),
        input_ids=torch.from_numpy(ids),
        text_mask=torch.from_numpy(mask),
        states=torch.from_numpy(np.asarray(states, np.float32)),
        actions=torch.from_numpy(np.asarray(actions, np.float32)),
    )


def _batches(n: int, cfg: StepConfig) -> Any:
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.steps):
        yield rng.integers(0, n, size=cfg.batch_size)


def _optimizer(params: list[nn.Parameter], cfg: StepConfig) -> tuple[Any, Any]:
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    return opt, sched


def train_teacher(
    teacher: TeacherModel,
    inputs: Inputs,
    pre: ImagePreprocessor,
    cfg: StepConfig,
    progress: bool = True,
    grounding: torch.Tensor | None = None,
    grounding_weight: float = 1.0,
) -> list[float]:
    """Behaviour cloning: MSE of the action chunk in the decoder's standardised residual units (the
    normalised error divided by ``decoder.delta_scale``, so the motion, not the position, sets the scale),
    plus ``grounding_weight`` x MSE of the grounding head against ``grounding`` [N, 4] (the named block's
    image and table position, ``training.grounding.block_targets``) when given. Returns per-step losses
    (the action term alone)."""
    torch.manual_seed(cfg.seed)
    teacher.train()
    opt, sched = _optimizer(list(teacher.parameters()), cfg)
    scale = teacher.decoder.delta_scale
    losses = []
    t0 = time.monotonic()
    for step, idx in enumerate(_batches(len(inputs), cfg)):
        features, keypoints = teacher.encode(
            inputs.pixels(idx, pre), inputs.input_ids[idx], inputs.text_mask[idx], inputs.states[idx]
        )
        pred = teacher.decoder(features, inputs.states[idx])
        action_loss = torch.mean(((pred - inputs.actions[idx]) / scale) ** 2)
        loss = action_loss
        if grounding is not None:
            where = teacher.grounding_prediction(features, keypoints)
            loss = loss + grounding_weight * torch.mean((where - grounding[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(action_loss.detach()))
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            extra = f", total {float(loss.detach()):.4f}" if grounding is not None else ""
            print(
                f"teacher step {step}: action loss {np.mean(losses[-100:]):.4f}{extra}"
                f" ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
    teacher.eval()
    return losses


@torch.no_grad()
def teacher_features(
    teacher: TeacherModel, inputs: Inputs, pre: ImagePreprocessor, batch_size: int = 256
) -> torch.Tensor:
    """The teacher's action features [N, K, width] for every sample (Stage-1 targets)."""
    out = []
    for start in range(0, len(inputs), batch_size):
        idx = np.arange(start, min(start + batch_size, len(inputs)))
        out.append(
            teacher.features(
                inputs.pixels(idx, pre), inputs.input_ids[idx], inputs.text_mask[idx], inputs.states[idx]
            )
        )
    return torch.cat(out)


@dataclass
class PrefixCache:
    sequence: torch.Tensor  # [N, S, D]
    deepstack: torch.Tensor  # [n, N, S, D]
    key_mask: torch.Tensor  # [N, S]

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sequence[idx], self.deepstack[:, idx], self.key_mask[idx]


@torch.no_grad()
def encode_prefixes(
    model: DistillationModel, inputs: Inputs, pre: ImagePreprocessor, batch_size: int = 128
) -> PrefixCache:
    """The frozen vision tower + embeddings over every sample, once."""
    seqs, stacks, masks = [], [], []
    for start in range(0, len(inputs), batch_size):
        idx = np.arange(start, min(start + batch_size, len(inputs)))
        s, d, k = model.encode_prefix(inputs.pixels(idx, pre), inputs.input_ids[idx], inputs.text_mask[idx])
        seqs.append(s)
        stacks.append(d)
        masks.append(k)
    return PrefixCache(torch.cat(seqs), torch.cat(stacks, dim=1), torch.cat(masks))


def train_student_stage(
    model: DistillationModel,
    stage: int,
    cache: PrefixCache,
    inputs: Inputs,
    targets: torch.Tensor | None,
    cfg: StepConfig,
    progress: bool = True,
) -> list[float]:
    """Stage 1: MSE(mapper(action-token states), teacher features ``targets``). Stage 2: MSE(decoder(...),
    demonstrated actions) in the decoder's standardised residual units (as the teacher's loss) with the
    language model's layers trainable too."""
    if stage == 1 and targets is None:
        raise ValueError("stage 1 needs the teacher's features")
    torch.manual_seed(cfg.seed + stage)
    model.requires_grad_(False)
    params = model.stage_parameters(stage)
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt, sched = _optimizer(params, cfg)
    losses = []
    t0 = time.monotonic()
    for step, idx in enumerate(_batches(len(inputs), cfg)):
        prefix = cache.batch(idx)
        if stage == 1:
            assert targets is not None
            loss = torch.mean((model.mapped_features(*prefix, inputs.states[idx]) - targets[idx]) ** 2)
        else:
            error = model.head(*prefix, inputs.states[idx]) - inputs.actions[idx]
            loss = torch.mean((error / model.decoder.delta_scale) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            print(
                f"student stage {stage} step {step}: loss {np.mean(losses[-100:]):.4f}"
                f" ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
    model.requires_grad_(False)
    model.eval()
    return losses


def student_config(base: PolicyConfig, family_config: dict[str, Any], stage: int) -> PolicyConfig:
    """The student's PolicyConfig: the backbone and I/O of ``base``; APT-only fields kept valid but unused."""
    import dataclasses

    from ..core.distillation_config import DistillationConfig

    dc = DistillationConfig.from_mapping(family_config)
    return dataclasses.replace(
        base,
        family="action_distillation",
        family_config=dc.to_dict(),
        horizon=dc.chunk,
        rtc_max_delay=0,
        sampling_steps=1,
        noise_scale=0.0,
        stage=stage,
        model_id=f"action-distillation-reaching-demo-stage{stage}",
    ).validate()
