"""fake_franka: a simulated FR3 behind the topics of franka_ros2 + ros2_controllers (for tests and demos).

The arm logic is :class:`apt_policy.sim.arm.SimArm` (JTC semantics, forward position controller,
limit-saturated tracking, violation counting); this node only moves messages and owns the physics thread.

Subscribes (topic names are parameters):
  /fr3_arm_controller/joint_trajectory   trajectory_msgs/JointTrajectory   (joint_trajectory_controller)
  /fr3_position_controller/commands      std_msgs/Float64MultiArray         (forward position controller)
  /franka_gripper/width_command          std_msgs/Float64                   (gripper width, m)
Publishes:
  /franka/joint_states                   sensor_msgs/JointState (publish_rate, default 200 Hz, stamped)
  /franka_gripper/joint_states           sensor_msgs/JointState, finger joints at width/2 (15 Hz)
  ~/violations                           std_msgs/String JSON: counters, last violation, command arrival
                                         statistics over the last 1000 commands per topic (reliable,
                                         transient local; on every violation + 1 Hz)
  /diagnostics                           diagnostic_msgs/DiagnosticArray (1 Hz)

The simulation is integrated at ``physics_rate`` (1 kHz) on its own monotonic-clock thread. On shutdown
the node prints a summary, and writes every command's times to ``arrival_log`` if set (JSON: ``{"clock":
"monotonic", FIELD: {topic: [t, ...]}, ..., "summary": {...}}`` with the fields of ``LOG_FIELDS``: ``topics``
the handler's arrival on the monotonic clock, ``stamps`` the header stamp (trajectories), and on the system
clock ``received`` / ``sent`` the RMW's reception and source (sender's write) timestamps and ``handled`` when
the handler started; ``summary`` the report of ``~/violations``). They are recorded only when
``arrival_log`` is set (memory grows with every command).

Simulation-only resets, by setting parameters on the running node (``ros2 param set``, or one
``set_parameters_atomically`` call; the demo does this between episodes instead of restarting the process):

* ``arrival_log`` -- the log so far is written to the previous path (if any) and a new segment starts: the
  command record, the arrival statistics and the violation / accepted counters start from zero;
* ``initial_positions`` -- the arm is put at rest there at once, gripper open, the JTC holding there (what
  moving the arm to a start pose with another controller leaves behind). A client streaming to the arm
  must not be: a policy node is deactivated (lifecycle) first and re-synchronises on activate.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from apt_policy.control.clocks import ClockOffset
from apt_policy.control.realtime import GIL_SWITCH_INTERVAL_S, make_realtime
from apt_policy.robots.franka import get_profile
from apt_policy.ros.polling import SubscriptionReceiver, helper_node
from apt_policy.ros.qos import EVENTS, LATCHED
from apt_policy.ros.spin import spin_node
from apt_policy.sim.arm import ArrivalLog, SimArm

_PARAMS: tuple[tuple[str, Any, str], ...] = (
    ("robot", "fr3", "Robot profile: fr3 | panda (joint names, limits, ready pose)."),
    ("initial_positions", None, "Initial joint positions (7 values, rad); unset = the ready pose."),
    ("joint_states_topic", "/franka/joint_states", "Arm joint states (sensor_msgs/JointState)."),
    ("gripper_states_topic", "/franka_gripper/joint_states", "Finger joint states (width/2 each)."),
    ("trajectory_topic", "/fr3_arm_controller/joint_trajectory", "JTC command topic."),
    ("position_command_topic", "/fr3_position_controller/commands", "Forward position controller topic."),
    (
        "gripper_command_topic",
        "/franka_gripper/width_command",
        "Gripper width command (std_msgs/Float64, m).",
    ),
    ("publish_rate", 200.0, "Joint state publish rate (Hz)."),
    ("gripper_publish_rate", 15.0, "Gripper joint state rate (Hz); franka_gripper publishes at 15 Hz."),
    ("physics_rate", 1000.0, "Simulation integration rate (Hz) on a monotonic-clock thread."),
    ("bandwidth", 40.0, "Tracking natural frequency (rad/s), critically damped, limit-saturated."),
    ("gripper_speed", 0.1, "Gripper finger opening speed (m/s)."),
    (
        "allow_nonzero_velocity_at_trajectory_end",
        False,
        "JTC option: accept trajectories whose last point has non-zero velocity (jazzy default: false).",
    ),
    ("status_rate", 1.0, "Rate (Hz) of ~/violations and /diagnostics."),
    ("arrival_log", "", "File to write command receive times to on shutdown (JSON); empty = none."),
    ("max_logged_violations", 50, "Violations logged individually per kind; later ones only counted."),
    (
        "realtime_priority",
        0,
        "SCHED_FIFO priority (1-99) for all of this process's threads (physics, executor, DDS), command "
        "reception one above, as a real-time robot controller runs (above the policy node's, as a "
        "controller outranks its clients); 0 = normal scheduling.",
    ),
)


LOG_FIELDS = ("topics", "stamps", "received", "sent", "handled")  # arrival_log, see the module docstring
REPORT_WINDOW = 1000  # commands per topic behind the arrival statistics of the periodic report
_MAX_CATCH_UP = 0.25  # s of simulation replayed after a stall; longer stalls are skipped


def _stamp_s(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _set_stamp(stamp: Any, seconds: float) -> None:
    sec = int(seconds)
    stamp.sec, stamp.nanosec = sec, min(round((seconds - sec) * 1e9), 999_999_999)


class FakeFranka(Node):
    """Thin ROS shell around :class:`SimArm`; see the module docstring for the interface."""

    def __init__(self) -> None:
        super().__init__("fake_franka")
        p = {name: self._declare(name, default, text) for name, default, text in _PARAMS}
        for name in ("publish_rate", "gripper_publish_rate", "physics_rate", "status_rate", "bandwidth"):
            if not p[name] > 0:
                raise ValueError(f"parameter {name} must be > 0, got {p[name]}")
        self.profile = get_profile(p["robot"])
        q0 = p["initial_positions"]
        if q0 is not None and not self.profile.within_limits(np.asarray(q0, dtype=np.float64)):
            raise ValueError(
                f"initial_positions must be {self.profile.dof} finite values inside the limits, got {q0}"
            )
        self.arm = SimArm(
            self.profile,
            None if q0 is None else np.asarray(q0, dtype=np.float64),
            bandwidth=p["bandwidth"],
            gripper_speed=p["gripper_speed"],
            allow_nonzero_velocity_at_trajectory_end=p["allow_nonzero_velocity_at_trajectory_end"],
            on_violation=self._on_violation,
        )
        self.params = p
        self._max_logged = int(p["max_logged_violations"])
        self._last_violation: dict[str, str] | None = None
        topics = (p["trajectory_topic"], p["position_command_topic"], p["gripper_command_topic"])
        # Statistics in the 1 Hz report cover the last REPORT_WINDOW commands: over the whole history they
        # cost milliseconds of GIL-holding numpy per report in a long run, delaying command reception.
        self.arrivals = {topic: ArrivalLog(max_samples=REPORT_WINDOW) for topic in topics}
        self._topics = topics
        self._record_lock = threading.Lock()  # the record is swapped at a new segment (arrival_log set)
        self._record: dict[str, dict[str, list[float]]] | None = None  # every command, for arrival_log
        if p["arrival_log"]:
            self._record = self._new_record()

        self.joint_pub = self.create_publisher(JointState, p["joint_states_topic"], EVENTS)
        self.gripper_pub = self.create_publisher(JointState, p["gripper_states_topic"], EVENTS)
        self.violations_pub = self.create_publisher(String, "~/violations", LATCHED)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Commands are taken off the wire on their own thread, blocked in a wait set on just these topics (no
        # executor: a controller takes a command as it arrives): the main executor's timers and services never
        # delay them, and with realtime_priority that thread ranks above the physics thread, as a real
        # controller's would. Handlers get the RMW's MessageInfo (reception/source timestamps).
        self._rx_node = helper_node(self, "commands")  # keeps its own name under a launch file's name=
        self._receiver = SubscriptionReceiver(self._rx_node)
        self._receiver.add(JointTrajectory, p["trajectory_topic"], EVENTS, self._on_trajectory)
        self._receiver.add(Float64MultiArray, p["position_command_topic"], EVENTS, self._on_positions)
        self._receiver.add(Float64, p["gripper_command_topic"], EVENTS, self._on_gripper)
        self._rx_tid = 0
        self._rx_started = threading.Event()
        self._rx_thread = threading.Thread(target=self._receive_commands, name="fake_franka_rx", daemon=True)
        self._rx_thread.start()
        self.create_timer(1.0 / p["status_rate"], self._publish_status)

        self._stop = threading.Event()
        self.overruns = 0
        self._thread = threading.Thread(target=self._physics_loop, name="fake_franka_physics", daemon=True)
        self._thread.start()
        self._apply_realtime_priority(int(p["realtime_priority"]))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        gc.collect()  # long-lived from here on: full collections skip them (as in the node)
        gc.freeze()
        self._publish_status()
        self.get_logger().info(
            f"simulated {self.profile.name}: joint states on {p['joint_states_topic']}"
            f" at {p['publish_rate']:.0f} Hz,"
            f" JTC on {p['trajectory_topic']}, forward positions on {p['position_command_topic']}"
        )

    def _receive_commands(self) -> None:
        self._rx_tid = threading.get_native_id()
        self._rx_started.set()
        try:
            self._receiver.run()
        except Exception:
            if self.context.ok():  # a real failure, not the context going away at shutdown
                raise

    def _apply_realtime_priority(self, priority: int) -> None:
        if priority <= 0:
            return
        log = self.get_logger()
        if not self._rx_started.wait(2.0):
            log.warning("command thread did not start; normal scheduling")
            return
        # Every thread at `priority`, command reception one above (a real controller takes commands first).
        reception = min(priority + 1, 99)
        try:
            count, lock_error = make_realtime(reception, self._rx_tid, others=priority)
        except (OSError, ValueError) as exc:
            log.warning(f"could not set SCHED_FIFO priority {priority} ({exc}); normal scheduling")
            return
        log.info(f"{count} threads run SCHED_FIFO priority {priority} (command reception {reception})")
        if lock_error is not None:
            log.warning(f"could not lock memory ({lock_error}); raise `ulimit -l` (memlock)")

    def _declare(self, name: str, default: Any, description: str) -> Any:
        value = Parameter.Type.DOUBLE_ARRAY if default is None else default  # typed, no default
        return self.declare_parameter(name, value, ParameterDescriptor(description=description)).value

    # --------------------------------------------------------------------------------- command inputs
    def _arrived(self, topic: str, stamp: float | None = None, info: Mapping[str, Any] | None = None) -> None:
        now = time.monotonic()
        self.arrivals[topic].add(now)
        with self._record_lock:
            record = self._record
            if record is None:
                return
            record["topics"][topic].append(now)
            if stamp is not None:
                record["stamps"][topic].append(stamp)
            if info is not None:
                record["handled"][topic].append(time.time())
                record["received"][topic].append(int(info.get("received_timestamp") or 0) * 1e-9)
                record["sent"][topic].append(int(info.get("source_timestamp") or 0) * 1e-9)

    def _new_record(self) -> dict[str, dict[str, list[float]]]:
        return {field: {topic: [] for topic in self._topics} for field in LOG_FIELDS}

    # ------------------------------------------------------------------------- simulation-only resets
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """``arrival_log`` and ``initial_positions`` at run time (see the module docstring); every other
        parameter is read once at start."""
        changes = {prm.name: prm.value for prm in params}
        fixed = sorted(set(changes) - {"arrival_log", "initial_positions"})
        if fixed:
            return SetParametersResult(successful=False, reason=f"{fixed} are read at start only")
        q = changes.get("initial_positions")
        if q is not None and not self.profile.within_limits(np.asarray(q, dtype=np.float64)):
            return SetParametersResult(
                successful=False,
                reason=f"initial_positions must be {self.profile.dof} values inside the limits",
            )
        if "arrival_log" in changes:
            self.new_segment(str(changes["arrival_log"] or ""))
        if q is not None:
            self.arm.teleport(q)
            self.params["initial_positions"] = list(q)
            self.get_logger().info(f"simulation reset: the arm is at {np.round(q, 4).tolist()}")
        return SetParametersResult(successful=True)

    def new_segment(self, next_log: str) -> None:
        """Write the record so far (with its report) to the current ``arrival_log`` and start from zero;
        ``next_log`` is where the next segment goes ("" = record nothing more)."""
        with self._record_lock:
            record = self._record
            self._record = self._new_record() if next_log else None
            report = self.report()
            self.arm.reset_counts()
            self.arrivals = {topic: ArrivalLog(max_samples=REPORT_WINDOW) for topic in self._topics}
            self._last_violation = None
        if self._write_arrival_log(self.params["arrival_log"], record, report):
            self.get_logger().info(f"wrote command arrival times to {self.params['arrival_log']}")
        self.params["arrival_log"] = next_log
        self._publish_violations()

    @staticmethod
    def _write_arrival_log(path: str, record: dict[str, Any] | None, report: dict[str, Any]) -> bool:
        if not path or record is None:
            return False
        Path(path).write_text(json.dumps({"clock": "monotonic", **record, "summary": report}))
        return True

    def _on_trajectory(self, msg: JointTrajectory, info: Mapping[str, Any] | None = None) -> None:
        stamp = _stamp_s(msg.header.stamp)
        self._arrived(self.params["trajectory_topic"], stamp, info)
        points = msg.points
        with_vel = [len(pt.velocities) > 0 for pt in points]
        velocities = [list(pt.velocities) for pt in points] if points and all(with_vel) else None
        if any(with_vel) and not all(with_vel):
            velocities = [list(pt.velocities) for pt in points]  # ragged: rejected as malformed
        self.arm.submit_trajectory(
            list(msg.joint_names),
            [_stamp_s(pt.time_from_start) for pt in points],
            [list(pt.positions) for pt in points],
            velocities,
            stamp,
            time.time(),
        )

    def _on_positions(self, msg: Float64MultiArray, info: Mapping[str, Any] | None = None) -> None:
        self._arrived(self.params["position_command_topic"], None, info)
        self.arm.submit_positions(list(msg.data), time.time())

    def _on_gripper(self, msg: Float64, info: Mapping[str, Any] | None = None) -> None:
        self._arrived(self.params["gripper_command_topic"], None, info)
        self.arm.submit_gripper(float(msg.data))

    def _on_violation(self, kind: str, message: str) -> None:
        count = self.arm.violations[kind]
        if count <= self._max_logged:
            suffix = " (further ones of this kind are only counted)" if count == self._max_logged else ""
            self.get_logger().warning(f"contract violation #{count} [{kind}] {message}{suffix}")
        self._last_violation = {"kind": kind, "message": message}
        self._publish_violations()

    # ---------------------------------------------------------------------------------------- physics
    def _physics_loop(self) -> None:
        try:
            self._run_physics()
        except Exception:
            if self.context.ok():  # a real failure, not the context going away at shutdown
                raise

    def _run_physics(self) -> None:
        """Fixed-step integration on the monotonic clock; states are stamped with their simulated time.

        Simulated time = system (ROS) time at start + monotonic time elapsed, so stamps are evenly spaced
        by the physics period and comparable with command header stamps. A stall (a loaded machine) is caught
        up step by step; one longer than ``_MAX_CATCH_UP`` is skipped (counted in ``physics_overruns``).
        """
        period = 1.0 / self.params["physics_rate"]
        pub_period = 1.0 / self.params["publish_rate"]
        grip_period = 1.0 / self.params["gripper_publish_rate"]
        offset = ClockOffset(time.time).read()  # not biased by a preemption between the two reads
        next_step = next_pub = next_grip = time.monotonic()
        t_sim = next_step + offset
        last_pub = last_grip = -1.0
        while not self._stop.is_set():
            now_m = time.monotonic()
            if now_m - next_step > _MAX_CATCH_UP:
                self.overruns += 1
                next_step = now_m
            while next_step <= now_m:
                t_sim = next_step + offset
                self.arm.step(t_sim, period)
                next_step += period
            # Late publishes are caught up (one per new physics step) so the average rate holds; a state
            # is never published twice.
            if now_m >= next_pub and t_sim > last_pub:
                self._publish_joints(t_sim)
                last_pub = t_sim
                next_pub = max(next_pub + pub_period, now_m - _MAX_CATCH_UP)
            if now_m >= next_grip and t_sim > last_grip:
                self._publish_gripper(t_sim)
                last_grip = t_sim
                next_grip = max(next_grip + grip_period, now_m - _MAX_CATCH_UP)
            delay = next_step - time.monotonic()  # publishing happens on physics steps
            if delay > 0:
                time.sleep(delay)

    def _publish_joints(self, stamp: float) -> None:
        q, qd, _ = self.arm.state()
        msg = JointState()
        _set_stamp(msg.header.stamp, stamp)
        msg.name = list(self.profile.joint_names)
        msg.position = q.tolist()
        msg.velocity = qd.tolist()
        msg.effort = [0.0] * self.profile.dof
        self.joint_pub.publish(msg)

    def _publish_gripper(self, stamp: float) -> None:
        _, _, width = self.arm.state()
        msg = JointState()
        _set_stamp(msg.header.stamp, stamp)
        msg.name = list(self.profile.gripper_joint_names)
        msg.position = [width / 2, width / 2]
        msg.velocity = [0.0, 0.0]
        msg.effort = [0.0, 0.0]
        self.gripper_pub.publish(msg)

    # ----------------------------------------------------------------------------------------- status
    def report(self) -> dict[str, Any]:
        counts = self.arm.violation_counts()
        return {
            "violations": counts,
            "total_violations": sum(counts.values()),
            "accepted": dict(self.arm.accepted),
            "last_violation": self._last_violation,
            "arrivals": {topic: log.stats() for topic, log in self.arrivals.items()},
            "physics_overruns": self.overruns,
        }

    def _publish_violations(self) -> None:
        self.violations_pub.publish(String(data=json.dumps(self.report())))

    def _publish_status(self) -> None:
        report = self.report()
        self.violations_pub.publish(String(data=json.dumps(report)))
        status = DiagnosticStatus()
        status.name = "fake_franka: command contract"
        status.hardware_id = f"fake_{self.profile.name}"
        total = report["total_violations"]
        status.level = DiagnosticStatus.OK if total == 0 else DiagnosticStatus.WARN
        status.message = "no violations" if total == 0 else f"{total} contract violations"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in report["violations"].items()]
        status.values += [KeyValue(key=f"accepted_{k}", value=str(v)) for k, v in report["accepted"].items()]
        diag = DiagnosticArray()
        diag.header.stamp = self.get_clock().now().to_msg()
        diag.status = [status]
        self.diag_pub.publish(diag)

    def shutdown(self) -> None:
        """Stop the physics and command threads, print a summary and write the arrival log (if configured)."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._receiver.stop()
        self._rx_thread.join(timeout=2.0)
        report = self.report()
        print(f"[fake_franka] summary: {json.dumps(report, sort_keys=True)}", flush=True)
        with self._record_lock:
            record, self._record = self._record, None
        path = self.params["arrival_log"]
        if self._write_arrival_log(path, record, report):
            print(f"[fake_franka] wrote command arrival times to {path}", flush=True)

    def destroy_node(self) -> None:
        self._rx_node.destroy_node()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point (``apt-fake-franka``, ``ros2 run apt_policy fake_franka``); accepts --ros-args."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return spin_node(FakeFranka, "fake_franka", args)


if __name__ == "__main__":
    sys.exit(main())
