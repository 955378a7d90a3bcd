"""The watchdog's input checks: is the joint state and is every camera fresh enough to act on?

Pure functions of explicit times (seconds on the node's monotonic clock). The controller adds the other hold
reasons (failed or too-slow inference, exhausted buffer) and the state machine.
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
    max_inference_latency  chunk arriving more than this after its observation -> refused, HOLD default 0.5
    cameras                cameras that must be fresh; empty -> every camera passed to the check
    """

    max_state_age: float = 0.1
    max_camera_age: float = 0.25
    max_inference_latency: float = 0.5
    cameras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_state_age", "max_camera_age", "max_inference_latency"):
            value = getattr(self, name)
            if not (value > 0):  # inf allowed (disables the check), NaN refused
                raise ValueError(f"WatchdogConfig.{name} must be > 0, got {value}")
        object.__setattr__(self, "cameras", tuple(self.cameras))


def stale_input_reason(
    config: WatchdogConfig,
    t_now: float,
    state_stamp: float | None,
    camera_stamps: Mapping[str, float | None] | None,
) -> str | None:
    """Why the inputs are too old to act on at ``t_now`` (None when fresh).

    ``state_stamp``/``camera_stamps`` are the receive times of the latest samples; None means "not checked"
    for the state and "no frame yet" for a camera. A stamp in the future counts as fresh.
    """
    if state_stamp is not None:
        age = t_now - _seconds(state_stamp)
        if not math.isfinite(age) or age > config.max_state_age:
            return f"joint state stale ({_ms(age)} > {config.max_state_age * 1e3:.0f} ms)"
    if camera_stamps is None:
        return None
    names = config.cameras or tuple(sorted(camera_stamps))
    for name in names:
        stamp = camera_stamps.get(name)
        if stamp is None:
            return f"camera '{name}' has no frame"
        age = t_now - _seconds(stamp)
        if not math.isfinite(age) or age > config.max_camera_age:
            return f"camera '{name}' stale ({_ms(age)} > {config.max_camera_age * 1e3:.0f} ms)"
    return None


def _seconds(stamp: object) -> float:
    """A stamp as float seconds; NaN (-> stale) when it is not a number."""
    try:
        return float(stamp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _ms(age: float) -> str:
    return f"{age * 1e3:.0f} ms" if math.isfinite(age) else "invalid stamp"
