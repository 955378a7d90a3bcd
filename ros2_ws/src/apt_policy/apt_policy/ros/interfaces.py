"""Operator interfaces of the policy node: instruction service and action, pause/resume/stop, gripper output,
in-process RealSense cameras. ``attach_interfaces(node)`` is called by ``PolicyNode``'s configure transition.

On the node (``~`` = ``/apt_policy``):

* ``~/set_instruction`` (apt_msgs/srv/SetInstruction) -- switch to an instruction; refused with the reason.
* ``~/follow_instruction`` (apt_msgs/action/FollowInstruction) -- follow an instruction for ``duration`` s
  (<= 0: until cancelled). Feedback (elapsed, chunks executed for this goal, node state) at
  ``interfaces.feedback_rate``. Ends SUCCEEDED when the duration elapses (the node then stops: hold, no
  instruction), CANCELED on cancel (the node stops at once), ABORTED with a message when a new goal, a
  ``~/instruction`` topic message, ``~/set_instruction`` or ``~/stop`` replaces the instruction, or on FAULT.
* ``~/pause``, ``~/resume``, ``~/stop`` (std_srvs/srv/Trigger) -- the node's pause/resume/stop hooks.
* ``~/reset`` (std_srvs/srv/Trigger) -- the way out of FAULT: back to IDLE (instruction cleared), refused with
  the reason unless a fresh joint state shows the arm at rest inside the safe range.

Threading: nothing here blocks the node's executor. The goal's execute callback is a coroutine that awaits an
rclpy Future; a timer in a ReentrantCallbackGroup publishes feedback and completes that Future when the goal
ends. The instruction listener (called from whatever thread changed the instruction) only records the change
under a lock; the timer acts on it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.task import Future

from apt_policy.control.controller import ControllerState
from apt_policy.control.gripper import GripperDecisionConfig
from apt_policy.ros.gripper_output import GripperOutput, GripperOutputSettings
from apt_policy.ros.params import InterfaceParams, ParameterError, declare
from apt_policy.ros.qos import SERVICES
from apt_policy.ros.realsense_camera import CameraNotFoundError, ColorProfile, RealSenseCamera, open_cameras

# PolicyStatus states: the controller's own enumeration (same numbers as apt_msgs/msg/PolicyStatus).
IDLE, RUNNING, HOLDING, PAUSED, FAULT = (
    ControllerState.IDLE,
    ControllerState.RUNNING,
    ControllerState.HOLDING,
    ControllerState.PAUSED,
    ControllerState.FAULT,
)


class InterfaceParameterError(ParameterError):
    """An invalid interface parameter; the message names it and says why (the node exits with it)."""


def gripper_configs(
    values: InterfaceParams, fallback_topic: str
) -> tuple[GripperOutputSettings, GripperDecisionConfig]:
    """Build the gripper transport and decision configs from checked parameter values."""
    try:
        settings = GripperOutputSettings(
            output=values.gripper_output,
            node_name=values.gripper_node_name,
            width_topic=values.gripper_width_topic or fallback_topic,
            speed=values.gripper_speed,
            force=values.gripper_force,
            epsilon_inner=values.gripper_epsilon_inner,
            epsilon_outer=values.gripper_epsilon_outer,
        )
        decision = GripperDecisionConfig(
            mode=values.gripper_decision,
            max_width=values.gripper_max_width,
            open_width=values.gripper_open_width,
            closed_width=values.gripper_closed_width,
            threshold=values.gripper_threshold,
            hysteresis=values.gripper_hysteresis,
            min_width_delta=values.gripper_min_width_delta,
            min_interval=values.gripper_min_interval,
        )
    except ValueError as exc:
        raise InterfaceParameterError(str(exc)) from exc
    return settings, decision


def realsense_serials(values: InterfaceParams) -> dict[str, str]:
    """``camera name -> serial`` from the parallel ``realsense.camera_names`` / ``serial_numbers`` lists."""
    names, serials = values.realsense_camera_names, values.realsense_serial_numbers
    if len(names) != len(serials):
        raise InterfaceParameterError(
            f"parameters 'realsense.camera_names' ({len(names)}) and 'realsense.serial_numbers' "
            f"({len(serials)}) must have the same length"
        )
    if len(set(names)) != len(names):
        raise InterfaceParameterError(f"parameter 'realsense.camera_names' has duplicates: {list(names)}")
    return dict(zip(names, serials, strict=True))


def _field(snapshot: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a status snapshot that is a mapping or an object."""
    if isinstance(snapshot, Mapping):
        return snapshot.get(name, default)
    return getattr(snapshot, name, default)


