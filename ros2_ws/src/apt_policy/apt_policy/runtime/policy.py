"""The Policy contract every backend satisfies, the description it carries (PolicyInfo), the error a backend
raises for unusable output (InferenceError) and what every graph backend shares (GraphPolicy)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..core.config import ActionSemantics, PolicyConfig

if TYPE_CHECKING:
    from .inputs import ObservationEncoder


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


class InferenceError(RuntimeError):
    """A backend produced unusable output (non-finite actions, wrong shape): the caller must HOLD."""


class GraphPolicy:
    """What every graph backend shares: encode -> ``run`` the graphs -> decode, one prediction at a time.

    Subclasses set ``encoder``, ``config``, ``_info`` and ``_lock`` and implement ``run`` (graph inputs ->
    normalised actions).
    """

    warmup_iterations = 2
    encoder: ObservationEncoder
    config: PolicyConfig
    _info: PolicyInfo
    _lock: AbstractContextManager[object]  # a Lock or RLock: one prediction at a time

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def run(  # pragma: no cover
        self,
        pixel_values: np.ndarray,
        input_ids: np.ndarray,
        text_mask: np.ndarray,
        state: np.ndarray,
        noise: np.ndarray,
    ) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """(horizon, action_dim) actions in robot units; raises PreprocessError / InferenceError."""
        with self._lock:  # the encoder's and the graphs' buffers are reused: one prediction at a time
            x = self.encoder.encode(images, state, instruction, noise)
            return self.encoder.decode(self.run(x.pixel_values, x.input_ids, x.text_mask, x.state, x.noise))

    def warmup(self, iterations: int | None = None) -> None:
        """Run the graphs on synthetic inputs so the first real prediction is not slow."""
        h, w = self.config.image_size
        images = {c: np.zeros((h, w, 3), np.uint8) for c in self.config.cameras}
        state = self.encoder.normalizer.state.mean.astype(np.float32)
        for _ in range(self.warmup_iterations if iterations is None else iterations):
            self.predict(images, state, "", np.zeros(self.encoder.noise_shape[1:], np.float32))
