"""The training loop shared by both stages: deterministic, checkpointed, resumable.

Every random draw of step k (batch indices, flow times, noise, RTC delays) comes from a generator seeded with
(seed, k), so a run resumed from the checkpoint of step k continues exactly as the uninterrupted run
would. Checkpoints hold the trainable weights, the optimiser state and the loss history; the frozen
backbone is not repeated in them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..model import flow
from ..model.apt import APTModel
from .data import EncodedDataset

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``train`` selects the parameters: "expert" (all but the VLM) or
    "inserted" (Stage-2 inserted layers, their context projections and gates)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    train: str = "expert"
    # trained RTC: share of the samples with a committed prefix whose prefix drifts (std of the drift at
    # its last row, normalised action units); 0: the prefix is always the demonstration's own actions
    rtc_drift_share: float = 0.0
    rtc_drift_std: float = 0.05

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise ValueError(f"invalid training config {self}")
        if not 0.0 <= self.rtc_drift_share <= 1.0 or self.rtc_drift_std < 0:
            raise ValueError("rtc_drift_share must be in [0, 1] and rtc_drift_std >= 0")
        if self.train not in ("expert", "inserted"):
            raise ValueError(f"train={self.train!r}: expected 'expert' or 'inserted'")


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None

    def mean_loss(self, first: int, last: int) -> float:
        window = self.losses[first:last]
        return float(sum(window) / max(len(window), 1))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10% of ``lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def sample_delay(batch: int, max_delay: int, generator: torch.Generator) -> torch.Tensor | None:
    """Trained real-time chunking: a delay d ~ U{0..max_delay} [batch] int64 per sample (None when
    max_delay is 0, which draws nothing, so runs without RTC keep their random streams)."""
    if max_delay <= 0:
        return None
    return torch.randint(0, max_delay + 1, (batch,), generator=generator)


def sample_drift(
    actions: torch.Tensor, delay: torch.Tensor | None, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor | None:
    """Prefix drift [B, A] for trained RTC: N(0, rtc_drift_std) on a ``rtc_drift_share`` of the samples, 0
    on the others (None without RTC or with the share 0: nothing drawn, other runs keep their streams)."""
    if delay is None or cfg.rtc_drift_share <= 0.0:
        return None
    batch, _, dim = actions.shape
    drift = torch.randn((batch, dim), generator=generator) * cfg.rtc_drift_std
    chosen = torch.rand((batch,), generator=generator) < cfg.rtc_drift_share
    return drift * chosen[:, None].to(drift.dtype)


def trainable_parameters(model: APTModel, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    if cfg.train == "inserted":
        if model.config.stage != 2:
            raise ValueError("train='inserted' needs a Stage-2 model")
        return model.expert_parameters(inserted_only=True)
    return model.expert_parameters()


def _expert_state(model: APTModel) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = sorted((Path(out_dir) / CHECKPOINT_DIR).glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save ``payload`` to ``path`` atomically: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_latest_checkpoint(out_dir: str | Path, policy_config: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The latest checkpoint in ``out_dir/checkpoints``; refused when made for another policy config."""
    path = latest_checkpoint(out_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {Path(out_dir) / CHECKPOINT_DIR}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt["policy_config"] != policy_config:
        raise ValueError(f"{path}: checkpoint was made for a different policy config")
    return path, ckpt


def save_checkpoint(
    path: Path, model: APTModel, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, losses
) -> None:
    write_checkpoint(
        path,
        {
            "step": step,
            "expert": _expert_state(model),
            "optimizer": opt.state_dict(),
            "train_config": asdict(cfg),
            "policy_config": model.config.to_dict(),
            "losses": list(losses),
        },
    )


def train(
    model: APTModel,
    data: EncodedDataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Minimise the flow-matching loss on ``data``; checkpoints go to ``out_dir/checkpoints``.

    With ``model.config.rtc_max_delay`` > 0 each sample's first d ~ U{0..rtc_max_delay} actions are given
    clean and left out of the loss (trained real-time chunking, ``APTModel.flow_loss``)."""
    out = Path(out_dir)
    params = trainable_parameters(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, losses, resumed = 0, [], None
    if resume:
        _, ckpt = read_latest_checkpoint(out, model.config.to_dict())
        model.load_state_dict(ckpt["expert"], strict=False)
        opt.load_state_dict(ckpt["optimizer"])
        start, losses, resumed = int(ckpt["step"]), list(ckpt["losses"]), int(ckpt["step"])
    model.train()
    model.backbone.eval()
    n = len(data)
    bar = tqdm(
        range(start, cfg.steps), desc=desc, unit="step", disable=not progress, initial=start, total=cfg.steps
    )
    for step in bar:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        index = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        hidden, vision, language, states, actions = data.batch(index)
        noise = torch.randn(actions.shape, generator=g)
        t = flow.sample_time(actions.shape[0], g)
        delay = sample_delay(actions.shape[0], model.config.rtc_max_delay, g)
        drift = sample_drift(actions, delay, cfg, g)
        prefix = model.project_prefix(hidden, vision, language, preselected=True)
        loss = model.flow_loss(prefix, states, actions, noise, t, delay, drift)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower --lr")
        losses.append(value)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(out / CHECKPOINT_DIR / f"step_{done:07d}.pt", model, opt, done, cfg, losses)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    (out / "train_log.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").write_text(json.dumps({"config": asdict(cfg), "losses": losses}) + "\n")
    return TrainResult(steps=cfg.steps, losses=losses, resumed_from=resumed)