def _outcome(ret: Any, default: str) -> tuple[bool, str]:
    """Normalise a hook's return value (``(ok, message)``, ``bool`` or ``None``) to ``(ok, message)``."""
    if isinstance(ret, tuple) and len(ret) == 2:
        return bool(ret[0]), str(ret[1])
    if isinstance(ret, bool):
        return ret, default if ret else "refused"
    return True, default


@dataclass
class _Goal:
    """Book-keeping of one FollowInstruction goal."""

    handle: Any
    instruction: str
    duration: float
    started: float
    chunks_at_start: int
    done: Future[tuple[str, str]] = field(default_factory=Future)  # (outcome, message)
    replaced_by: str | None = None  # instruction that replaced ours (set by the listener)
    cancel_requested: bool = False
    finished: bool = False
    setting: bool = False  # our own set_instruction call is in progress


@runtime_checkable
class PolicyHooks(Protocol):
    """What the interfaces need of the policy node besides being an rclpy Node."""

    camera_names: tuple[str, ...]
    gripper_sink: Callable[[float, float], object] | None

    def set_instruction(self, text: str) -> tuple[bool, str]: ...
    def pause(self) -> tuple[bool, str]: ...
    def resume(self) -> tuple[bool, str]: ...
    def stop(self) -> tuple[bool, str]: ...
    def reset(self) -> tuple[bool, str]: ...
    def status_snapshot(self) -> dict[str, Any]: ...
    def add_instruction_listener(self, callback: Callable[[str, str], None]) -> None: ...
    def on_camera_frame(self, camera_name: str, image_rgb: Any, stamp_s: float) -> None: ...


