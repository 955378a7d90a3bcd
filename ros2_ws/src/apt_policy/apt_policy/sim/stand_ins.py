"""Stand-ins for tests and bring-up without a trained model or a robot, written once and shared.

* :class:`ScriptedPolicy` honours the Policy contract (runtime/policy.py) with actions computed by a
  function of the instruction and the time, a fixed inference delay and a switch to fail on purpose.
* :class:`RobotStandIn` is an in-process FR3 at rest at the ready pose (joint and gripper states at 200 Hz),
  an optional camera (raw frames at 30 Hz) and a recorder of what the policy node sends back: trajectories,
  chunks, statuses and gripper commands. It honours the topics and QoS of the real robot side.
* :class:`ProbeContext` is the set-up every out-of-process probe shares: its own rclpy context, a node and
  an executor spinning on a daemon thread, shut down by :meth:`ProbeContext.close`.
* :func:`policy_node_with_stand_in` is the in-process rig of the node tests: a policy node around a given
  policy (parameters from :func:`stand_in_parameters`) and a :class:`RobotStandIn`, spun together;
  :func:`wait_until` polls a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import rclpy
from apt_msgs.msg import ActionChunk, PolicyStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import JointTrajectory

from apt_policy.core.config import ActionSemantics
from apt_policy.robots.franka import FR3
from apt_policy.ros.qos import CAMERA, COMMANDS, EVENTS, SENSOR
from apt_policy.runtime.policy import PolicyInfo

JOINTS = tuple(FR3.joint_names)
READY = np.array(FR3.ready_pose, dtype=np.float64)
CAMERA_TOPIC = "/camera/camera/color/image_raw"

ActionFunction = Callable[[str, float], np.ndarray]  # (instruction, monotonic time) -> (horizon, 8)


def hold_ready(instruction: str, t: float, horizon: int = 10, gripper: float = 0.04) -> np.ndarray:
    """Every action at the ready pose with the gripper at ``gripper`` m."""
    return np.tile(np.append(READY, gripper), (horizon, 1))


class ScriptedPolicy:
    """A Policy whose chunk is ``actions(instruction, now)``; records (instruction, image mean) per call.

    Checks its inputs like a real backend would (image shape per camera, state length) and sleeps
    ``latency_s`` per call; ``fail = True`` makes ``predict`` raise.
    """

    def __init__(
        self,
        actions: ActionFunction = hold_ready,
        *,
        image_shape: tuple[int, int] = (24, 32),
        horizon: int = 10,
        dt: float = 0.05,
        latency_s: float = 0.02,
        model_id: str = "scripted",
    ) -> None:
        self.info = PolicyInfo(
            backend="scripted",
            model_id=model_id,
            cameras=("front",),
            image_size=image_shape,  # the node's self-check sends images of this size
            horizon=horizon,
            action_dim=8,
            action_names=(*JOINTS, "gripper"),
            state_names=(*JOINTS, "gripper"),
            dt=dt,
            action_semantics=ActionSemantics(arm="absolute", gripper="absolute"),
            steps=1,
        )
        self.actions = actions
        self.image_shape = image_shape
        self.latency_s = latency_s
        self.calls: list[tuple[str, float]] = []
        self.fail = False

    def warmup(self) -> None:
        pass

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        image = images["front"]
        if image.shape != (*self.image_shape, 3) or state.shape != (8,):
            raise ValueError(f"scripted policy got image {image.shape} and state {state.shape}")
        self.calls.append((instruction, float(image.mean())))
        time.sleep(self.latency_s)
        if self.fail:
            raise RuntimeError("scripted failure")
        actions = np.asarray(self.actions(instruction, time.monotonic()), dtype=np.float32)
        if actions.shape != (self.info.horizon, 8):
            raise ValueError(f"scripted actions have shape {actions.shape}")
        return actions


class RobotStandIn:
    """Arm + gripper state at the ready pose, a camera, and a recorder of what the policy node sends.

    Set ``camera_on = False`` to stop the frames, ``bad_image`` to publish that message instead of good
    frames, ``numbered_frames = True`` to fill each frame with its number mod 256 (black otherwise: a test
    can then tell which frame a policy got). Recordings: ``trajectories`` (receive time, JointTrajectory),
    ``chunks`` / ``chunk_times``, ``statuses`` and ``gripper_commands`` (widths, m).
    """

    def __init__(
        self,
        node: Node,
        *,
        camera_on: bool = True,
        image_shape: tuple[int, int] = (24, 32),
        finger_position: float = 0.02,
    ) -> None:
        self.node = node
        self.camera_on = camera_on
        self.bad_image: Image | None = None
        self.numbered_frames = False
        self.frames_sent = 0
        self.image_shape = image_shape
        self.finger_position = finger_position
        self.trajectories: list[tuple[float, JointTrajectory]] = []
        self.statuses: list[PolicyStatus] = []
        self.chunks: list[ActionChunk] = []
        self.chunk_times: list[float] = []
        self.gripper_commands: list[float] = []
        self.joints = node.create_publisher(JointState, "/franka/joint_states", SENSOR)
        self.fingers = node.create_publisher(JointState, "/franka_gripper/joint_states", SENSOR)
        self.camera = node.create_publisher(Image, CAMERA_TOPIC, CAMERA)  # reliable, as realsense-ros
        self.instruction = node.create_publisher(String, "/apt_policy/instruction", EVENTS)
        node.create_subscription(
            JointTrajectory, "/fr3_arm_controller/joint_trajectory", self._on_trajectory, COMMANDS
        )
        node.create_subscription(PolicyStatus, "/apt_policy/status", self.statuses.append, EVENTS)
        node.create_subscription(ActionChunk, "/apt_policy/action_chunk", self._on_chunk, EVENTS)
        node.create_subscription(Float64, "/franka_gripper/width_command", self._on_gripper, COMMANDS)
        node.create_timer(0.005, self._publish_state)
        node.create_timer(1 / 30, self._publish_image)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.trajectories.append((time.monotonic(), msg))

    def _on_chunk(self, msg: ActionChunk) -> None:
        self.chunk_times.append(time.monotonic())
        self.chunks.append(msg)

    def _on_gripper(self, msg: Float64) -> None:
        self.gripper_commands.append(msg.data)

    def _publish_state(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        joints = JointState(name=list(JOINTS), position=READY.tolist())
        joints.header.stamp = stamp
        self.joints.publish(joints)
        fingers = JointState(name=list(FR3.gripper_joint_names), position=[self.finger_position] * 2)
        fingers.header.stamp = stamp
        self.fingers.publish(fingers)

    def _publish_image(self) -> None:
        if self.bad_image is not None:
            self.camera.publish(self.bad_image)
        elif self.camera_on:
            h, w = self.image_shape
            self.frames_sent += 1
            fill = self.frames_sent % 256 if self.numbered_frames else 0
            msg = Image(height=h, width=w, encoding="rgb8", step=3 * w, data=bytes([fill]) * (h * 3 * w))
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.camera.publish(msg)

    def state(self) -> int | None:
        """The last PolicyStatus state received (None before the first)."""
        return self.statuses[-1].state if self.statuses else None

    def motion(self, since: float) -> float:
        """Peak-to-peak joint-1 position of the first trajectory point since ``since`` (monotonic)."""
        q = [m.points[0].positions[0] for t, m in list(self.trajectories) if t >= since]
        return (max(q) - min(q)) if q else float("nan")


class ProbeContext:
    """An rclpy node on its own context, spun by a SingleThreadedExecutor on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def start(self) -> None:
        """Start spinning (after the caller created its subscriptions and publishers)."""
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            if self.context.ok():  # errors after shutdown are the executor noticing it
                raise

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(5)


