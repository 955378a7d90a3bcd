"""The Policy contract every backend satisfies, and the description it carries (PolicyInfo)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.config import ActionSemantics, PolicyConfig


@dataclass(frozen=True)
class PolicyInfo:
    """What a caller needs to know about a loaded policy to feed it and use its actions.

    ``action_semantics`` says how to read an action row (absolute / delta / velocity arm targets, gripper
    mode; see core.config.ActionSemantics); ``dt`` is the time between consecutive actions, seconds.
    """

    backend: str
    model_id: str
    cameras: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width) the model sees
    horizon: int
    action_dim: int
    action_names: tuple[str, ...]
    state_names: tuple[str, ...]
    dt: float
    action_semantics: ActionSemantics
    steps: int  # flow-matching integration steps per prediction
    noise_scale: float = 1.0  # std of the initial flow noise the policy draws (0: deterministic)

    @classmethod
    def from_config(cls, config: PolicyConfig, backend: str, steps: int | None = None) -> PolicyInfo:
        return cls(
            backend=backend,
            model_id=config.model_id,
            cameras=tuple(config.cameras),
            image_size=(int(config.image_size[0]), int(config.image_size[1])),
            horizon=config.horizon,
            action_dim=config.action_dim,
            action_names=tuple(config.action_names),
            state_names=tuple(config.state_names),
            dt=float(config.control_dt),
            action_semantics=config.action_semantics,
            steps=int(steps if steps is not None else config.sampling_steps),
            noise_scale=float(config.noise_scale),
        )


@runtime_checkable
class Policy(Protocol):
    """A policy: camera images + robot state + instruction -> an action chunk (horizon, action_dim)."""

    @property
    def info(self) -> PolicyInfo: ...

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
    ) -> np.ndarray: ...

    def warmup(self) -> None: ...
