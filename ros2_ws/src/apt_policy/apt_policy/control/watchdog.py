"""The watchdog's input checks: is every input fresh enough to act on? The one place that decides it.

Pure functions of explicit times (seconds on the node's monotonic clock). The controller asks it every tick
(HOLD while an input is stale) and the observation buffer asks it before it forms an observation set for
inference, with the same :class:`WatchdogConfig`; the node only passes the receive times. The controller adds
the other hold reasons (failed or too-slow inference, exhausted buffer) and the state machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class WatchdogConfig:
    """Maximum input ages and inference latency (seconds).

    max_state_age          joint state older than this -> HOLD                                 default 0.1
    max_camera_age         any required camera frame older than this -> HOLD                   default 0.25
    max_gripper_age        gripper state older than this -> HOLD (only where it is passed)     default 0.5
    max_inference_latency  chunk arriving more than this after its observation -> refused, HOLD default 0.5
    inference_timeout      an inference running longer than this -> HOLD (inf: not checked)    default inf
    cameras                cameras that must be fresh; empty -> every camera passed to the check
    """

    max_state_age: float = 0.1
    max_camera_age: float = 0.25
    max_gripper_age: float = 0.5
    max_inference_latency: float = 0.5
    inference_timeout: float = math.inf
    cameras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "max_state_age",
            "max_camera_age",
            "max_gripper_age",
            "max_inference_latency",
            "inference_timeout",
        ):
            value = getattr(self, name)
            if not (value > 0):  # inf allowed (disables the check), NaN refused
                raise ValueError(f"WatchdogConfig.{name} must be > 0, got {value}")
        object.__setattr__(self, "cameras", tuple(self.cameras))


MISSING = -math.inf  # a receive time meaning "required but never received"


def state_problem(config: WatchdogConfig, t_now: float, state_stamp: float | None) -> str | None:
    """Why the joint state (received at ``state_stamp``; None: not checked) is too old at ``t_now``."""
    if state_stamp is None:
        return None
    if state_stamp == MISSING:
        return "joint state has no sample"
    age = t_now - _seconds(state_stamp)
    if not math.isfinite(age) or age > config.max_state_age:
        return f"joint state stale ({_ms(age)} > {config.max_state_age * 1e3:.0f} ms)"
    return None


def stale_input_reason(
    config: WatchdogConfig,
    t_now: float,
    state_stamp: float | None,
    camera_stamps: Mapping[str, float | None] | None,
    gripper_stamp: float | None = None,
    inference_started: float | None = None,
) -> str | None:
    """Why the inputs are too old to act on at ``t_now`` (None when fresh): the first problem found.

    ``state_stamp``/``camera_stamps``/``gripper_stamp`` are the receive times of the latest samples; None
    means "not checked" for the state and the gripper (:data:`MISSING`: required, never received) and "no
    frame yet" for a camera. A stamp in the future counts as fresh. ``inference_started``: when the
    inference now running began (None: none running); longer than ``inference_timeout`` holds too.
    """
    problem = state_problem(config, t_now, state_stamp)
    if problem is not None:
        return problem
    if camera_stamps is not None:
        names = config.cameras or tuple(sorted(camera_stamps))
        for name in names:
            stamp = camera_stamps.get(name)
            if stamp is None:
                return f"camera '{name}' has no frame"
            age = t_now - _seconds(stamp)
            if not math.isfinite(age) or age > config.max_camera_age:
                return f"camera '{name}' stale ({_ms(age)} > {config.max_camera_age * 1e3:.0f} ms)"
    if gripper_stamp is not None:
        if gripper_stamp == MISSING:
            return "gripper state has no sample"
        age = t_now - _seconds(gripper_stamp)
        if not math.isfinite(age) or age > config.max_gripper_age:
            return f"gripper state stale ({_ms(age)} > {config.max_gripper_age * 1e3:.0f} ms)"
    if inference_started is not None:
        busy = t_now - _seconds(inference_started)
        if not math.isfinite(busy) or busy > config.inference_timeout:
            return f"inference running for {_ms(busy)} (timeout {config.inference_timeout * 1e3:.0f} ms)"
    return None


def _seconds(stamp: object) -> float:
    """A stamp as float seconds; NaN (-> stale) when it is not a number."""
    try:
        return float(stamp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _ms(age: float) -> str:
    return f"{age * 1e3:.0f} ms" if math.isfinite(age) else "invalid stamp"
