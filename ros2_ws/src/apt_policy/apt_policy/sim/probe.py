"""The demo's own ROS 2 node: sends instructions and scenes, and records what the system does.

It talks to the other processes only over DDS, like an operator's tool would:

* publishes ``/apt_policy/instruction`` (std_msgs/String), ``/fake_camera/scene`` (scene JSON) and the
  episode markers on ``/apt_demo/episode`` (recorded by ``apt-record`` with everything else)
* calls services as an operator would between episodes: the node's ``~/stop`` and lifecycle
  ``~/change_state``, fake_franka's ``set_parameters_atomically`` (its simulation-only resets)
* follows ``/franka/joint_states``, ``/apt_policy/action_chunk``, ``/apt_policy/status``, the node's
  ``/diagnostics`` values, ``/fake_franka/violations`` and ``/apt_recorder/stats``: what the demo needs to
  run the episodes (is the node ready, has the arm settled, does the recorder record); the data of the
  report is the recorder's MCAP recording

Every callback only appends to lists under a lock.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import rclpy
from apt_msgs.msg import ActionChunk, PolicyStatus
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from apt_policy.robots.franka import FR3
from apt_policy.ros import conversions
from apt_policy.ros.qos import EVENTS, LATCHED

__all__ = ["DemoProbe"]


class DemoProbe:
    """rclpy node on its own context and executor thread (see the module docstring)."""

    def __init__(
        self,
        episode_topic: str = "/apt_demo/episode",
        scene_topics: tuple[str, ...] = ("/fake_camera/current_scene",),
    ) -> None:
        """``scene_topics``: the ``current_scene`` of every fake camera, the first the one ``scene`` shows."""
        self.context = rclpy.context.Context()
        # The demo owns Ctrl-C (KeyboardInterrupt -> stop every process): rclpy must not take SIGINT over.
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("apt_demo", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.clear()
        self.scenes: dict[str, dict[str, Any]] = {}  # current_scene topic -> the scene it last reported
        self._scene_topics = tuple(scene_topics)
        self.robot_report: dict[str, Any] = {}
        self.node_stats: dict[str, float] = {}
        self._clients: dict[str, Any] = {}
        self.recorder_stats: dict[str, Any] = {}
        n = self.node
        self.instruction_pub = n.create_publisher(String, "/apt_policy/instruction", EVENTS)
        self.scene_pub = n.create_publisher(String, "/fake_camera/scene", EVENTS)
        self.episode_pub = n.create_publisher(String, episode_topic, EVENTS)
        n.create_subscription(JointState, "/franka/joint_states", self._on_joints, EVENTS)
        n.create_subscription(ActionChunk, "/apt_policy/action_chunk", self._on_chunk, EVENTS)
        n.create_subscription(PolicyStatus, "/apt_policy/status", self._on_status, EVENTS)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, EVENTS)
        n.create_subscription(String, "/fake_franka/violations", self._json_into("robot_report"), LATCHED)
        n.create_subscription(String, "/apt_recorder/stats", self._json_into("recorder_stats"), 10)
        for topic in self._scene_topics:
            n.create_subscription(String, topic, lambda msg, t=topic: self._on_scene(msg, t), LATCHED)
        self._thread = threading.Thread(target=self._spin, name="apt-demo-probe", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context going away at shutdown
            if self.context.ok():
                raise

    # ------------------------------------------------------------------------------------------ records
    def clear(self) -> None:
        """Forget every sample (start of an episode)."""
        with getattr(self, "_lock", threading.Lock()):
            self.joints: list[tuple[float, np.ndarray]] = []
            self.chunks: list[tuple[float, float, str]] = []
            self.statuses: list[tuple[float, int, int, int]] = []
            self.status_instruction = ""
            self.status_fault = ""
            self.robot_report = {}
            self.node_stats = {}

    def _on_joints(self, msg: JointState) -> None:
        try:
            q = conversions.joint_positions(msg, FR3.joint_names)
        except conversions.ConversionError:
            return
        with self._lock:
            self.joints.append((time.monotonic(), np.asarray(q, dtype=np.float64)))

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self._lock:
            self.chunks.append((time.monotonic(), float(msg.inference_time_ms), str(msg.instruction)))

    def _on_status(self, msg: PolicyStatus) -> None:
        with self._lock:
            self.statuses.append(
                (time.monotonic(), int(msg.state), int(msg.safety_interventions), int(msg.missed_ticks))
            )
            self.status_instruction = str(msg.instruction)
            self.status_fault = str(msg.last_fault)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        values = conversions.node_diagnostics(msg)
        if values is not None:
            with self._lock:
                self.node_stats = values

    def _json_into(self, attribute: str) -> Any:
        """A String-JSON callback storing the decoded object in ``attribute`` (malformed JSON is ignored)."""

        def on_message(msg: String) -> None:
            try:
                value = json.loads(msg.data)
            except ValueError:
                return
            with self._lock:
                setattr(self, attribute, value)

        return on_message

    def recording(self, topics: tuple[str, ...]) -> bool:
        """Whether ``apt-record`` (its 1 Hz ``~/stats``) has written messages of every topic of ``topics``."""
        with self._lock:
            counts = self.recorder_stats.get("messages") or {}
        return all(int(counts.get(t, 0)) > 0 for t in topics)

    def _on_scene(self, msg: String, topic: str) -> None:
        try:
            scene = json.loads(msg.data)
        except ValueError:
            return
        with self._lock:
            self.scenes[topic] = scene

    @property
    def scene(self) -> dict[str, Any] | None:
        """The scene the first camera last reported (None before it did)."""
        with self._lock:
            return self.scenes.get(self._scene_topics[0])

    def scene_everywhere(self, seed: int) -> bool:
        """Whether every camera reports the scene of ``seed``."""
        with self._lock:
            return all((self.scenes.get(t) or {}).get("seed") == seed for t in self._scene_topics)

    # ----------------------------------------------------------------------------------------- actions
    def send_instruction(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))

    def send_episode_marker(self, marker: str) -> None:
        self.episode_pub.publish(String(data=marker))

    def send_scene(self, seed: int) -> None:
        self.scene_pub.publish(String(data=json.dumps({"seed": int(seed)})))

    def latest_status(self) -> tuple[float, int] | None:
        with self._lock:
            return (self.statuses[-1][0], self.statuses[-1][1]) if self.statuses else None

    def latest_joints(self) -> tuple[float, np.ndarray] | None:
        with self._lock:
            return self.joints[-1] if self.joints else None

    def joints_since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return [item for item in self.joints if item[0] >= t]

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 30.0) -> Any:
        """Call service ``name`` and wait for the response (the probe's executor thread spins it);
        TimeoutError when the service is missing or does not answer in ``timeout_s``."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        deadline = time.monotonic() + timeout_s
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service {name} is not available after {timeout_s:.0f} s")
            time.sleep(0.02)
        future = client.call_async(request)
        while not future.done():
            if time.monotonic() > deadline:
                forget = getattr(client, "remove_pending_request", None)  # guarded: not checked on Humble
                if forget is not None:
                    forget(future)
                raise TimeoutError(f"service {name} did not answer in {timeout_s:.0f} s")
            time.sleep(0.005)
        return future.result()

    def set_parameters(self, node: str, timeout_s: float = 30.0, **values: Any) -> tuple[bool, str]:
        """Set parameters of ``node`` (e.g. ``/fake_franka``) in one atomic call: (successful, reason)."""
        from rcl_interfaces.srv import SetParametersAtomically
        from rclpy.parameter import Parameter

        request = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        result = self.call(SetParametersAtomically, f"{node}/set_parameters_atomically", request, timeout_s)
        return bool(result.result.successful), str(result.result.reason)

    def trigger(self, name: str, timeout_s: float = 30.0) -> tuple[bool, str]:
        """A std_srvs/Trigger service (e.g. ``/apt_policy/stop``): (success, message)."""
        from std_srvs.srv import Trigger

        response = self.call(Trigger, name, Trigger.Request(), timeout_s)
        return bool(response.success), str(response.message)

    def change_state(self, node: str, transition_id: int, timeout_s: float = 120.0) -> bool:
        """A lifecycle transition of ``node`` (lifecycle_msgs/Transition id); True when it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=int(transition_id)))
        return bool(self.call(ChangeState, f"{node}/change_state", request, timeout_s).success)

    def subscriber_count(self, publisher: Any) -> int:
        return int(publisher.get_subscription_count())

    def shutdown(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)
