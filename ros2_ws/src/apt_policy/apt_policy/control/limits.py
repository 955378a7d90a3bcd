"""Joint limits the safety filter enforces (rad, rad/s, rad/s², rad/s³), from a robot profile or arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_ARRAYS = ("lower", "upper", "velocity", "acceleration", "jerk")


@dataclass(frozen=True, eq=False)
class JointLimits:
    """Per-joint position range, velocity, acceleration and (optional) jerk limits; float64 ``(dof,)``
    read-only arrays. ``jerk`` None: no jerk limit."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray | None = None

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        dof = len(names)
        if dof == 0:
            raise ValueError("JointLimits needs at least one joint name")
        for field in _ARRAYS:
            if field == "jerk" and self.jerk is None:
                continue
            arr = np.array(getattr(self, field), dtype=np.float64)
            if arr.ndim == 0:
                arr = np.full(dof, float(arr))
            if arr.shape != (dof,):
                raise ValueError(f"JointLimits.{field} needs {dof} values, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"JointLimits.{field} must be finite, got {arr.tolist()}")
            arr.setflags(write=False)
            object.__setattr__(self, field, arr)
        if np.any(self.lower >= self.upper):
            raise ValueError("JointLimits: lower must be < upper on every joint")
        if np.any(self.velocity <= 0) or np.any(self.acceleration <= 0):
            raise ValueError("JointLimits: velocity and acceleration limits must be > 0")
        if self.jerk is not None and np.any(self.jerk <= 0):
            raise ValueError("JointLimits: jerk limits must be > 0")

    @property
    def dof(self) -> int:
        return len(self.names)

    @classmethod
    def from_profile(
        cls,
        profile: Any,
        velocity_scale: float = 1.0,
        acceleration_scale: float = 1.0,
        velocity: Sequence[float] | float | None = None,
        acceleration: Sequence[float] | float | None = None,
    ) -> JointLimits:
        """Limits of a ``robots.franka.RobotProfile`` (or anything with the same fields).

        ``velocity``/``acceleration`` override the profile's values (absolute, rad/s and rad/s²); the scales
        then multiply the result. Overrides and scales may only tighten the hardware limits.
        """
        base_v = np.asarray(profile.velocity, dtype=np.float64)
        base_a = np.asarray(profile.acceleration, dtype=np.float64)
        vel = base_v if velocity is None else np.broadcast_to(np.asarray(velocity, np.float64), base_v.shape)
        acc = (
            base_a
            if acceleration is None
            else np.broadcast_to(np.asarray(acceleration, np.float64), base_a.shape)
        )
        for name, scale in (("velocity_scale", velocity_scale), ("acceleration_scale", acceleration_scale)):
            if not (np.isfinite(scale) and 0 < scale <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {scale}")
        vel = vel * velocity_scale
        acc = acc * acceleration_scale
        if np.any(vel > base_v + 1e-12) or np.any(acc > base_a + 1e-12):
            raise ValueError(
                f"velocity/acceleration overrides exceed the hardware limits "
                f"{base_v.tolist()} rad/s / {base_a.tolist()} rad/s²"
            )
        return cls(
            names=tuple(profile.joint_names),
            lower=profile.position_lower,
            upper=profile.position_upper,
            velocity=vel,
            acceleration=acc,
            jerk=getattr(profile, "jerk", None),
        )
