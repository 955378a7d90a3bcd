"""Training the action-prior family: Stage 1 (action-only prior) and Stage 2 (VLA with the reused decoder).

Stage 1 (``run_prior_stage1``): trajectories of the reaching expert without images or language
(``action_trajectories``: cheap, so many more episodes than the labelled set). Each sample is (the last K
(state, executed action) pairs, the state, the expert's next chunk). The encoder maps the chunk to its latent,
the decoder reconstructs the chunk by flow matching conditioned on [that latent, the history token, the
state]; with probability ``LATENT_DROPOUT`` the latent is the learned null latent, so the same decoder is
also an unconditional motion prior p(chunk | history, state) (the Stage-1 bundle runs that).

Stage 2 (``run_prior_stage2``): the Stage-1 encoder and decoder are copied into the VLA, a fresh head maps
frozen-VLM features (+ state) to the latent. For the first ``distill_steps`` only the head trains, on the
latent distillation loss ||head - sg(encoder(chunk))||^2 / var(target) plus the flow loss through the
frozen decoder; then everything but the VLM trains end to end on the flow loss alone. ``prior=False`` is
the control: the same VLA with a random encoder/decoder, no distillation, end to end from step 0.

Every random draw of step k comes from a generator seeded with (seed, k) (as ``training.trainer``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from ..core.normalize import Normalizer
from ..core.preprocess import InstructionTokenizer
from ..model import flow
from ..model.action_prior import LATENT_DROPOUT, ActionPriorModel
from ..model.bundle import load_bundle, load_weights, save_bundle
from ..robots.franka import FR3
from ..tasks.dataset import DemoConfig, episode_seed, executed_target
from ..tasks.expert import ReachingExpert, goal_configuration
from ..tasks.scene import sample_scene
from ..tasks.sim import KinematicArm
from .data import ChunkDataset, EncodedDataset, encode_dataset
from .trainer import CHECKPOINT_DIR, lr_at, read_latest_checkpoint, sample_delay, write_checkpoint


@dataclass(frozen=True)
class PriorTrainConfig:
    """Optimisation of one stage (``distill_steps``, ``distill_weight``: Stage 2 only). ``checkpoint_every``
    > 0 writes ``OUT/checkpoints/step_*.pt`` (as ``training.trainer``) when a stage is given an ``out``."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    distill_steps: int = 300
    distill_weight: float = 1.0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        bad = self.distill_steps < 0 or self.checkpoint_every < 0
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or bad:
            raise ValueError(f"invalid training config {self}")


@dataclass
class PriorResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    distill_losses: list[float] = field(default_factory=list)

    def mean_loss(self, first: int, last: int | None) -> float:
        window = self.losses[first:last]
        return float(sum(window) / max(len(window), 1))


@dataclass
class Trajectories:
    """Action-only data, one row per control step: ``states`` [N, S], ``executed`` [N, A] (the command
    sent at that step), ``chunks`` [N, H, A] (the expert's chunk from that state), ``episode``/``step``."""

    states: np.ndarray
    executed: np.ndarray
    chunks: np.ndarray
    episode: np.ndarray
    step: np.ndarray


def action_trajectories(
    num_episodes: int, config: DemoConfig, seed: int, progress: bool = False
) -> Trajectories:
    """Expert episodes of the reaching task as the labelled generator runs them, without rendering."""
    states, executed, chunks, episodes, steps = [], [], [], [], []
    for e in tqdm(range(num_episodes), desc="action-only episodes", unit="ep", disable=not progress):
        rng = np.random.default_rng(episode_seed(seed, e))
        scene = sample_scene(rng)
        color = scene.colors[int(rng.integers(len(scene.colors)))]
        goal = goal_configuration(scene.block(color), FR3)
        expert = ReachingExpert(goal, config.dt, config.horizon, FR3, config.expert)
        q0 = FR3.clip_position(FR3.ready_pose + rng.uniform(-1, 1, 7) * config.start_noise, 0.05)
        arm = KinematicArm(q0, config.dt, FR3)
        for k in range(config.steps_per_episode):
            joints = expert.chunk(arm.q, arm.qd)
            gripper = np.full((config.horizon, 1), arm.gripper_width)
            command = executed_target(joints[0], rng, config, FR3)
            states.append(np.append(arm.q, arm.gripper_width))
            chunks.append(np.concatenate([joints, gripper], axis=1))
            executed.append(np.append(command, arm.gripper_width))
            episodes.append(e)
            steps.append(k)
            arm.command(command)
    return Trajectories(
        np.asarray(states, np.float32),
        np.asarray(executed, np.float32),
        np.asarray(chunks, np.float32),
        np.asarray(episodes, np.int64),
        np.asarray(steps, np.int64),
    )


