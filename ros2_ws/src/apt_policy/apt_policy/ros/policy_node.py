"""The ``apt_policy`` ROS 2 node: cameras + joint state + instruction in, safe arm commands out at fixed rate.

Threads (see docs/NODE.md):

* main thread      -- SingleThreadedExecutor: instruction, gripper state and compressed camera subscriptions
                      hand decoded data to the ObservationBuffer, the status timer publishes ~/status and
                      /diagnostics. Callbacks never wait on inference.
* ``apt-inference`` -- InferenceWorker: policy.predict on the freshest observation set, chunk -> controller;
                      the model itself runs in a child process (``inference_process``, runtime.ProcessPolicy).
* ``apt-stream``    -- the control core's fixed-rate loop on the monotonic clock, ``publish_lead`` before each
                      deadline: joint state, controller tick (schedule, blending, safety filter, watchdog),
                      serialised command, chunk requests; on the deadline: publish, gripper; then the newest
                      raw camera frames.

Everything that decides something lives in ``apt_policy.control``; this module converts and wires.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State as LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter

from apt_policy.control.clocks import ClockOffset
from apt_policy.control.controller import Command, ControllerState
from apt_policy.control.history import HistoryBuffer
from apt_policy.control.inference_worker import ChunkResult, InferenceWorker
from apt_policy.control.observations import FreshnessLimits, ObservationBuffer, ObservationSet
from apt_policy.control.realtime import GIL_SWITCH_INTERVAL_S, lock_memory, make_realtime
from apt_policy.control.self_check import SelfCheckResult, run_self_check, synthetic_images
from apt_policy.control.stats import RollingStats
from apt_policy.core.start_views import StartViews, live_cameras
from apt_policy.ros import conversions
from apt_policy.ros.control_setup import build_controller, build_loop, controller_config, execution_plan
from apt_policy.ros.outputs import GripperWidthOutput, PositionOutput, TrajectoryOutput
from apt_policy.ros.params import NODE_SPECS, NodeParams, ParameterError, check_update, declare
from apt_policy.ros.polling import PolledSubscription, helper_node
from apt_policy.ros.qos import CAMERA, EVENTS, SENSOR
from apt_policy.ros.spin import spin_node
from apt_policy.runtime.policy import History, Policy, PolicyInfo

NODE_NAME = "apt_policy"

REJECT_LOG_PERIOD_S = 5.0
HOLD_WAIT_S = 1.0  # deactivate: longest wait for the stream to send the hold before it stops


NODE_PARAMETER_NAMES = frozenset(s.name for s in NODE_SPECS)


class PolicyNode(LifecycleNode):
    """The policy node, a managed (lifecycle) node. ``policy`` may be injected (in-process use), else
    ``load_policy(model, backend)`` when it is configured.

    Construction declares and validates the parameters and creates ~/status and /diagnostics, nothing else:
    no model, no process, no thread. The transitions (``~/change_state``, or :meth:`autostart`):

    * configure -- load the model (its process), build the controller, inputs, outputs and operator
      interfaces, warm up, self-check (a prediction on a synthetic observation: finite, inside the joint
      limits; latency logged and in the status). A failure releases everything and stays unconfigured.
    * activate -- start the inference worker and the command stream (and the ``instruction`` parameter).
    * deactivate -- hold (pause: braking within the limits, the last look-ahead ends at rest), then stop
      the stream and the worker; activate resumes the paused instruction.
    * cleanup / shutdown -- release everything: interfaces, subscriptions, publishers, the inference process.
    """

    _poll_node: Node | None = None  # the stream thread's helper node, made at configure (see polling.py)

    def __init__(self, policy: Policy | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.params: NodeParams = declare(self, NodeParams)
        if self.params.instruction:
            problem = instruction_problem(self.params.instruction, self.params.max_instruction_bytes)
            if problem:
                raise ParameterError(f"parameter 'instruction': {problem}")
        self._injected_policy = policy
        self._lock = threading.Lock()  # listeners, counters shared between threads
        self._instruction_lock = threading.Lock()  # keeps controller and worker epochs in the same order
        self._listeners: list[Callable[[str, str], None]] = []
        self._rejections: dict[str, int] = {}
        self._last_reject_log: dict[tuple[str, str], float] = {}
        self._last_inference_error = ""
        self._transition_error: BaseException | None = None  # why the last transition failed
        self._self_check: SelfCheckResult | None = None
        self._paused_by_deactivate = False
        self._memory_locked = False  # mlockall is per process and lasts: once
        self._configured_entities: dict[str, set[Any]] = {}
        self._configured = False
        self._owns_policy = False
        self._poll_node: Node | None = None
        self._camera_pollers: list[tuple[Callable[[Any], None], PolledSubscription]] = []
        self._joint_poller: PolledSubscription | None = None
        self._parameters_ready = False  # True once every parameter (the interfaces' too) is declared
        self._last_chunk_id = 0  # of the workers replaced so far: ids continue over the node's lifetime
        self._ros_offset = ClockOffset(self._ros_now)  # stamps of trajectories planned on the monotonic clock
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._make_status_outputs()
        self._status_timer = self.create_timer(1.0 / self.params.status_rate, self._publish_status)
        self._diag_every = max(1, round(self.params.status_rate))
        self._status_count = 0
        self._diag_mark = (0, 0)  # missed ticks, dropped commands at the last /diagnostics
        self._parameters_ready = True

    # -- lifecycle ------------------------------------------------------------------------------------------

    def autostart(self) -> None:
        """Configure and activate now (``autostart``: the one-command start). Raises why a step failed:
        :class:`ParameterError` for a parameter that does not fit the model, else the model's error."""
        for step, trigger in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
            if trigger() != TransitionCallbackReturn.SUCCESS:
                error = self._transition_error
                raise error if error is not None else RuntimeError(f"lifecycle transition {step} failed")

    @property
    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active, finalized (or a transition state while one runs)."""
        return str(self._state_machine.current_state[1])

    @property
    def done(self) -> bool:
        """Finalized (shut down): nothing is left to spin for."""
        return self.lifecycle_state == "finalized"

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure, release_on_failure=True)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._release)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        def shutdown() -> None:
            if self._streaming():
                self._deactivate()
            self._release()

        return self._transition("shutdown", shutdown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()  # back to unconfigured with nothing held
        return TransitionCallbackReturn.SUCCESS

    def _transition(
        self, name: str, step: Callable[[], None], release_on_failure: bool = False
    ) -> TransitionCallbackReturn:
        """Run ``step``; an exception is logged, kept for :meth:`autostart`, and fails the transition."""
        self._transition_error = None
        try:
            step()
        except Exception as exc:
            self._transition_error = exc
            self.get_logger().error(f"lifecycle {name} failed: {type(exc).__name__}: {exc}")
            if release_on_failure:
                self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"lifecycle {name}: done")
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """Everything the stream needs, without starting it (see the class docstring)."""
        self._configured_entities = _entities(self)
        p = self.params
        policy = self._injected_policy
        self._owns_policy = policy is None
        if policy is None:
            self.get_logger().info(f"loading the model {p.model} ({p.backend})")
            policy = _load_policy(p)
        if p.simulated_latency:
            from apt_policy.runtime.latency import SimulatedLatencyPolicy, parse_latency

            profile = parse_latency(p.simulated_latency)
            self.get_logger().warning(
                f"SIMULATION ONLY: every inference is delayed to the latency profile {profile.describe()} "
                "(parameter simulated_latency); never use this on a robot"
            )
            policy = SimulatedLatencyPolicy(policy, profile)
        self.policy = policy
        info = policy.info
        self.info = info
        self.camera_names = self._camera_mapping(info)
        self.controller, self.profile = build_controller(p, info)
        self.execution = execution_plan(p, info)
        if self.execution.note:
            self.get_logger().warning(f"chunk_execution {p.chunk_execution}: {self.execution.note}")
        self.joint_names = tuple(self.profile.joint_names)
        self.finger_names = tuple(self.profile.gripper_joint_names)
        self.use_gripper_state = len(info.state_names) == len(self.joint_names) + 1
        if len(info.state_names) not in (len(self.joint_names), len(self.joint_names) + 1):
            raise ParameterError(
                f"model state has {len(info.state_names)} values {list(info.state_names)}; robot "
                f"'{p.robot}' gives {len(self.joint_names)} joints (+1 gripper width)"
            )
        self.observations = ObservationBuffer(
            self.camera_names,
            joint_dim=len(self.joint_names),
            use_gripper=self.use_gripper_state,
            watchdog=self.controller.config.watchdog,  # the controller's watchdog judges both
            limits=FreshnessLimits(max_skew_s=p.max_skew),
        )
        # stateful policies (info.history_steps > 0): the commands actually sent, at the policy's dt; a model
        # with start views (core.start_views) needs it too: its episodes say when to take them again
        n_state, k = len(info.state_names), info.history_steps
        self.start_views = StartViews(info.cameras)
        stateful = k > 0 or bool(self.start_views)
        self.history = HistoryBuffer(k, n_state, info.action_dim, info.dt) if stateful else None
        self.tick_durations = RollingStats(1000)  # s, compute time of each stream tick
        self._rt_applied = False
        self._last_state: ControllerState | None = None  # controller state of the previous tick
        self.worker = self._make_worker(first_chunk_id=self._last_chunk_id + 1)
        self._make_publishers()
        self._make_subscriptions()
        self.get_logger().info(
            f"model {info.model_id} ({info.backend}): cameras {list(self.camera_names)} <- "
            f"{list(p.camera_topics)}, horizon {info.horizon} x {info.action_dim}, dt {info.dt} s; "
            f"output {p.output_mode} at {p.control_rate} Hz; chunk execution {self.execution.strategy}"
        )
        self.get_logger().info("warming up the policy")
        self.policy.warmup()
        self._run_self_check()
        self.loop = build_loop(p, self._tick, self._on_tick_error, self._on_stall)
        self._attach_interfaces()  # before any thread runs: a failure here leaves nothing behind
        self._configured = True
        # Everything built so far lives while configured: freezing it keeps the garbage collector's full
        # passes short (they hold the GIL; a 24 ms stall in a stream trace went away with this).
        gc.collect()
        gc.freeze()

    def _make_worker(self, first_chunk_id: int = 1) -> InferenceWorker:
        return InferenceWorker(
            predict=self._predict,
            observe=self.observations.freshest,
            on_chunk=self._on_chunk,
            on_error=self._on_inference_error,
            expected_shape=(self.info.horizon, self.info.action_dim),
            timeout_s=self.params.inference_timeout,
            prefix=self._rtc_prefix if self.execution.rtc else None,
            history=self._history_now if self.history is not None else None,
            first_chunk_id=first_chunk_id,
        )

    def _predict(self, images: Any, state: Any, instruction: str, **kwargs: Any) -> np.ndarray:
        """``policy.predict`` with the episode's start views added to the live frames (worker thread)."""
        if self.start_views and self.history is not None:
            images = self.start_views.add(images, self.history.episode)
        return self.policy.predict(images, state, instruction, **kwargs)

    def _history_now(self) -> History:
        assert self.history is not None
        snap = self.history.snapshot()
        return History(snap.states, snap.actions, snap.valid)

    def _record_history(self, t: float, joints: Any, command: Command, sent: bool) -> None:
        """A released command (after the safety filter) with the state it was computed from
        (``HistoryBuffer.on_command``: any state but RUNNING starts the history again). A command planned
        before a new instruction and sent after it (the instruction came between the tick and its send)
        belongs to the episode before: not kept, and it does not begin another episode (which would take
        the start views again after the new instruction's first prediction)."""
        if self.history is None:
            return
        gripper = self.observations.latest_gripper()
        sem = self.info.action_semantics
        running = command.state == ControllerState.RUNNING and command.epoch == self.controller.epoch
        self.history.on_command(
            t,
            running,
            sent,
            None if joints is None else joints.value,
            None if gripper is None else gripper.value,
            command.positions,
            command.velocities,
            command.gripper,
            sem.arm,
            sem.arm_scale,
        )

    def _run_self_check(self) -> None:
        """A prediction on a synthetic observation (control/self_check.py); a failure fails configure."""
        state = self.profile.ready_pose.astype(np.float64)
        if self.use_gripper_state:
            state = np.append(state, self.profile.max_gripper_width)
        result = run_self_check(
            self.policy.predict,
            synthetic_images(tuple(self.info.cameras), self.info.image_size),  # start views included
            state,
            (self.info.horizon, self.info.action_dim),
            self.controller.layout,
            self.controller.limits,
        )
        self._self_check = result
        if not result.ok:
            raise RuntimeError(f"self-check: {result.problem}")
        self.get_logger().info(
            f"self-check passed: a chunk of {self.info.horizon} finite actions inside the joint limits in "
            f"{result.latency_ms:.1f} ms"
        )

    def _activate(self) -> None:
        """Start inference and the command stream; a paused instruction (deactivate) resumes."""
        if self.controller.instruction:
            self.worker.set_instruction(self.controller.instruction, self.controller.epoch)
        self.worker.start()
        self._lock_memory()
        self.loop.start()
        if self._paused_by_deactivate:
            self._paused_by_deactivate = False
            self.resume()
        elif self.params.instruction and not self.controller.instruction:
            ok, why = self.set_instruction(self.params.instruction)
            if not ok:
                raise ParameterError(f"parameter 'instruction': {why}")

    def _streaming(self) -> bool:
        loop = getattr(self, "loop", None) if self._configured else None
        return loop is not None and loop.running

    def _deactivate(self) -> None:
        """Hold, then stop: the stream sends the braking hold (its look-ahead ends at rest, which the arm's
        controller then keeps) before it stops; a fresh, unstarted worker and loop wait for activate, which
        re-synchronises with the arm where it is then (at rest)."""
        if self.controller.pause():
            self._paused_by_deactivate = True
            self.get_logger().info("deactivating: holding position")
        sent = self.loop.ticks
        deadline = time.monotonic() + HOLD_WAIT_S
        while self.loop.ticks < sent + 2 and self.loop.running and time.monotonic() < deadline:
            time.sleep(self.params.period_s / 2)  # two ticks: the last message sent is the hold's
        self.loop.stop()
        # The arm may be moved while nothing is streamed (another controller, by hand): activate starts from
        # where it is then, at rest, not from the plan it held here
        self.controller.resynchronise("deactivated")
        self.worker.stop(timeout_s=2.0)
        # ActionChunk ids stay unique over the node's lifetime (a recording pairs chunks and inputs by them)
        self._last_chunk_id = self.worker.last_chunk_id
        self.worker = self._make_worker(first_chunk_id=self._last_chunk_id + 1)
        self.loop = build_loop(self.params, self._tick, self._on_tick_error)

    def _release(self) -> None:
        """Back to unconfigured: stop what runs, close the interfaces and the inference process, destroy
        every ROS entity made since configure (and the poll node). Safe at any point of a configure."""
        self._configured = False
        interfaces = self.__dict__.pop("interfaces", None)
        if interfaces is not None:
            interfaces.close()
        loop = self.__dict__.pop("loop", None)
        if loop is not None:
            loop.stop()
        worker = self.__dict__.pop("worker", None)
        if worker is not None:
            worker.stop(timeout_s=2.0)
            self._last_chunk_id = worker.last_chunk_id
        policy = self.__dict__.pop("policy", None)
        close = getattr(policy, "close", None)
        if close is not None and self._owns_policy:
            close()  # the inference process (ProcessPolicy) and its shared memory file
        _destroy_new_entities(self, self._configured_entities)
        self._configured_entities = {}
        poll_node, self._poll_node = self._poll_node, None
        if poll_node is not None:
            poll_node.destroy_node()
        self._camera_pollers, self._joint_poller = [], None
        self._paused_by_deactivate = False

    # -- setup --------------------------------------------------------------------------------------------

    def _camera_mapping(self, info: PolicyInfo) -> tuple[str, ...]:
        topics = self.params.camera_topics
        live = live_cameras(info.cameras)  # start views are filled by the node, not by a topic
        names = self.params.camera_names or live
        if len(names) != len(topics):
            raise ParameterError(
                f"parameter 'camera_topics' has {len(topics)} topics but the model has cameras "
                f"{list(live)}: set camera_names to map each topic to a model camera"
            )
        if set(names) != set(live):
            raise ParameterError(
                f"parameter 'camera_names' {list(names)} does not match the model's cameras "
                f"{list(live)}"
                + (
                    f" (its start views {sorted(set(info.cameras) - set(live))} need no topic)"
                    if len(live) < len(info.cameras)
                    else ""
                )
            )
        return tuple(names)

    def _make_publishers(self) -> None:
        from apt_msgs.msg import ActionChunk, ChunkInputs

        p = self.params
        self.arm_output: TrajectoryOutput | PositionOutput | None = None
        if p.output_mode == "joint_trajectory":
            self.arm_output = TrajectoryOutput(self, p.trajectory_topic, self.joint_names)
        elif p.output_mode == "joint_position":
            self.arm_output = PositionOutput(self, p.position_command_topic)
        self.gripper_output = GripperWidthOutput(
            self, p.gripper_command_topic, self.profile.max_gripper_width
        )
        # The interfaces module may replace this (franka_gripper actions); called with (width_m, now_s).
        self.gripper_sink: Callable[[float, float], object] | None = self.gripper_output
        self._chunk_pub = self.create_publisher(ActionChunk, "~/action_chunk", EVENTS)
        self._chunk_msg_type = ActionChunk
        # with every chunk: its RTC prefix and executed-step history (what apt-replay needs beyond the
        # recorded observation)
        self._inputs_pub = self.create_publisher(ChunkInputs, "~/chunk_inputs", EVENTS)
        self._inputs_msg_type = ChunkInputs

    def _make_status_outputs(self) -> None:
        """~/status and /diagnostics: in every lifecycle state (they report it)."""
        from apt_msgs.msg import PolicyStatus
        from diagnostic_msgs.msg import DiagnosticArray

        self._status_pub = self.create_publisher(PolicyStatus, "~/status", EVENTS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", EVENTS)
        self._status_msg_type = PolicyStatus

    def _make_subscriptions(self) -> None:
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import String

        p = self.params
        poll_node: Node = self  # replaced by the poll node when polling is on (only then used)
        if p.poll_joint_states or p.poll_cameras:  # read by the stream thread (see ros/polling.py)
            poll_node = self._poll_node = helper_node(self, "poll")  # survives a launch file's name=
        self._camera_pollers = []
        camera_qos = CAMERA if p.camera_reliability == "reliable" else SENSOR
        for name, topic in zip(self.camera_names, p.camera_topics, strict=True):
            compressed = topic.rstrip("/").endswith("/compressed")
            msg_type = CompressedImage if compressed else Image
            # Raw images (serialised bytes, read in place by ros/image_cdr.py): rclpy's own conversion of a
            # 640x480 frame holds the GIL for ~0.6 ms, which would delay the command stream.
            callback = self._camera_callback(name, topic, compressed)
            if p.poll_cameras and not compressed:  # JPEG decoding (ms) stays off the stream thread
                poller = PolledSubscription(poll_node, msg_type, topic, camera_qos, raw=True)
                self._camera_pollers.append((callback, poller))
            else:
                self.create_subscription(msg_type, topic, callback, camera_qos, raw=not compressed)
        self._joint_poller = None
        if p.poll_joint_states:
            self._joint_poller = PolledSubscription(poll_node, JointState, p.joint_states_topic, SENSOR)
        else:
            self.create_subscription(JointState, p.joint_states_topic, self._on_joint_state, SENSOR)
        if self.use_gripper_state:
            self.create_subscription(JointState, p.gripper_states_topic, self._on_gripper_state, SENSOR)
        self.create_subscription(String, "~/instruction", self._on_instruction_msg, EVENTS)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validate and apply a run-time parameter change (all or nothing); refusals carry the reason."""
        from rcl_interfaces.msg import SetParametersResult

        # Parameters of others (the interfaces declaring theirs, rclpy's own) are theirs to check; read-only
        # ones are refused by rclpy before this callback.
        changes = {p.name: p.value for p in parameters if p.name in NODE_PARAMETER_NAMES}
        if not self._parameters_ready:
            return SetParametersResult(successful=True)  # still declaring (interfaces)
        if any(p.name == "use_sim_time" for p in parameters):
            reason = (
                "use_sim_time cannot change at run time: the command stream runs on the monotonic clock and "
                "stamps on the ROS clock chosen at start; restart the node with it set"
            )
            self.get_logger().warning(f"parameter change refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        if not changes:
            return SetParametersResult(successful=True)
        configured = self._configured
        try:
            moving = configured and self.controller.state == ControllerState.RUNNING
            new = check_update(self.params, changes, moving=moving)
            if configured:
                config, _ = controller_config(new, self.info, self.profile)
        except ParameterError as exc:
            self.get_logger().warning(f"parameter change refused: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        problem = self.controller.reconfigure(config) if configured else None
        if problem is not None:
            self.get_logger().warning(f"parameter change refused: {problem}")
            return SetParametersResult(successful=False, reason=problem)
        old, self.params = self.params, new
        for name in changes:
            attr = name
            self.get_logger().info(f"parameter {name}: {getattr(old, attr)!r} -> {getattr(new, attr)!r}")
        return SetParametersResult(successful=True)

    def _attach_interfaces(self) -> None:
        """Services, the FollowInstruction action, the gripper output and in-process cameras."""
        from apt_policy.ros.interfaces import attach_interfaces

        attach_interfaces(self)

    # -- inputs (executor thread) -------------------------------------------------------------------------

    def _camera_callback(self, camera: str, topic: str, compressed: bool) -> Callable[[Any], None]:
        decode = _compressed_to_rgb if compressed else _raw_image_to_rgb

        def callback(msg: Any) -> None:
            now = time.monotonic()
            try:
                rgb, stamp_s = decode(msg)
            except conversions.ConversionError as exc:
                self.observations.clear_camera(camera)  # never act on an older frame of a broken stream
                self._reject(topic, str(exc))
                return
            try:
                self.observations.put_image(camera, rgb, stamp_s, now, sensor_now_s=self._ros_now())
            except ValueError as exc:  # e.g. stamped seconds away from this node's clock
                self._reject(topic, str(exc))

        return callback

    def on_camera_frame(self, camera_name: str, image_rgb: np.ndarray, stamp_s: float) -> None:
        """In-process camera frames (e.g. pyrealsense2) enter the same path as topic frames."""
        try:
            self.observations.put_image(
                camera_name, image_rgb, stamp_s, time.monotonic(), sensor_now_s=self._ros_now()
            )
        except (KeyError, ValueError) as exc:
            self._reject(f"camera:{camera_name}", str(exc))

    def _ros_now(self) -> float:
        """This node's ROS clock (s): what sensor stamps are compared with."""
        return float(self.get_clock().now().nanoseconds) * 1e-9

    def _on_joint_state(self, msg: Any) -> None:
        now = time.monotonic()
        try:
            q = conversions.joint_positions(msg, self.joint_names)
            self.observations.put_joints(q, conversions.stamp_to_s(msg.header.stamp), now)
        except (conversions.ConversionError, ValueError) as exc:
            self._reject(self.params.joint_states_topic, str(exc))

    def _on_gripper_state(self, msg: Any) -> None:
        now = time.monotonic()
        try:
            width = conversions.gripper_width(msg, self.finger_names)
            self.observations.put_gripper(width, conversions.stamp_to_s(msg.header.stamp), now)
        except (conversions.ConversionError, ValueError) as exc:
            self._reject(self.params.gripper_states_topic, str(exc))

    def _on_instruction_msg(self, msg: Any) -> None:
        ok, why = self.set_instruction(msg.data)
        if not ok:
            self._reject("~/instruction", why)

    def _reject(self, source: str, reason: str) -> None:
        """Count a rejected input and log it (each distinct reason at most every REJECT_LOG_PERIOD_S)."""
        now = time.monotonic()
        with self._lock:
            self._rejections[source] = self._rejections.get(source, 0) + 1
            key = (source, reason[:80])
            if now - self._last_reject_log.get(key, -np.inf) < REJECT_LOG_PERIOD_S:
                return
            if len(self._last_reject_log) > 1000:  # reasons with varying numbers: keep the table bounded
                self._last_reject_log.clear()
            self._last_reject_log[key] = now
            count = self._rejections[source]
        self.get_logger().warning(f"rejected input from {source}: {reason} ({count} rejected so far)")

    # -- hooks for the interfaces (any thread) ------------------------------------------------------------

    def set_instruction(self, text: str) -> tuple[bool, str]:
        """Follow ``text`` from now on (pre-empts the current instruction). Returns (accepted, message)."""
        problem = instruction_problem(text, self.params.max_instruction_bytes)
        if problem:
            return False, problem
        text = text.strip()
        with self._instruction_lock:
            old = self.controller.instruction
            try:
                epoch = self.controller.set_instruction(text)
            except ValueError as exc:
                return False, str(exc)
            # a new instruction is a new episode for a stateful policy: reset before the worker can predict
            # for it, so that its first prediction starts the episode (history, start views)
            if self.history is not None:
                self.history.reset()
            self.worker.set_instruction(text, epoch)
            paused = self.controller.state == ControllerState.PAUSED
        self.get_logger().info(f"instruction: {text!r} (epoch {epoch})" + (" while paused" if paused else ""))
        self._notify(old, text)
        if not getattr(self.policy, "alive", True):  # never claim to follow while inference is down
            return True, f"accepted {text!r}: holding, the inference process is down (being restarted)"
        if paused:  # nothing moves until resume: say so rather than "following"
            return True, f"accepted {text!r} while paused: holding until ~/resume, then following it"
        if not self._streaming():
            return (
                True,
                f"accepted {text!r}: not streaming (lifecycle {self.lifecycle_state}); followed on activate",
            )
        return True, f"following {text!r}"

    def pause(self) -> tuple[bool, str]:
        """Hold (braking within limits) until resume(); buffered chunks are dropped."""
        if self.controller.pause():
            self.get_logger().info("paused")
            return True, "paused: holding position"
        return False, f"nothing to pause in state {self.controller.state.name}"

    def resume(self) -> tuple[bool, str]:
        if self.controller.resume():
            self.worker.request()
            self.get_logger().info("resumed")
            return True, "resumed: waiting for a fresh chunk"
        return False, f"not paused (state {self.controller.state.name})"

    def stop(self) -> tuple[bool, str]:
        """Hold position and clear the instruction."""
        with self._instruction_lock:
            old = self.controller.instruction
            epoch = self.controller.stop()
            self.worker.set_instruction(None, epoch)
        self.get_logger().info("stopped: holding, no instruction")
        self._notify(old, "")
        return True, "stopped: holding position, instruction cleared"

    def reset(self) -> tuple[bool, str]:
        """The way out of FAULT (``~/reset``): back to IDLE (instruction cleared), restarting from the
        measured position, only with a fresh joint state at rest inside the safe range (the controller
        decides)."""
        with self._instruction_lock:
            old = self.controller.instruction
            ok, why = self.controller.reset()
            if not ok:
                return False, why
            self.worker.set_instruction(None, self.controller.epoch)
            revive = getattr(self.policy, "revive", None)  # an inference process given up on: try again
            if revive is not None and getattr(self.policy, "down", None) is not None:
                revive()
        self.get_logger().warning(f"reset by the operator: {why}; IDLE")
        self._notify(old, "")
        return True, why

    def _notify(self, old: str, new: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(old, new)
            except Exception as exc:  # a listener must not break instruction handling
                self.get_logger().error(f"instruction listener failed: {type(exc).__name__}: {exc}")

    def add_instruction_listener(self, callback: Callable[[str, str], None]) -> None:
        """``callback(old, new)`` on every instruction change ("" = none); called from the changing thread."""
        with self._lock:
            self._listeners.append(callback)

    def status_snapshot(self) -> dict[str, Any]:
        """State (apt_msgs/PolicyStatus constant), instruction, counters, last fault, lifecycle state and
        self-check. Unconfigured (nothing loaded): IDLE, zero counters, ``last_fault`` saying why."""
        lifecycle = self._lifecycle_fields()
        if not self._configured:
            return _unconfigured_snapshot(lifecycle)
        try:
            snap = self._configured_snapshot()
        except AttributeError:
            # _release clears _configured, then drops the loop, worker, ...: a read on another thread that
            # passed the check above can find them gone (it killed the executor's spin thread in a CI run)
            if self._configured:
                raise
            return _unconfigured_snapshot(self._lifecycle_fields())
        snap.update(lifecycle)
        if lifecycle["lifecycle_state"] != "active" and not snap["last_fault"]:
            snap["last_fault"] = lifecycle["lifecycle_reason"]
        return snap

    def _lifecycle_fields(self) -> dict[str, Any]:
        state = self.lifecycle_state
        check = self._self_check
        error = self._transition_error
        reason = {"unconfigured": "lifecycle unconfigured: no model loaded, not streaming"}.get(
            state, f"lifecycle {state}: not streaming" if state != "active" else ""
        )
        if error is not None:
            reason = f"{reason} (last transition failed: {type(error).__name__}: {error})".strip()
        return {
            "lifecycle_state": state,
            "lifecycle_reason": reason,
            "self_check": "not run" if check is None else ("passed" if check.ok else check.problem),
            "self_check_ms": float("nan") if check is None else check.latency_ms,
        }

    def _configured_snapshot(self) -> dict[str, Any]:
        st = self.controller.status()
        lat = np.array(self.worker.latencies_s) * 1e3
        snap: dict[str, Any] = {
            "state": int(st.state),
            "state_name": st.state.name,
            "reason": st.reason,
            "instruction": st.instruction,
            "epoch": st.epoch,
            "actions_left": st.actions_left,
            "chunks_executed": st.chunks_accepted,
            "chunks_refused": st.chunks_refused,
            "last_refusal": st.last_refusal,
            "safety_interventions": st.safety_interventions,
            "interventions_by_limit": {k: dict(v) for k, v in st.interventions_by_limit.items()},
            "last_fault": st.last_fault,
            "commands_dropped": st.commands_dropped,
            "last_drop": st.last_drop,
            "chunks_produced": self.worker.chunks_produced,
            "chunks_discarded": self.worker.discarded_stale_epoch,
            "inference_failures": self.worker.failures,
            "inference_restarts": int(getattr(self.policy, "restarts", 0)),
            "inference_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "inference_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            "ticks": self.loop.ticks,
            "missed_ticks": self.loop.missed_ticks,
            "stream_stalls": self.loop.stalls,
            "control_rate_hz": self.loop.rate.rate(),
            "tick_errors": self.loop.errors,
            "tick_lateness_p99_ms": self.loop.jitter.p99 * 1e3,
            "send_lateness_p99_ms": self.loop.send_lateness.p99 * 1e3,
            "tick_compute_p99_ms": self.tick_durations.p99 * 1e3,
            "clock_reads_retried": self._ros_offset.interrupted,
            "backend": self.info.backend,
            "model_id": self.info.model_id,
            "chunk_execution": self.execution.strategy,
            **self.controller.chunking_status(),
        }
        with self._lock:
            snap["rejected_inputs"] = dict(self._rejections)
            snap["last_inference_error"] = self._last_inference_error
        return snap

    # -- worker callbacks (inference thread) --------------------------------------------------------------

    def _rtc_prefix(self, obs: ObservationSet) -> np.ndarray | None:
        """The committed prefix for this observation (real-time chunking; decided by the controller)."""
        return self.controller.rtc_prefix(obs.t_obs, obs.state, self.info.action_dim)

    def _on_chunk(self, result: ChunkResult) -> None:
        decision = self.controller.on_chunk(result, time.monotonic())
        if not decision.accepted:
            self.get_logger().warning(f"chunk {result.chunk_id} refused: {decision.reason}")
            return
        msg = self._chunk_msg_type()
        conversions.fill_action_chunk(
            msg,
            stamp_s=result.stamp_s,
            chunk_id=result.chunk_id,
            instruction=result.instruction,
            action_names=self.info.action_names,
            dt=self.info.dt,
            actions=result.actions,
            inference_ms=result.inference_s * 1e3,
            backend=self.info.backend,
        )
        inputs = self._inputs_msg_type()
        conversions.fill_chunk_inputs(
            inputs,
            stamp_s=result.stamp_s,
            chunk_id=result.chunk_id,
            action_dim=self.info.action_dim,
            state_dim=len(self.info.state_names),
            state=result.state,
            prefix=result.prefix,
            history=result.history,
        )
        if self.context.ok():  # a chunk finishing during shutdown is not published
            self._inputs_pub.publish(inputs)  # first: a recorder has the inputs when the chunk arrives
            self._chunk_pub.publish(msg)

    def _on_inference_error(self, reason: str) -> None:
        with self._lock:
            self._last_inference_error = reason
        down = getattr(self.policy, "down", None)  # RestartingProcessPolicy gave up on the model's process
        if down is not None and self.controller.state != ControllerState.FAULT:
            self.controller.fault(f"inference process down: {down}")
            self.get_logger().error(f"FAULT: inference process down ({down}); ~/reset to try again")
            return
        self.controller.on_inference_error(reason)
        self.get_logger().error(reason, throttle_duration_sec=2.0)

    # -- the stream (apt-stream thread) -------------------------------------------------------------------

    def _tick(self, now: float, deadline: float) -> Callable[[], None] | None:
        if not self._rt_applied:
            self._rt_applied = True
            self._apply_realtime_priority()
        try:
            return self._stream_step(now, deadline)
        finally:
            self.tick_durations.add(time.monotonic() - now)

    def _lock_memory(self) -> None:
        """With ``realtime_priority``: mlockall before the stream starts (it faults in every page of the
        process, 0.6-1.1 s measured for the demo node: done in the stream's first tick it stalled the stream
        that long), once per process."""
        if self.params.realtime_priority <= 0 or self._memory_locked:
            return
        self._memory_locked = True
        try:
            lock_memory()
        except OSError as exc:
            log = self.get_logger()
            log.warning(f"could not lock the node's memory ({exc}); raise `ulimit -l` (memlock)")

    def _apply_realtime_priority(self) -> None:
        """SCHED_FIFO ``realtime_priority`` for the stream thread (called from it; the process's memory was
        locked before the stream started, ``_lock_memory``). With the model in its own process every other
        thread here is light (executor, inference client, middleware): they get ``realtime_priority - 1``, so
        none of them is preempted by inference while holding the GIL the stream thread waits for. In-thread
        inference (``inference_process: false``) stays normal: real-time model compute would starve the
        machine."""
        prio = self.params.realtime_priority
        if prio <= 0:
            return
        log = self.get_logger()
        others = prio - 1 if self.params.inference_process and prio > 1 else 0
        try:
            count, _ = make_realtime(prio, others=others, lock=False)  # memory: _lock_memory
        except (OSError, ValueError) as exc:
            log.warning(
                f"could not set SCHED_FIFO priority {prio} ({exc}); allow it with `ulimit -r` / "
                "limits.conf rtprio or CAP_SYS_NICE. Continuing with normal scheduling."
            )
            return
        log.info(
            f"stream thread runs SCHED_FIFO priority {prio}"
            + (f", the node's {count - 1} other threads priority {others}" if others else "")
        )

    def _stream_step(self, now: float, deadline: float) -> Callable[[], None] | None:
        """Compute the command due at ``deadline`` (``publish_lead`` before it) and return its send function,
        which the loop calls at the deadline: publish the serialised command if the controller releases it,
        the gripper width, and the status when the state changed. The controller decides everything
        (staleness, holds, what the arm can follow at arrival); this passes data and publishes."""
        if self._joint_poller is not None:
            msg = self._joint_poller.take_latest()
            if msg is not None:
                self._on_joint_state(msg)
                now = time.monotonic()  # the sample was received just now; ages are measured from here
        t = max(now, deadline)  # the command is for its send time: input ages and schedule are taken there
        joints = self.observations.latest_joints()
        stamps = self.observations.stamps()
        command = self.controller.tick(
            t,
            None if joints is None else joints.value,
            state_stamp=stamps.state,
            camera_stamps=stamps.cameras,
            gripper_stamp=stamps.gripper,
            inference_started=self.worker.busy_since,
            inference_waiting=self.worker.waiting_reason,
            output_ready=self.arm_output is None or self.arm_output.subscribed(),
        )
        state_changed = command.state != self._last_state
        self._last_state = command.state
        if state_changed and command.state == ControllerState.FAULT:
            self.get_logger().error(f"FAULT: {command.reason} (nothing is sent; ~/reset once at rest)")
        payload = None
        if command.positions is not None:  # None: no valid joint state (or lost, or FAULT): nothing is sent
            payload = self._arm_payload(command)
        sink = self.gripper_sink
        gripper = command.gripper if sink is not None else None
        if self.controller.should_request(t):
            self.worker.request()

        def send() -> None:
            sent = False
            if not self.context.ok():
                return  # shutting down: the publishers are gone
            if payload is not None and self.arm_output is not None:
                if self.controller.release(command, time.monotonic()):
                    self.arm_output.publish(payload)
                    sent = True
                else:
                    self._log_drop()
            if sink is not None and gripper is not None:
                sink(gripper, t)
            if state_changed:  # state changes are published at once, after the tick's command
                self._publish_status()
            for on_frame, poller in self._camera_pollers:  # the slack after the send: see polling.py
                frame = poller.take_latest()
                if frame is not None:
                    on_frame(frame)
            if self.history is not None:  # last: it never delays the send or the camera frames
                self._record_history(t, joints, command, sent)

        return send

    def _arm_payload(self, command: Command) -> bytes | None:
        """The serialised arm command of this tick for the output mode (None for output_mode none)."""
        if isinstance(self.arm_output, TrajectoryOutput):
            plan = command.trajectory
            if plan is None:
                return None
            stamp = 0.0
            if command.stamp is not None:  # the controller's (monotonic) start time on the ROS clock
                stale = self._ros_offset.stale
                stamp = self._ros_offset.to_other(command.stamp)
                if self._ros_offset.stale != stale:
                    self.get_logger().warning(
                        "the stream thread was interrupted in every read of the ROS clock this tick; "
                        "stamped with the last good clock offset",
                        throttle_duration_sec=1.0,
                    )
            return self.arm_output.prepare(plan.times, plan.positions, plan.velocities, stamp)
        if isinstance(self.arm_output, PositionOutput):
            assert command.positions is not None
            return self.arm_output.prepare(command.positions)
        return None

    def _log_drop(self) -> None:
        status = self.controller.status()
        self.get_logger().warning(
            f"command not sent: {status.last_drop} ({status.commands_dropped} so far)",
            throttle_duration_sec=1.0,
        )

    def _on_stall(self, stall: Any) -> None:
        """A stream tick over 5 periods late: say where the time went (control/rate_loop.py, Stall)."""
        self.get_logger().warning(f"command stream stalled: {stall.describe()}", throttle_duration_sec=1.0)

    def _on_tick_error(self, exc: BaseException) -> None:
        self.get_logger().error(
            f"control tick failed: {type(exc).__name__}: {exc}", throttle_duration_sec=1.0
        )

    # -- status (executor thread) -------------------------------------------------------------------------

    def _publish_status(self) -> None:
        snap = self.status_snapshot()
        msg = self._status_msg_type()
        conversions.s_to_stamp(self.get_clock().now().nanoseconds * 1e-9, msg.header.stamp)
        msg.state = int(snap["state"])
        msg.instruction = snap["instruction"]
        msg.backend = snap["backend"]
        msg.model_id = snap["model_id"]
        msg.inference_latency_p50_ms = _f32(snap["inference_p50_ms"])
        msg.inference_latency_p99_ms = _f32(snap["inference_p99_ms"])
        msg.control_rate_hz = _f32(snap["control_rate_hz"])
        msg.actions_left = int(snap.get("actions_left", 0))
        msg.ticks = int(snap["ticks"])
        msg.missed_ticks = int(snap["missed_ticks"])
        msg.chunks_produced = int(snap["chunks_produced"])
        msg.safety_interventions = int(snap.get("safety_interventions", 0))
        msg.last_fault = str(snap.get("last_fault", ""))
        self._status_pub.publish(msg)
        self._status_count += 1
        if self._status_count % self._diag_every == 0:
            self._publish_diagnostics(snap)

    def _publish_diagnostics(self, snap: dict[str, Any]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        status = DiagnosticStatus(
            name=f"{self.get_fully_qualified_name()}: policy", hardware_id=str(snap["model_id"])
        )
        state = int(snap["state"])
        from apt_msgs.msg import PolicyStatus

        if snap["lifecycle_state"] != "active":  # not streaming: say why (a failed transition is an error)
            failed = self._transition_error is not None
            status.level = DiagnosticStatus.ERROR if failed else DiagnosticStatus.OK
            status.message = snap["lifecycle_reason"]
        elif state == PolicyStatus.FAULT:
            status.level, status.message = DiagnosticStatus.ERROR, f"FAULT: {snap.get('last_fault', '')}"
        elif state == PolicyStatus.HOLDING:
            status.level, status.message = DiagnosticStatus.WARN, f"HOLDING: {snap.get('last_fault', '')}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = {PolicyStatus.IDLE: "idle", PolicyStatus.RUNNING: "running"}.get(state, "paused")
        trained_max = int(snap.get("rtc_trained_max_delay", 0))
        if (
            self._configured
            and self.execution.rtc
            and trained_max > 0
            and int(snap.get("delay_last_actions", 0)) > trained_max
        ):
            if status.level == DiagnosticStatus.OK:
                status.level = DiagnosticStatus.WARN
            status.message += (
                f"; inference delay {snap['delay_last_actions']} actions exceeds the model's trained maximum"
                f" {trained_max} (real-time chunking)"
            )
        # Could the node keep its rate since the last report? (missed ticks: the rate loop's count; dropped:
        # commands the controller would not release, late or infeasible at arrival)
        missed, dropped = int(snap.get("missed_ticks", 0)), int(snap.get("commands_dropped", 0))
        new_missed = max(0, missed - self._diag_mark[0])  # (the counts restart with a new configure)
        new_dropped = max(0, dropped - self._diag_mark[1])
        self._diag_mark = (missed, dropped)
        if self._configured and (new_missed > 0 or new_dropped > 0):
            if status.level == DiagnosticStatus.OK:
                status.level = DiagnosticStatus.WARN
            status.message += (
                f"; could not keep {self.params.control_rate:g} Hz: {new_missed} ticks missed, "
                f"{new_dropped} commands not sent since the last report"
            )
        flat = {k: v for k, v in snap.items() if not isinstance(v, dict)}
        flat.update(missed_ticks_since_last_report=new_missed, commands_dropped_since_last_report=new_dropped)
        flat.update({f"rejected {k}": v for k, v in snap["rejected_inputs"].items()})
        for limit, per_joint in snap["interventions_by_limit"].items():
            flat.update({f"interventions {limit} {joint}": n for joint, n in per_joint.items()})
        status.values = [KeyValue(key=k, value=v) for k, v in conversions.diagnostic_values(flat)]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    # -- shutdown -----------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The lifecycle shutdown from any primary state (idempotent): hold and stop the stream if it runs
        (the arm's controller keeps the final look-ahead, which ends at rest), then release everything."""
        if self.lifecycle_state in ("unconfigured", "inactive", "active"):
            self.trigger_shutdown()

    def destroy_node(self) -> None:
        poll_node, self._poll_node = self._poll_node, None
        if poll_node is not None:  # a node destroyed without its shutdown transition
            poll_node.destroy_node()
        super().destroy_node()


def instruction_problem(text: Any, max_bytes: int) -> str:
    """Why ``text`` cannot be an instruction (empty string when it can)."""
    if not isinstance(text, str):
        return "instruction must be a string"
    size = len(text.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return f"instruction is {size} bytes, the limit is {max_bytes}"
    text = text.strip()
    if not text:
        return "instruction is empty (use ~/stop to stop)"
    if not text.isprintable():
        return "instruction contains control characters"
    return ""


_ENTITY_KINDS = ("publishers", "subscriptions", "clients", "services", "timers", "guards", "waitables")


def _entities(node: Node) -> dict[str, set[Any]]:
    """The node's ROS entities by kind (to tell which ones a configure made)."""
    return {kind: set(getattr(node, kind)) for kind in _ENTITY_KINDS}


def _destroy_new_entities(node: Node, before: dict[str, set[Any]]) -> None:
    """Destroy the entities ``node`` has now that it did not have in ``before`` (nothing when empty)."""
    if not before:
        return
    destroy: dict[str, Callable[[Any], Any]] = {
        "publishers": node.destroy_publisher,
        "subscriptions": node.destroy_subscription,
        "clients": node.destroy_client,
        "services": node.destroy_service,
        "timers": node.destroy_timer,
        "guards": node.destroy_guard_condition,
    }
    for kind in _ENTITY_KINDS:
        for entity in set(getattr(node, kind)) - before.get(kind, set()):
            if kind == "waitables":  # action servers and clients
                entity.destroy()
                with contextlib.suppress(ValueError):
                    node.remove_waitable(entity)
            else:
                destroy[kind](entity)


_UNCONFIGURED_SNAPSHOT: dict[str, Any] = {
    "state": 0,  # apt_msgs/PolicyStatus IDLE
    "state_name": "IDLE",
    "reason": "",
    "instruction": "",
    "epoch": 0,
    "actions_left": 0,
    "chunks_executed": 0,
    "chunks_refused": 0,
    "last_refusal": "",
    "safety_interventions": 0,
    "interventions_by_limit": {},
    "chunks_produced": 0,
    "chunks_discarded": 0,
    "inference_failures": 0,
    "inference_restarts": 0,
    "inference_p50_ms": float("nan"),
    "inference_p99_ms": float("nan"),
    "ticks": 0,
    "missed_ticks": 0,
    "stream_stalls": 0,
    "control_rate_hz": 0.0,
    "tick_errors": 0,
    "tick_lateness_p99_ms": float("nan"),
    "send_lateness_p99_ms": float("nan"),
    "tick_compute_p99_ms": float("nan"),
    "clock_reads_retried": 0,
    "backend": "",
    "model_id": "",
    "rejected_inputs": {},
    "last_inference_error": "",
}


def _unconfigured_snapshot(lifecycle: dict[str, Any]) -> dict[str, Any]:
    """The status of a node with nothing loaded: zero counters, ``last_fault`` the lifecycle's reason."""
    return {**_UNCONFIGURED_SNAPSHOT, "last_fault": lifecycle["lifecycle_reason"], **lifecycle}


def _compressed_to_rgb(msg: Any) -> tuple[np.ndarray, float]:
    """sensor_msgs/CompressedImage -> (RGB, header stamp in s)."""
    return conversions.compressed_to_rgb(msg), conversions.stamp_to_s(msg.header.stamp)


def _raw_image_to_rgb(raw: bytes) -> tuple[np.ndarray, float]:
    """A serialised sensor_msgs/Image -> (RGB, header stamp in s); see conversions.raw_image_to_rgb."""
    return conversions.raw_image_to_rgb(raw)


def _load_policy(p: NodeParams) -> Policy:
    """The policy (in a child process when ``inference_process``), with the CPU thread options when the
    model runs on ONNX Runtime."""
    from apt_policy.runtime.load import detect_kind, load_policy

    if p.backend == "remote":
        from apt_policy.ros.remote_policy import RemotePolicy

        return RemotePolicy(
            p.remote_server,
            p.remote_image_encoding,
            p.remote_jpeg_quality,
            timeout_s=p.inference_timeout,
            connect_timeout_s=p.remote_connect_timeout,
        )
    path = Path(p.model).expanduser()
    options: dict[str, Any] = {}
    if p.backend == "onnxruntime" or (p.backend == "auto" and detect_kind(path) == "onnx"):
        options = {"intra_op_threads": p.inference_threads, "allow_spinning": p.inference_spinning}
    if p.inference_process:
        from apt_policy.runtime.process_policy import RestartingProcessPolicy

        return RestartingProcessPolicy(path, p.backend, max_restarts=p.inference_restarts, **options)
    return load_policy(path, p.backend, **options)


def _f32(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


def main(args: list[str] | None = None) -> int:
    """Entry point (``apt-policy-node``, ``ros2 run apt_policy policy_node``); handles --ros-args."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Fast DDS writes from the publishing thread, not a later one: a command released as feasible leaves
    # then, not whenever a starved (or stopped) writer thread gets to it (unset: rmw_fastrtps' default).
    os.environ.setdefault("RMW_FASTRTPS_PUBLICATION_MODE", "SYNCHRONOUS")
    return spin_node(
        make_policy_node, "apt_policy", args, parameter_errors=(ParameterError,), report_errors=True
    )


def make_policy_node(policy: Policy | None = None, **node_kwargs: Any) -> PolicyNode:
    """A :class:`PolicyNode`, configured and activated when its ``autostart`` parameter is true (the
    executables' start); a failed step shuts it down and raises why."""
    node = PolicyNode(policy, **node_kwargs)
    if node.params.autostart:
        try:
            node.autostart()
        except BaseException:
            node.shutdown()
            node.destroy_node()
            raise
    return node


if __name__ == "__main__":
    sys.exit(main())
