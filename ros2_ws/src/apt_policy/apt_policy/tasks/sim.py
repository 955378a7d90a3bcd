"""Kinematic arm for rollouts: tracks commanded joint positions within the velocity limits.

Each control step of length ``dt`` moves every joint toward its commanded position by at most
``velocity_limit * dt``. Commands that are non-finite, outside the position limits, or that ask for more
than the velocity limit are counted as violations (the arm holds on non-finite commands and clips the
others), so a rollout also reports whether a policy respected the robot's contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apt_policy.robots.franka import FR3, RobotProfile, forward_kinematics

__all__ = ["CommandViolations", "KinematicArm"]


@dataclass
class CommandViolations:
    """Counts of commands that broke the robot's contract."""

    non_finite: int = 0
    outside_limits: int = 0
    too_fast: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.non_finite + self.outside_limits + self.too_fast


class KinematicArm:
    """Joint positions and velocities of a simulated arm, advanced one control step per command."""

    def __init__(
        self,
        q0: np.ndarray | None = None,
        dt: float = 0.1,
        profile: RobotProfile = FR3,
        gripper_width: float | None = None,
    ) -> None:
        if dt <= 0:
            raise ValueError("dt must be > 0")
        self.profile, self.dt = profile, float(dt)
        q0 = profile.ready_pose if q0 is None else np.asarray(q0, dtype=np.float64)
        if not profile.within_limits(q0):
            raise ValueError(f"initial joint positions {q0} are outside the limits")
        self.q = q0.copy()
        self.qd = np.zeros(profile.dof)
        self.gripper_width = profile.max_gripper_width if gripper_width is None else float(gripper_width)
        self.violations = CommandViolations()

    @property
    def tcp_position(self) -> np.ndarray:
        return forward_kinematics(self.q)[:3, 3]

    def command(self, target: np.ndarray, gripper_width: float | None = None) -> None:
        """Track ``target`` joint positions for one control step."""
        target = np.asarray(target, dtype=np.float64).reshape(-1)[: self.profile.dof]
        v = self.violations
        if target.shape != (self.profile.dof,) or not np.all(np.isfinite(target)):
            v.non_finite += 1
            v.details.append("non-finite or wrongly sized command: held position")
            self.qd = np.zeros(self.profile.dof)
            return
        if not self.profile.within_limits(target, tol=1e-9):
            v.outside_limits += 1
            target = self.profile.clip_position(target)
        step_limit = self.profile.velocity * self.dt
        delta = target - self.q
        if np.any(np.abs(delta) > step_limit * (1 + 1e-6)):
            v.too_fast += 1
        delta = np.clip(delta, -step_limit, step_limit)
        self.q = self.q + delta
        self.qd = delta / self.dt
        if gripper_width is not None and np.isfinite(gripper_width):
            self.gripper_width = float(np.clip(gripper_width, 0.0, self.profile.max_gripper_width))
