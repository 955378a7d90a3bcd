"""The scripted expert: joint-position chunks that bring the TCP to a block's reach point.

The goal configuration comes from numeric IK (tool pointing down, seeded at the ready pose so every
demonstration uses the same arm posture family). The chunk is a critically damped second-order approach
in joint space, integrated at the control ``dt`` from the arm's current position and velocity with
velocity and acceleration saturated at a fraction of the robot's limits: smooth, limit-respecting, and a
function of the current state only (so it can be queried closed-loop, like the learned policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apt_policy.robots.franka import FR3, RobotProfile, inverse_kinematics
from apt_policy.tasks.scene import Block

__all__ = ["ExpertConfig", "ReachingExpert", "goal_configuration"]


@dataclass(frozen=True)
class ExpertConfig:
    """Shape of the expert's motion. Fractions are of the robot profile's limits."""

    natural_frequency: float = 3.0  # rad/s of the critically damped approach
    velocity_fraction: float = 0.35
    acceleration_fraction: float = 0.25
    substeps: int = 5  # integration substeps per control step

    def __post_init__(self) -> None:
        if not (0 < self.velocity_fraction <= 1 and 0 < self.acceleration_fraction <= 1):
            raise ValueError("velocity/acceleration fractions must be in (0, 1]")
        if self.natural_frequency <= 0 or self.substeps < 1:
            raise ValueError("natural_frequency must be > 0 and substeps >= 1")


def goal_configuration(block: Block, profile: RobotProfile = FR3) -> np.ndarray:
    """Joint positions putting the TCP at ``block``'s reach point, tool down (raises if unreachable)."""
    result = inverse_kinematics(profile, block.reach_point, tool_down=True)
    if not result.success:
        raise ValueError(f"{block.color} block at ({block.x:.3f}, {block.y:.3f}) is not reachable tool-down")
    return result.q


class ReachingExpert:
    """Chunks toward one goal configuration: ``chunk(q, qd)`` -> ``(horizon, 7)`` joint positions."""

    def __init__(
        self,
        goal: np.ndarray,
        dt: float,
        horizon: int,
        profile: RobotProfile = FR3,
        config: ExpertConfig | None = None,
    ) -> None:
        if dt <= 0 or horizon < 1:
            raise ValueError("dt must be > 0 and horizon >= 1")
        self.goal = np.asarray(goal, dtype=np.float64).copy()
        if not profile.within_limits(self.goal):
            raise ValueError("expert goal is outside the joint limits")
        self.dt, self.horizon, self.profile = float(dt), int(horizon), profile
        self.config = config or ExpertConfig()
        self.v_max = profile.velocity * self.config.velocity_fraction
        self.a_max = profile.acceleration * self.config.acceleration_fraction

    @classmethod
    def for_block(
        cls, block: Block, dt: float, horizon: int, profile: RobotProfile = FR3, **kwargs
    ) -> ReachingExpert:
        return cls(goal_configuration(block, profile), dt, horizon, profile, **kwargs)

    def step(self, q: np.ndarray, qd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance the reference by one control step."""
        wn = self.config.natural_frequency
        h = self.dt / self.config.substeps
        a_max, v_max, goal = self.a_max, self.v_max, self.goal
        for _ in range(self.config.substeps):
            qdd = np.minimum(np.maximum(wn * wn * (goal - q) - 2.0 * wn * qd, -a_max), a_max)
            qd = np.minimum(np.maximum(qd + qdd * h, -v_max), v_max)
            q = q + qd * h
        return self.profile.clip_position(q), qd

    def chunk(self, q: np.ndarray, qd: np.ndarray | None = None) -> np.ndarray:
        """The next ``horizon`` joint-position targets (one per ``dt``) from state ``(q, qd)``."""
        q = np.asarray(q, dtype=np.float64).copy()
        qd = np.zeros(7) if qd is None else np.clip(np.asarray(qd, dtype=np.float64), -self.v_max, self.v_max)
        out = np.empty((self.horizon, q.shape[0]))
        for k in range(self.horizon):
            q, qd = self.step(q, qd)
            out[k] = q
        return out