class Interfaces:
    """The services, action server, gripper output and cameras attached to one policy node."""

    def __init__(self, node: Node) -> None:
        from apt_msgs.action import FollowInstruction
        from apt_msgs.srv import SetInstruction
        from std_srvs.srv import Trigger

        if not isinstance(node, PolicyHooks):
            raise TypeError(f"{type(node).__name__} lacks the policy node hooks the interfaces call")
        self.node = node
        self._log = node.get_logger()
        self._lock = threading.Lock()
        self._goal: _Goal | None = None
        self._action_type = FollowInstruction
        self.cameras: list[RealSenseCamera] = []
        self.gripper_output: GripperOutput | None = None

        values = declare(node, InterfaceParams, InterfaceParameterError)
        fallback_topic = (
            node.get_parameter("gripper_command_topic").value
            if node.has_parameter("gripper_command_topic")
            else "/franka_gripper/width_command"
        )
        settings, decision = gripper_configs(values, fallback_topic)
        serials = realsense_serials(values)
        try:
            profile = ColorProfile.parse(values.realsense_profile)
        except ValueError as exc:
            raise InterfaceParameterError(f"parameter 'realsense.profile': {exc}") from exc

        group = ReentrantCallbackGroup()
        self.services = [
            node.create_service(
                SetInstruction,
                "~/set_instruction",
                self._on_set_instruction,
                qos_profile=SERVICES,
                callback_group=group,
            ),
            node.create_service(
                Trigger, "~/pause", self._on_pause, qos_profile=SERVICES, callback_group=group
            ),
            node.create_service(
                Trigger, "~/resume", self._on_resume, qos_profile=SERVICES, callback_group=group
            ),
            node.create_service(Trigger, "~/stop", self._on_stop, qos_profile=SERVICES, callback_group=group),
            node.create_service(
                Trigger, "~/reset", self._on_reset, qos_profile=SERVICES, callback_group=group
            ),
        ]
        self.action_server = ActionServer(
            node,
            FollowInstruction,
            "~/follow_instruction",
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=group,
            goal_service_qos_profile=SERVICES,
            result_service_qos_profile=SERVICES,
            cancel_service_qos_profile=SERVICES,
        )
        self.timer = node.create_timer(1.0 / values.interfaces_feedback_rate, self._supervise, group)
        node.add_instruction_listener(self._on_instruction_changed)

        # The node calls gripper_sink(width_m, now_s) on every tick; ours decides when to command.
        dry_run = getattr(getattr(node, "params", None), "output_mode", "") == "none"
        if settings.output == "none" or (dry_run and settings.output == "auto"):
            # A dry run (output_mode none) moves nothing unless the gripper output is named explicitly.
            node.gripper_sink = None
        else:
            try:
                self.gripper_output = GripperOutput(node, settings, decision)
            except RuntimeError as exc:  # franka_actions requested but franka_msgs missing
                raise InterfaceParameterError(f"parameter 'gripper.output': {exc}") from exc
            node.gripper_sink = self.gripper_output.submit
        if serials:
            unknown = sorted(set(serials) - set(getattr(node, "camera_names", serials)))
            if unknown:
                raise InterfaceParameterError(
                    f"parameter 'realsense.camera_names': {unknown} are not model cameras "
                    f"{list(node.camera_names)}"
                )
            try:
                self.cameras = open_cameras(
                    serials,
                    profile,
                    node.on_camera_frame,
                    log_error=self._log_camera_error,
                )
            except (CameraNotFoundError, ValueError, ImportError) as exc:
                raise InterfaceParameterError(f"parameter 'realsense.serial_numbers': {exc}") from exc
            listing = ", ".join(f"{c.name}={c.serial}" for c in self.cameras)
            self._log.info(f"in-process RealSense cameras streaming {profile}: {listing}")
        node.context.on_shutdown(self.close)

    def _log_camera_error(self, message: str) -> None:
        self._log.error(message, throttle_duration_sec=2.0)

    # ---------------------------------------------------------------- services
    def _on_set_instruction(self, request: Any, response: Any) -> Any:
        response.accepted, response.message = self._call(
            lambda: self.node.set_instruction(request.instruction), "instruction set"
        )
        return response

    def _on_pause(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._call(self.node.pause, "paused: holding position")
        return response

    def _on_resume(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._call(self.node.resume, "resumed")
        return response

    def _on_stop(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._call(
            self.node.stop, "stopped: holding position, instruction cleared"
        )
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._call(self.node.reset, "fault cleared")
        return response

    def _call(self, hook: Any, default: str) -> tuple[bool, str]:
        try:
            return _outcome(hook(), default)
        except Exception as exc:  # a hook failure is reported to the caller, the node keeps running
            self._log.error(f"interface request failed: {exc!r}")
            return False, f"error: {exc}"

    # ---------------------------------------------------------------- action
    def _on_goal(self, goal: Any) -> GoalResponse:
        if not goal.instruction.strip():
            self._log.warning("FollowInstruction goal rejected: empty instruction")
            return GoalResponse.REJECT
        if not math.isfinite(goal.duration):
            self._log.warning(f"FollowInstruction goal rejected: duration {goal.duration} is not finite")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: Any) -> CancelResponse:
        with self._lock:
            goal = self._goal
            ours = goal is not None and goal.handle is goal_handle
            if goal is not None and ours:
                goal.cancel_requested = True
        if ours:
            self._call(self.node.stop, "")  # hold at once; the supervisor ends the goal
        return CancelResponse.ACCEPT

    async def _execute(self, goal_handle: Any) -> Any:
        request = goal_handle.request
        goal = _Goal(
            handle=goal_handle,
            instruction=request.instruction,
            duration=float(request.duration),
            started=time.monotonic(),
            chunks_at_start=self._chunks_executed(),
        )
        with self._lock:
            previous, self._goal = self._goal, goal
        if previous is not None:
            self._finish(previous, "abort", f"pre-empted by a new goal: {request.instruction!r}")
        goal.setting = True
        try:
            ok, message = self._call(
                lambda: self.node.set_instruction(request.instruction), "instruction set"
            )
        finally:
            goal.setting = False
        if not ok:
            self._finish(goal, "abort", f"instruction refused: {message}")
        else:
            self._log.info(f"following {request.instruction!r} for {goal.duration:g} s")
            self._publish_feedback(goal)
        kind, message = cast("tuple[str, str]", await goal.done)  # set by _finish
        Result = self._action_type.Result
        if kind == "succeed":
            goal_handle.succeed()
        elif kind == "cancel" and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return Result(success=(kind == "succeed"), message=message)

    def _finish(self, goal: _Goal, kind: str, message: str) -> None:
        """End ``goal`` (executor thread only): its execute coroutine resumes with ``(kind, message)``."""
        with self._lock:
            if goal.finished:
                return
            goal.finished = True
            if self._goal is goal:
                self._goal = None
        # one call site per severity: rclpy refuses a severity change at the same call site
        if kind == "succeed":
            self._log.info(f"goal {goal.instruction!r}: {message}")
        else:
            self._log.warning(f"goal {goal.instruction!r}: {message}")
        goal.done.set_result((kind, message))

    def _on_instruction_changed(self, old: str, new: str) -> None:
        with self._lock:
            goal = self._goal
            if goal is None or goal.finished:
                return
            if goal.setting:
                goal.instruction = new  # our own change, as the node stored it
            elif new.strip() != goal.instruction.strip():
                goal.replaced_by = new

    def _supervise(self) -> None:
        """Timer: end the goal when cancelled, replaced, faulted or timed out; else publish feedback."""
        try:
            self._supervise_once()
        except Exception as exc:  # an exception here would stop the node's executor: log it instead
            self._log.error(f"goal supervision failed: {exc!r}", throttle_duration_sec=2.0)

    def _supervise_once(self) -> None:
        with self._lock:
            goal = self._goal
        if goal is None or goal.finished:
            return
        elapsed = time.monotonic() - goal.started
        snapshot = self._snapshot()
        state = _field(snapshot, "state", IDLE)
        if goal.cancel_requested or goal.handle.is_cancel_requested:
            self._call(self.node.stop, "")
            self._finish(goal, "cancel", f"cancelled after {elapsed:.1f} s: holding position")
        elif goal.replaced_by is not None:
            by = goal.replaced_by
            reason = f"pre-empted by instruction {by!r}" if by else "stopped: instruction cleared"
            self._finish(goal, "abort", f"{reason} after {elapsed:.1f} s")
        elif state == FAULT:
            self._finish(goal, "abort", f"fault: {_field(snapshot, 'last_fault', '') or 'unknown'}")
        elif goal.duration > 0 and elapsed >= goal.duration:
            self._call(self.node.stop, "")
            self._finish(goal, "succeed", f"duration {goal.duration:g} s reached; holding position")
        else:
            self._publish_feedback(goal, snapshot, elapsed)

    def _publish_feedback(self, goal: _Goal, snapshot: Any = None, elapsed: float | None = None) -> None:
        snapshot = snapshot if snapshot is not None else self._snapshot()
        feedback = self._action_type.Feedback()
        feedback.elapsed = float(time.monotonic() - goal.started if elapsed is None else elapsed)
        feedback.chunks_executed = max(0, self._chunks_executed(snapshot) - goal.chunks_at_start)
        feedback.state = int(_field(snapshot, "state", IDLE))
        try:
            goal.handle.publish_feedback(feedback)
        except Exception as exc:  # goal no longer active (client gone): nothing to report to
            self._log.debug(f"feedback not published: {exc}")

    def _snapshot(self) -> Any:
        try:
            return self.node.status_snapshot()
        except Exception as exc:
            self._log.error(f"status_snapshot failed: {exc!r}", throttle_duration_sec=5.0)
            return {}

    def _chunks_executed(self, snapshot: Any = None) -> int:
        snapshot = snapshot if snapshot is not None else self._snapshot()
        value = _field(snapshot, "chunks_executed")
        if value is None:  # older node: count produced chunks instead
            value = _field(snapshot, "chunks_produced", 0)
        return int(value or 0)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the cameras (idempotent); ROS entities go with the node."""
        cameras, self.cameras = self.cameras, []
        for camera in cameras:
            camera.stop()


def attach_interfaces(node: Node) -> Interfaces:
    """Create the operator interfaces on ``node`` (see the module docstring); stored as ``node.interfaces``.

    Raises :class:`InterfaceParameterError` for invalid parameters and
    :class:`~apt_policy.ros.realsense_camera.CameraNotFoundError` when a configured RealSense is missing.
    """
    interfaces = Interfaces(node)
    setattr(node, "interfaces", interfaces)  # noqa: B010  (the node keeps them alive and closes them)
    return interfaces
