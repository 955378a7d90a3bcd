"""How overlapping chunks are combined at a chunk switch: none, cross-fade, or temporal ensembling.

* ``none``      -- the newest chunk wins at once (the safety filter still limits the step in velocity and
                   acceleration).
* ``crossfade`` -- over ``crossfade_steps`` chunk steps after the new chunk arrives, the target moves from the
                   old chunk's action to the new chunk's action for the same instant: linearly
                   (``crossfade_shape`` "linear"), or along smoothstep 3a^2 - 2a^3 ("smoothstep"), whose
                   weight starts and ends with zero slope, so the blend itself adds no velocity step at
                   either end (its peak slope is 1.5x the linear one, mid-blend).
* ``ensemble``  -- ACT temporal ensembling: every retained chunk that has an action for the instant
                   contributes with weight ``exp(-m * i)``, ``i = 0`` for the OLDEST (ACT's convention; small
                   ``m`` is close to a plain average, larger ``m`` trusts older predictions more).

Failure mode of averaging: a policy is multimodal. If the old chunk goes left around an obstacle and the new
one goes right, their average goes straight into the obstacle; a half-open gripper is the average of "open"
and "closed". Cross-fading limits this to ``crossfade_steps`` steps at each switch; ensembling averages all
the time. Prefer ``none`` or a short cross-fade for multimodal policies; ensembling suits unimodal,
jittery ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLEND_MODES = ("none", "crossfade", "ensemble")
CROSSFADE_SHAPES = ("linear", "smoothstep")


@dataclass(frozen=True)
class BlendConfig:
    """mode: none | crossfade | ensemble; crossfade_steps (chunk steps, >= 1); crossfade_shape linear |
    smoothstep; ensemble_decay m (>= 0); rtc_takeover: with crossfade, an on-time RTC chunk is cross-faded
    in from its take-over (its last committed action, where both chunks are at the same target) instead of
    replacing the executing chunk there: the change of slope is spread over the blend."""

    mode: str = "crossfade"
    crossfade_steps: int = 3
    crossfade_shape: str = "linear"
    ensemble_decay: float = 0.01
    max_chunks: int = 32  # ensemble: most chunks kept alive (oldest dropped first)
    rtc_takeover: bool = False

    def __post_init__(self) -> None:
        if self.mode not in BLEND_MODES:
            raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {self.mode!r}")
        if self.crossfade_shape not in CROSSFADE_SHAPES:
            raise ValueError(
                f"crossfade shape must be one of {CROSSFADE_SHAPES}, got {self.crossfade_shape!r}"
            )
        if int(self.crossfade_steps) < 1:
            raise ValueError(f"crossfade_steps must be >= 1, got {self.crossfade_steps}")
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be finite and >= 0, got {self.ensemble_decay}")
        if int(self.max_chunks) < 1:
            raise ValueError(f"max_chunks must be >= 1, got {self.max_chunks}")


def crossfade_alpha(t: float, t_switch: float, steps: float, dt: float, shape: str = "linear") -> float:
    """Weight of the NEW chunk at time ``t``: 0 at the switch, 1 after ``steps * dt`` seconds (``shape``:
    linear, or smoothstep 3a^2 - 2a^3 of the linear weight a)."""
    a = min(1.0, max(0.0, (t - t_switch) / (steps * dt)))
    return float(a * a * (3.0 - 2.0 * a)) if shape == "smoothstep" else float(a)


def ensemble_weights(count: int, decay: float) -> np.ndarray:
    """Normalised ACT weights for ``count`` predictions ordered oldest first: ``exp(-decay * i)``."""
    w = np.exp(-decay * np.arange(count, dtype=np.float64))
    return w / w.sum()
