"""The Policy contract every backend satisfies, the description it carries (PolicyInfo), the error a backend
raises for unusable output (InferenceError) and what every graph backend shares (GraphPolicy)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..core.config import ActionSemantics, PolicyConfig
from ..core.preprocess import PreprocessError

if TYPE_CHECKING:
    from .inputs import ModelInputs, ObservationEncoder


@dataclass(frozen=True)
class History:
    """What a stateful policy needs of the past (docs/ARCHITECTURE.md, "Stateful policies"): the last K
    control steps before the observation, at the policy's ``dt``, oldest first. ``states`` (K, state_dim) the
    measured state at each step, ``actions`` (K, action_dim) the command actually sent then (after the safety
    filter; robot units), ``valid`` (K,) bool: False for steps before the episode began (at the front).
    Every family takes it; a stateless policy (``info.history_steps`` 0) ignores it."""

    states: np.ndarray
    actions: np.ndarray
    valid: np.ndarray

    @classmethod
    def empty(cls, steps: int, state_dim: int, action_dim: int) -> History:
        """No past (episode start): every step invalid."""
        return cls(
            np.zeros((steps, state_dim), np.float32),
            np.zeros((steps, action_dim), np.float32),
            np.zeros((steps,), bool),
        )


@dataclass(frozen=True)
class PolicyInfo:
    """What a caller needs to know about a loaded policy to feed it and use its actions.

    ``action_semantics`` says how to read an action row (absolute / delta / velocity arm targets, gripper
    mode; see core.config.ActionSemantics); ``dt`` is the time between consecutive actions, seconds.

    Real-time chunking: ``rtc_inputs`` says whether ``predict`` accepts a committed ``prefix`` (False for
    exports made before RTC: they run, but refuse a prefix); ``rtc_max_delay`` is the largest prefix
    (actions) the model was trained with (0: not trained for RTC, training-free hard prefix only);
    ``rtc_mode`` is how this policy uses a prefix: "trained" (prefix rows given clean, needs
    ``rtc_max_delay`` > 0) or "training_free" (hard prefix); chosen at load (``rtc_mode=`` option).
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
    steps: int  # flow-matching integration steps per prediction (0: one deterministic forward pass)
    noise_scale: float = 1.0  # std of the initial flow noise the policy draws (0: deterministic)
    rtc_inputs: bool = False  # predict accepts a committed action prefix
    rtc_max_delay: int = 0  # trained maximum prefix length in actions (0: training-free only)
    rtc_mode: str = "training_free"  # how a prefix is used: "trained" or "training_free"
    history_steps: int = 0  # K past steps the policy reads from ``predict(history=)`` (0: stateless)
    family: str = "apt"  # the seed system (core.config.FAMILIES)

    @classmethod
    def from_config(
        cls,
        config: PolicyConfig,
        backend: str,
        steps: int | None = None,
        rtc_inputs: bool = True,
        rtc_mode: str = "training_free",
    ) -> PolicyInfo:
        if config.family == "action_distillation":  # one deterministic forward pass: no flow steps,
            steps, rtc_inputs, rtc_mode = 0, False, "training_free"  # no noise, no committed prefix
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
            noise_scale=0.0 if config.family == "action_distillation" else float(config.noise_scale),
            rtc_inputs=bool(rtc_inputs),
            rtc_max_delay=int(config.rtc_max_delay),
            rtc_mode=rtc_mode,
            history_steps=config.history_steps,
            family=config.family,
        )


RTC_MODES = ("auto", "trained", "training_free")


def resolve_rtc_mode(requested: str, config: PolicyConfig) -> str:
    """The RTC mode a policy uses: "auto" is "trained" for a model trained for RTC (``rtc_max_delay`` > 0),
    else "training_free"; "trained" on a model not trained for it is refused (ValueError)."""
    if requested not in RTC_MODES:
        raise ValueError(f"rtc_mode must be one of {RTC_MODES}, got {requested!r}")
    if requested == "auto":
        return "trained" if config.rtc_max_delay > 0 else "training_free"
    if requested == "trained" and config.rtc_max_delay == 0:
        raise ValueError(
            f"rtc_mode='trained' needs a model trained for real-time chunking; {config.model_id} has "
            "rtc_max_delay 0 (use 'training_free' or 'auto')"
        )
    return requested


@runtime_checkable
class Policy(Protocol):
    """A policy: camera images + robot state + instruction -> an action chunk (horizon, action_dim).

    ``prefix`` (real-time chunking): (d, action_dim) actions in robot units, 0 <= d <= horizon, that rows
    0..d-1 of the returned chunk must equal (the previous chunk's actions that execute before this one
    takes over, in this chunk's time frame); None or d == 0: no prefix. Only if ``info.rtc_inputs``.

    ``history`` (stateful policies, ``info.history_steps`` K > 0): the last >= K executed steps (History);
    None = episode start (no valid step). Stateless policies accept and ignore it.
    """

    @property
    def info(self) -> PolicyInfo: ...

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
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
        prefix: np.ndarray | None = None,
        prefix_len: np.ndarray | None = None,
    ) -> np.ndarray:
        """Graph inputs -> normalised actions. ``prefix`` [1, H, A] (normalised) and ``prefix_len`` [1] int64
        are the real-time-chunking inputs (None or length 0: none), used in ``self.info.rtc_mode``."""
        raise NotImplementedError

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> np.ndarray:
        """(horizon, action_dim) actions in robot units; raises PreprocessError / InferenceError."""
        if prefix is not None and np.size(prefix) > 0 and not self._info.rtc_inputs:
            raise PreprocessError(
                f"{self._info.model_id}: this export takes no action prefix (made before real-time chunking; "
                "re-export with apt-export onnx). Check info.rtc_inputs before sending one."
            )
        with self._lock:  # the encoder's and the graphs' buffers are reused: one prediction at a time
            x = self.encoder.encode(images, state, instruction, noise, prefix, history)
            return self.encoder.decode(self.run_inputs(x))

    def run_inputs(self, x: ModelInputs) -> np.ndarray:
        """Encoded inputs -> normalised actions: APT's graphs (``run``); other families override this."""
        return self.run(x.pixel_values, x.input_ids, x.text_mask, x.state, x.noise, x.prefix, x.prefix_len)

    def warmup(self, iterations: int | None = None) -> None:
        """Run the graphs on synthetic inputs so the first real prediction is not slow."""
        h, w = self.config.image_size
        images = {c: np.zeros((h, w, 3), np.uint8) for c in self.config.cameras}
        state = self.encoder.normalizer.state.mean.astype(np.float32)
        for _ in range(self.warmup_iterations if iterations is None else iterations):
            self.predict(images, state, "", np.zeros(self.encoder.noise_shape[1:], np.float32))
