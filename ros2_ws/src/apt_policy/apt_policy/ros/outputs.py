"""Arm and gripper command publishers for the three output modes. Plain arrays in, messages out.

Every publisher uses ``qos.COMMANDS`` (reliable, keep-last 1: a late command is useless).
Publishing happens on the stream thread (rclpy publishers are thread-safe). Each output checks again that
what it sends is finite -- the safety filter guarantees it, this is the last line, not the filter.

Arm commands are built in two steps so the stream can publish on its deadline: ``prepare`` checks, builds
and serialises the message (the part whose duration varies, ~0.1 ms), ``publish`` hands the bytes to the
middleware (~2 us instead of ~30 us for a message object).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rclpy.serialization import serialize_message

from apt_policy.ros.conversions import fill_trajectory
from apt_policy.ros.qos import COMMANDS


class NonFiniteCommandError(RuntimeError):
    """Raised instead of publishing a NaN/inf command (a bug upstream: the safety filter must prevent it)."""


def _finite(values: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise NonFiniteCommandError(f"refusing to publish non-finite {what}: {np.asarray(values).tolist()}")


class TrajectoryOutput:
    """trajectory_msgs/JointTrajectory for a joint_trajectory_controller (stamp 0: start now)."""

    mode = "joint_trajectory"

    def __init__(self, node, topic: str, joint_names: Sequence[str]) -> None:
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        self._msg_type, self._point_type = JointTrajectory, JointTrajectoryPoint
        self.joint_names = list(joint_names)
        self.publisher = node.create_publisher(JointTrajectory, topic, COMMANDS)
        self.sent = 0

    def prepare(
        self, times_s: np.ndarray, positions: np.ndarray, velocities: np.ndarray | None, stamp_s: float = 0.0
    ) -> bytes:
        """The serialised look-ahead: ``times_s`` (n,) from ``stamp_s`` (0: from receipt),
        positions/velocities (n, dof). NonFiniteCommandError for a non-finite or non-increasing one."""
        _finite(positions, "trajectory positions")
        if velocities is not None:
            _finite(velocities, "trajectory velocities")
        times_s = np.asarray(times_s, dtype=np.float64)
        if times_s.size == 0 or times_s[0] <= 0 or np.any(np.diff(times_s) <= 0):
            raise NonFiniteCommandError(
                f"trajectory times must be > 0 and strictly increasing: {times_s.tolist()}"
            )
        msg = self._msg_type()
        fill_trajectory(msg, self.joint_names, times_s, positions, velocities, self._point_type, stamp_s)
        return serialize_message(msg)

    def publish(self, payload: bytes) -> None:
        """Publish what :meth:`prepare` returned."""
        self.publisher.publish(payload)
        self.sent += 1

    def subscribed(self) -> bool:
        """Whether the arm's controller (any subscriber) is connected."""
        return self.publisher.get_subscription_count() > 0


class PositionOutput:
    """std_msgs/Float64MultiArray of joint positions for a forward position controller (no timeout there:
    the last command is held, which is why HOLD commands the held position every tick)."""

    mode = "joint_position"

    def __init__(self, node, topic: str) -> None:
        from std_msgs.msg import Float64MultiArray

        self._msg_type = Float64MultiArray
        self.publisher = node.create_publisher(Float64MultiArray, topic, COMMANDS)
        self.sent = 0

    def prepare(self, positions: np.ndarray) -> bytes:
        """The serialised command (NonFiniteCommandError for non-finite positions)."""
        _finite(positions, "joint positions")
        msg = self._msg_type()
        msg.data = np.asarray(positions, dtype=np.float64).tolist()
        return serialize_message(msg)

    def publish(self, payload: bytes) -> None:
        """Publish what :meth:`prepare` returned."""
        self.publisher.publish(payload)
        self.sent += 1

    def subscribed(self) -> bool:
        """Whether the arm's controller (any subscriber) is connected."""
        return self.publisher.get_subscription_count() > 0


class GripperWidthOutput:
    """std_msgs/Float64 gripper width (m), published only when the target changes by ``min_delta`` or more."""

    def __init__(self, node, topic: str, max_width: float, min_delta: float = 0.001) -> None:
        from std_msgs.msg import Float64

        self._msg_type = Float64
        self.max_width = float(max_width)
        self.min_delta = float(min_delta)
        self.publisher = node.create_publisher(Float64, topic, COMMANDS)
        self.last: float | None = None
        self.sent = 0

    def __call__(self, width: float, now_s: float) -> None:
        if not np.isfinite(width):
            return
        width = float(np.clip(width, 0.0, self.max_width))
        if self.last is not None and abs(width - self.last) < self.min_delta:
            return
        self.publisher.publish(self._msg_type(data=width))
        self.last = width
        self.sent += 1
