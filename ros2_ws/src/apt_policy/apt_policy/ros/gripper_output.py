"""Gripper output: sends the gripper commands decided by :mod:`apt_policy.control.gripper`.

Two transports, chosen by the ``gripper.output`` parameter:

* ``franka_actions`` -- franka_gripper's action servers ``/<gripper.node_name>/grasp`` (close:
  franka_msgs/action/Grasp with width, epsilon inner/outer, speed, force) and ``/<gripper.node_name>/move``
  (open / width: franka_msgs/action/Move with width, speed). franka_msgs is imported lazily.
* ``width_topic``   -- std_msgs/Float64 width (m) on ``gripper.width_topic`` (the fake Franka listens there).
* ``auto`` (default) -- ``franka_actions`` when franka_msgs imports, else ``width_topic``; ``none`` disables.

:meth:`GripperOutput.submit` is called by the node's control loop on every tick with the commanded width; it
is thread-safe and never blocks (goals are sent asynchronously). A goal that cannot be sent (server not
up) or that the server rejects is retried after ``gripper.min_interval``; a grasp that ends without success
(object wider/narrower than width +- epsilon) is logged and NOT retried, since retrying would squeeze again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

from apt_policy.control.gripper import GripperCommand, GripperDecider, GripperDecisionConfig

OUTPUT_MODES = ("auto", "franka_actions", "width_topic", "none")


@dataclass(frozen=True)
class GripperOutputSettings:
    """Transport settings (see the module docstring); speeds in m/s, force in N, widths in m."""

    output: str = "auto"
    node_name: str = "franka_gripper"
    width_topic: str = "/franka_gripper/width_command"
    speed: float = 0.1
    force: float = 20.0
    epsilon_inner: float = 0.005
    epsilon_outer: float = 0.005

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"gripper.output must be one of {OUTPUT_MODES}, got {self.output!r}")
        if not self.node_name.strip("/"):
            raise ValueError("gripper.node_name must not be empty")
        if not 0.0 < self.speed <= 0.2:
            raise ValueError(f"gripper.speed must be in (0, 0.2] m/s, got {self.speed}")
        if not 0.0 < self.force <= 70.0:
            raise ValueError(f"gripper.force must be in (0, 70] N, got {self.force}")
        if self.epsilon_inner < 0.0 or self.epsilon_outer < 0.0:
            raise ValueError("gripper.epsilon_inner/outer must be >= 0")


def franka_msgs_available() -> bool:
    """True when franka_msgs' Python actions import (a sourced franka_ros2 workspace)."""
    try:
        import franka_msgs.action  # noqa: F401
    except ImportError:
        return False
    return True


class GripperOutput:
    """Rate-limited, change-only gripper commands to franka_gripper actions or a width topic."""

    _franka: Any = None  # franka_msgs.action once the transport is franka_actions

    def __init__(
        self,
        node: Node,
        settings: GripperOutputSettings,
        decision: GripperDecisionConfig,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._node = node
        self._log = node.get_logger()
        self.settings = settings
        self.decider = GripperDecider(decision)
        self._lock = threading.Lock()
        self._clock = clock
        self.failures = 0
        self._pub = None
        self._move_client: Any = None  # rclpy.action.ActionClient once the transport is franka_actions
        self._grasp_client: Any = None
        self.transport = self._resolve_transport(settings.output)
        if self.transport == "width_topic":
            qos = QoSProfile(
                history=QoSHistoryPolicy.KEEP_LAST,
                depth=1,
                reliability=QoSReliabilityPolicy.RELIABLE,
                durability=QoSDurabilityPolicy.VOLATILE,
            )
            from std_msgs.msg import Float64

            self._float64 = Float64
            self._pub = node.create_publisher(Float64, settings.width_topic, qos)
        elif self.transport == "franka_actions":
            from rclpy.action import ActionClient

            base = "/" + settings.node_name.strip("/")
            self._move_client = ActionClient(node, self._franka.Move, base + "/move")
            self._grasp_client = ActionClient(node, self._franka.Grasp, base + "/grasp")
        where = {
            "width_topic": f"std_msgs/Float64 on {settings.width_topic}",
            "franka_actions": f"franka_msgs actions /{settings.node_name.strip('/')}/move and /grasp",
            "none": "disabled",
        }[self.transport]
        self._log.info(
            f"gripper output: {where} ({decision.mode} decisions, >= {decision.min_interval} s apart)"
        )

    def _resolve_transport(self, output: str) -> str:
        if output in ("auto", "franka_actions"):
            try:
                import franka_msgs.action as franka_actions
            except ImportError as exc:
                if output == "franka_actions":
                    raise RuntimeError(
                        "gripper.output is 'franka_actions' but franka_msgs cannot be imported "
                        f"({exc}); source your franka_ros2 workspace or set gripper.output:=width_topic"
                    ) from exc
                return "width_topic"
            self._franka = franka_actions
            return "franka_actions"
        return output

    def submit(self, width: float, now: float | None = None) -> GripperCommand | None:
        """Offer the width commanded this tick; send a command if the decider says so. Never blocks."""
        if self.transport == "none":
            return None
        if now is None:
            import time

            now = (self._clock or time.monotonic)()
        with self._lock:
            command = self.decider.update(width, now)
            if command is None:
                return None
            if not self._send(command):
                self.decider.invalidate()
                return None
            return command

    def _send(self, command: GripperCommand) -> bool:
        if self._pub is not None:
            msg = self._float64()
            msg.data = float(command.width)
            self._pub.publish(msg)
            return True
        s = self.settings
        if command.kind == "close":
            client, goal = self._grasp_client, self._franka.Grasp.Goal()
            goal.width = float(command.width)
            goal.epsilon.inner = float(s.epsilon_inner)
            goal.epsilon.outer = float(s.epsilon_outer)
            goal.speed = float(s.speed)
            goal.force = float(s.force)
        else:
            client, goal = self._move_client, self._franka.Move.Goal()
            goal.width = float(command.width)
            goal.speed = float(s.speed)
        if not client.server_is_ready():
            self.failures += 1
            self._log.warning(
                f"gripper action {client._action_name} not available; will retry", throttle_duration_sec=5.0
            )
            return False
        future = client.send_goal_async(goal)
        future.add_done_callback(lambda f, c=command: self._on_goal_response(f, c))
        return True

    def _on_goal_response(self, future: Any, command: GripperCommand) -> None:
        handle = future.result()
        if handle is None or not handle.accepted:
            self.failures += 1
            self._log.warning(f"gripper {command.kind} to {command.width:.3f} m rejected; will retry")
            with self._lock:
                if self.decider.last_sent == command:
                    self.decider.invalidate()
            return
        handle.get_result_async().add_done_callback(lambda f, c=command: self._on_result(f, c))

    def _on_result(self, future: Any, command: GripperCommand) -> None:
        result = future.result().result
        if not getattr(result, "success", True):
            self.failures += 1
            self._log.warning(
                f"gripper {command.kind} to {command.width:.3f} m ended without success: "
                f"{getattr(result, 'error', '')!s} (not retried)"
            )

    def destroy(self) -> None:
        """Release the ROS entities."""
        for client in (self._move_client, self._grasp_client):
            if client is not None:
                client.destroy()
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