def stand_in_parameters(model_dir: Any, **overrides: Any) -> list[Any]:
    """The policy node's parameters for the in-process rig: a model path (the injected policy is used),
    chunks requested 4 actions before the end, and input ages a loaded CI machine keeps (the stand-in's
    200 Hz state arrives late there; only the camera age stays tight); ``overrides`` add or replace."""
    from rclpy.parameter import Parameter

    values: dict[str, Any] = {
        "model": str(model_dir),
        "chunk_request_threshold": 4,
        "max_state_age": 0.5,
        "max_gripper_age": 0.5,
        "max_skew": 0.5,
        **overrides,
    }
    return [Parameter(name, value=value) for name, value in values.items()]


@contextmanager
def policy_node_with_stand_in(policy: Any, parameters: Sequence[Any]) -> Iterator[tuple[Any, RobotStandIn]]:
    """(policy node around ``policy`` with ``parameters`` (rclpy Parameters), a RobotStandIn) on their own
    context, spun by one executor on a daemon thread; everything shut down on exit."""
    from apt_policy.ros.policy_node import make_policy_node

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = make_policy_node(policy=policy, context=ctx, parameter_overrides=list(parameters))
    probe = RobotStandIn(rclpy.create_node("probe", context=ctx))
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    executor.add_node(probe.node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        yield node, probe
    finally:
        node.shutdown()
        executor.shutdown()
        thread.join(5)
        node.destroy_node()
        probe.node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def wait_until(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms; AssertionError naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)