def dataset_trajectories(dataset: Any) -> Trajectories:
    """Stage-1 data from a labelled ``DemoDataset`` (``apt-train stage1 --family action_prior``): its states,
    chunks, episode and step arrays; the executed command of a step taken as its chunk's first action.
    Images and instructions are not read. Rows must be in episode order (as ``generate_dataset`` writes)."""
    chunks = np.asarray(dataset.actions, np.float32)
    return Trajectories(
        np.asarray(dataset.states, np.float32),
        chunks[:, 0].copy(),
        chunks,
        np.asarray(dataset.episode, np.int64),
        np.asarray(dataset.step, np.int64),
    )


def history_windows(
    states: np.ndarray, executed: np.ndarray, episode: np.ndarray, step: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every row i: the K rows before it in its episode (oldest first; missing ones at the front,
    mask 0): (states [N, K, S], actions [N, K, A], mask [N, K] float32). Rows must be in episode order."""
    n = states.shape[0]
    hs = np.zeros((n, k, states.shape[1]), np.float32)
    ha = np.zeros((n, k, executed.shape[1]), np.float32)
    mask = np.zeros((n, k), np.float32)
    for j in range(1, k + 1):  # slot k - j holds the step j before
        prev = np.arange(n) - j
        ok = (prev >= 0) & (step >= j)
        ok[ok] &= (episode[prev[ok]] == episode[ok]) & (step[prev[ok]] == step[ok] - j)
        hs[ok, k - j] = states[prev[ok]]
        ha[ok, k - j] = executed[prev[ok]]
        mask[ok, k - j] = 1.0
    return hs, ha, mask


def normalized_history(
    normalizer: Normalizer, hs: np.ndarray, ha: np.ndarray, mask: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """History in normalised units, zero where invalid (as the runtime encodes it)."""
    s = normalizer.normalize_state(hs.reshape(-1, hs.shape[-1])).reshape(hs.shape) * mask[..., None]
    a = normalizer.normalize_actions(ha.reshape(-1, ha.shape[-1])).reshape(ha.shape) * mask[..., None]
    return (
        torch.from_numpy(np.ascontiguousarray(s, np.float32)),
        torch.from_numpy(np.ascontiguousarray(a, np.float32)),
        torch.from_numpy(mask.astype(np.float32)),
    )


def _optimizer(params: list[torch.nn.Parameter], cfg: PriorTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, step: int, cfg: PriorTrainConfig) -> float:
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cast(Any, cfg))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
    opt.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
    return value


class _Checkpoints:
    """Checkpoints of one stage in ``out/checkpoints`` (everything but the frozen VLM, the optimiser, the
    losses); every random draw of step k is seeded by (seed, k), so a resumed run continues exactly."""

    def __init__(self, out: str | Path | None, cfg: PriorTrainConfig) -> None:
        self.out, self.cfg = (Path(out) if out is not None else None), cfg

    def resume(self, model: ActionPriorModel, opt: torch.optim.Optimizer, result: PriorResult) -> int:
        """Load the latest checkpoint into model, optimiser and result; returns its step."""
        if self.out is None:
            raise ValueError("resume needs the stage's output directory")
        _, ckpt = read_latest_checkpoint(self.out, model.config.to_dict())
        model.load_state_dict(ckpt["model"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        result.losses[:] = ckpt["losses"]
        result.distill_losses[:] = ckpt["distill_losses"]
        return int(ckpt["step"])

    def after(
        self, done: int, model: ActionPriorModel, opt: torch.optim.Optimizer, result: PriorResult
    ) -> None:
        every = self.cfg.checkpoint_every
        if self.out is None or every <= 0 or (done % every and done != self.cfg.steps):
            return
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
        payload = {
            "step": done,
            "model": state,
            "optimizer": opt.state_dict(),
            "train_config": asdict(self.cfg),
            "policy_config": model.config.to_dict(),
            "losses": list(result.losses),
            "distill_losses": list(result.distill_losses),
        }
        write_checkpoint(self.out / CHECKPOINT_DIR / f"step_{done:07d}.pt", payload)


def train_prior(
    model: ActionPriorModel,
    normalizer: Normalizer,
    data: Trajectories,
    cfg: PriorTrainConfig,
    progress: bool = True,
    *,
    out: str | Path | None = None,
    resume: bool = False,
) -> PriorResult:
    """Stage 1: the encoder-decoder on action-only trajectories (see the module docstring); checkpoints
    in ``out`` (``cfg.checkpoint_every``), ``resume`` from the latest one there."""
    k = model.history_steps
    hs, ha, hm = normalized_history(
        normalizer, *history_windows(data.states, data.executed, data.episode, data.step, max(k, 1))
    )
    states = torch.from_numpy(normalizer.normalize_state(data.states).astype(np.float32))
    n, h, a = data.chunks.shape
    chunks = normalizer.normalize_actions(data.chunks.reshape(-1, a)).reshape(n, h, a)
    chunks_t = torch.from_numpy(chunks.astype(np.float32))
    params = model.action_parameters()
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = _optimizer(params, cfg)
    result = PriorResult(steps=cfg.steps)
    checkpoints = _Checkpoints(out, cfg)
    start = checkpoints.resume(model, opt, result) if resume else 0
    model.train()
    steps = tqdm(range(start, cfg.steps), "prior stage 1", cfg.steps, initial=start, disable=not progress)
    for step in steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        actions = chunks_t[idx]
        noise = torch.randn(actions.shape, generator=g)
        t = flow.sample_time(actions.shape[0], g)
        drop = torch.rand(actions.shape[0], generator=g) < LATENT_DROPOUT
        delay = sample_delay(actions.shape[0], model.config.rtc_max_delay, g)
        latent = model.encoder.encode_chunk(actions)
        latent = torch.where(drop[:, None], model.null_latent[None].expand_as(latent), latent)
        history = model.encode_history(hs[idx][:, -k:], ha[idx][:, -k:], hm[idx][:, -k:])
        loss = model.flow_loss(latent, history, states[idx], actions, noise, t, delay)
        result.losses.append(_step(opt, loss, params, step, cfg))
        checkpoints.after(step + 1, model, opt, result)
    model.eval()
    model.requires_grad_(False)
    return result


@dataclass
class VLAData:
    """Stage-2 inputs: frozen-VLM features (``EncodedDataset``) and the normalised history per sample."""

    features: EncodedDataset
    history: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def vla_data(
    model: ActionPriorModel,
    dataset: ChunkDataset,
    episode: np.ndarray,
    step: np.ndarray,
    tokenizer: str | Path,
    normalizer: Normalizer,
    progress: bool = True,
) -> VLAData:
    """Encode a labelled dataset once with the frozen VLM; histories from its episode/step arrays, the
    executed action of a past step taken as that step's labelled first action (the clean command)."""
    tok = InstructionTokenizer(tokenizer, model.config.max_instruction_tokens)
    features = encode_dataset(
        cast(Any, model), dataset, tok, normalizer, use_language=True, progress=progress
    )
    states = np.asarray(cast(Any, dataset).states)
    executed = np.asarray(cast(Any, dataset).actions)[:, 0]
    k = max(model.history_steps, 1)
    windows = history_windows(states, executed, episode, step, k)
    return VLAData(features, normalized_history(normalizer, *windows))


def train_vla(
    model: ActionPriorModel,
    data: VLAData,
    cfg: PriorTrainConfig,
    *,
    prior: bool = True,
    progress: bool = True,
    every: int = 0,
    callback: Callable[[int, ActionPriorModel], None] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
) -> PriorResult:
    """Stage 2 (see the module docstring); ``callback(step, model)`` every ``every`` steps (evaluation);
    checkpoints in ``out`` (``cfg.checkpoint_every``), ``resume`` from the latest one there."""
    distill = cfg.distill_steps if prior else 0
    k = model.history_steps
    hs, ha, hm = data.history
    head = list(model.head.parameters())
    everything = model.expert_parameters()
    opt = _optimizer(everything, cfg)
    result = PriorResult(steps=cfg.steps)
    checkpoints = _Checkpoints(out, cfg)
    start = checkpoints.resume(model, opt, result) if resume else 0
    n = len(data.features)
    steps = tqdm(range(start, cfg.steps), "prior stage 2", cfg.steps, initial=start, disable=not progress)
    for step in steps:
        trainable = head if step < distill else everything
        model.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        hidden, vision, language, states, actions = data.features.batch(idx)
        noise = torch.randn(actions.shape, generator=g)
        t = flow.sample_time(actions.shape[0], g)
        delay = sample_delay(actions.shape[0], model.config.rtc_max_delay, g)
        latent = model.latent_from_features(hidden, vision, language, states, preselected=True)
        history = model.encode_history(hs[idx][:, -k:], ha[idx][:, -k:], hm[idx][:, -k:])
        loss = model.flow_loss(latent, history, states, actions, noise, t, delay)
        if step < distill:
            with torch.no_grad():
                target = model.encoder.encode_chunk(actions)
            d = torch.mean((latent - target) ** 2) / torch.clamp(target.var(), min=1e-6)
            result.distill_losses.append(float(d.detach()))
            loss = loss + cfg.distill_weight * d
        result.losses.append(_step(opt, loss, trainable, step, cfg))
        checkpoints.after(step + 1, model, opt, result)
        if callback is not None and every > 0 and (step + 1) % every == 0:
            model.eval()
            callback(step + 1, model)
    model.eval()
    model.requires_grad_(False)
    return result


def stage2_model(stage1: ActionPriorModel, prior: bool = True, seed: int = 0) -> ActionPriorModel:
    """The Stage-2 VLA: the Stage-1 action module copied in (``prior``) or left random (the control)."""
    torch.manual_seed(seed)
    model = ActionPriorModel(stage1.config.with_stage(2), backbone=stage1.backbone)
    if prior:
        prefixes = ("encoder.", "decoder.", "null_")
        state = {k: v for k, v in stage1.state_dict().items() if k.startswith(prefixes)}
        load_weights(model, state, "stage-1 action prior", strict=False)
    return model


def run_prior_stage1(
    model: ActionPriorModel,
    normalizer: Normalizer,
    data: Trajectories,
    tokenizer: str | Path,
    out_dir: str | Path,
    cfg: PriorTrainConfig,
    progress: bool = True,
    resume: bool = False,
) -> tuple[Path, PriorResult]:
    """Train Stage 1 and write its bundle (stage 1: the decoder runs from the null latent)."""
    if model.config.stage != 1:
        raise ValueError("run_prior_stage1 needs a stage-1 model")
    result = train_prior(model, normalizer, data, cfg, progress, out=out_dir, resume=resume)
    out = save_bundle(out_dir, model, normalizer, tokenizer)
    _log(out, cfg, result)
    return out, result


def run_prior_stage2(
    init_bundle: str | Path,
    dataset: ChunkDataset,
    episode: np.ndarray,
    step: np.ndarray,
    out_dir: str | Path,
    cfg: PriorTrainConfig,
    *,
    prior: bool = True,
    progress: bool = True,
    data: VLAData | None = None,
    every: int = 0,
    callback: Callable[[int, ActionPriorModel], None] | None = None,
    resume: bool = False,
) -> tuple[Path, PriorResult]:
    """Train Stage 2 from a Stage-1 bundle (its VLM, normaliser, tokenizer) and write its bundle."""
    stage1 = load_bundle(init_bundle)
    model = stage2_model(stage1.model, prior=prior, seed=cfg.seed)
    data = data or vla_data(model, dataset, episode, step, stage1.tokenizer_path, stage1.normalizer, progress)
    result = train_vla(
        model, data, cfg, prior=prior, progress=progress, every=every, callback=callback, out=out_dir,
        resume=resume,
    )  # fmt: skip
    out = save_bundle(out_dir, model, stage1.normalizer, stage1.tokenizer_path)
    _log(out, cfg, result)
    return out, result


def _log(out: Path, cfg: PriorTrainConfig, result: PriorResult) -> None:
    payload = {"config": asdict(cfg), "losses": result.losses, "distill_losses": result.distill_losses}
    (out / "train_log.json").write_text(json.dumps(payload) + "\n")
