"""attach_interfaces on a node that implements the PolicyNode hooks, exercised over real DDS in-process.

The hook node is a stand-in for PolicyNode's hook contract (set_instruction, pause, resume, stop,
status_snapshot, add_instruction_listener, on_camera_frame); the services, the action server, the gripper
output and the parameters are the real ones. tests/test_interfaces_*.py run the same against the real node.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_msgs.action import FollowInstruction  # noqa: E402
from apt_msgs.srv import SetInstruction  # noqa: E402
from apt_policy.ros.interfaces import (  # noqa: E402
    FAULT,
    IDLE,
    PAUSED,
    RUNNING,
    InterfaceParameterError,
    attach_interfaces,
)
from apt_policy.ros.params import ParameterError  # noqa: E402
from apt_policy.ros.realsense_camera import import_pyrealsense2  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(60)]
STATUS = {"SUCCEEDED": 4, "CANCELED": 5, "ABORTED": 6}


class HookNode(Node):
    """Implements PolicyNode's hooks with a trivial state machine; chunks advance at 20 Hz while RUNNING."""

    def __init__(self, context, overrides=(), attach=True) -> None:
        super().__init__("apt_policy", context=context, parameter_overrides=list(overrides))
        self.lock = threading.Lock()
        self.state = IDLE
        self.instruction = ""
        self.chunks = 0
        self.fault = ""
        self.listeners = []
        self.calls: list[str] = []
        self.camera_names = ("front",)
        self.frames = []
        self.gripper_sink = "node default"
        self.create_timer(0.05, self._advance)
        if attach:
            attach_interfaces(self)

    def _advance(self) -> None:
        with self.lock:
            if self.state == RUNNING:
                self.chunks += 1

    def set_instruction(self, text):
        self.calls.append(f"set {text}")
        text = text.strip()
        if not text:
            return False, "instruction is empty"
        if "forbidden" in text:
            return False, "not allowed in this test"
        with self.lock:
            old, self.instruction = self.instruction, text
            if self.state in (IDLE, RUNNING):
                self.state = RUNNING
        for cb in list(self.listeners):
            cb(old, text)
        return True, f"following {text!r}"

    def pause(self):
        self.calls.append("pause")
        with self.lock:
            if self.state == PAUSED:
                return False, "already paused"
            self.state = PAUSED
        return True, "paused"

    def resume(self):
        self.calls.append("resume")
        with self.lock:
            if self.state != PAUSED:
                return False, "not paused"
            self.state = RUNNING if self.instruction else IDLE
        return True, "resumed"

    def stop(self):
        self.calls.append("stop")
        with self.lock:
            old, self.instruction = self.instruction, ""
            self.state = IDLE
        for cb in list(self.listeners):
            cb(old, "")
        return True, "stopped"

    def reset(self):
        self.calls.append("reset")
        with self.lock:
            if self.state != FAULT:
                return False, "no fault to clear"
            self.state = IDLE
        return True, "fault cleared"

    def add_instruction_listener(self, cb):
        self.listeners.append(cb)

    def status_snapshot(self):
        with self.lock:
            return {
                "state": self.state,
                "instruction": self.instruction,
                "chunks_executed": self.chunks,
                "last_fault": self.fault,
            }

    def on_camera_frame(self, name, image, stamp):
        self.frames.append((name, image, stamp))


@pytest.fixture
def ctx(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


class Harness:
    """Server node spun in a background thread (like the real node), client node spun here."""

    def __init__(self, context, overrides=()) -> None:
        self.context = context
        self.server = HookNode(context, overrides)
        self.server_exec = SingleThreadedExecutor(context=context)
        self.server_exec.add_node(self.server)
        self.thread = threading.Thread(target=self.server_exec.spin, daemon=True)
        self.thread.start()
        self.client = Node("probe", context=context)
        self.exec = SingleThreadedExecutor(context=context)
        self.exec.add_node(self.client)
        self.action = ActionClient(self.client, FollowInstruction, "/apt_policy/follow_instruction")
        self.set_srv = self.client.create_client(SetInstruction, "/apt_policy/set_instruction")
        self.triggers = {
            n: self.client.create_client(Trigger, f"/apt_policy/{n}") for n in ("pause", "resume", "stop")
        }
        assert self.action.wait_for_server(timeout_sec=10.0)
        assert self.set_srv.wait_for_service(timeout_sec=10.0)

    def wait(self, future, timeout=10.0):
        self.exec.spin_until_future_complete(future, timeout_sec=timeout)
        assert future.done(), "timed out"
        return future.result()

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.exec.spin_once(timeout_sec=0.02)

    def set_instruction(self, text):
        return self.wait(self.set_srv.call_async(SetInstruction.Request(instruction=text)))

    def trigger(self, name):
        client = self.triggers[name]
        assert client.wait_for_service(timeout_sec=10.0)
        return self.wait(client.call_async(Trigger.Request()))

    def send_goal(self, instruction, duration, feedback=None):
        goal = FollowInstruction.Goal(instruction=instruction, duration=float(duration))
        return self.wait(self.action.send_goal_async(goal, feedback_callback=feedback))

    def close(self) -> None:
        self.server_exec.shutdown()
        self.thread.join(5.0)
        self.client.destroy_node()
        self.server.destroy_node()


@pytest.fixture
def h(ctx):
    harness = Harness(ctx)
    yield harness
    harness.close()


def test_a_burst_of_200_calls_and_20_goals_and_cancels_is_answered_every_one(h):
    """Issue #17: 200 service calls at once left 153 unanswered, 10 of 20 cancels too (queue depth 10).
    The client side gets the same deep queues (a client's replies are its own queue)."""
    from apt_policy.ros.qos import SERVICES

    stop = h.client.create_client(Trigger, "/apt_policy/stop", qos_profile=SERVICES)
    assert stop.wait_for_service(timeout_sec=10.0)
    calls = [stop.call_async(Trigger.Request()) for _ in range(200)]
    end = time.monotonic() + 15.0
    while not all(f.done() for f in calls) and time.monotonic() < end:
        h.exec.spin_once(timeout_sec=0.05)
    assert sum(f.done() for f in calls) == 200
    assert all(f.result().success for f in calls)

    action = ActionClient(
        h.client,
        FollowInstruction,
        "/apt_policy/follow_instruction",
        goal_service_qos_profile=SERVICES,
        result_service_qos_profile=SERVICES,
        cancel_service_qos_profile=SERVICES,
    )
    assert action.wait_for_server(timeout_sec=10.0)
    goal = FollowInstruction.Goal(instruction="reach the red block", duration=0.0)
    sent = [action.send_goal_async(goal) for _ in range(20)]
    end = time.monotonic() + 15.0
    while not all(f.done() for f in sent) and time.monotonic() < end:
        h.exec.spin_once(timeout_sec=0.05)
    assert sum(f.done() for f in sent) == 20, "goal requests left without a reply"
    cancels = [f.result().cancel_goal_async() for f in sent]
    end = time.monotonic() + 15.0
    while not all(f.done() for f in cancels) and time.monotonic() < end:
        h.exec.spin_once(timeout_sec=0.05)
    assert sum(f.done() for f in cancels) == 20, "cancel requests left without a reply"
    action.destroy()


def test_set_instruction_service_accepts_and_refuses_with_reason(h):
    ok = h.set_instruction("reach the red block")
    assert ok.accepted and "reach the red block" in ok.message
    assert h.server.instruction == "reach the red block"
    bad = h.set_instruction("   ")
    assert not bad.accepted and bad.message == "instruction is empty"
    assert h.server.instruction == "reach the red block"


def test_pause_resume_stop_reach_the_node(h):
    h.set_instruction("reach the red block")
    assert h.trigger("pause").success and h.server.state == PAUSED
    again = h.trigger("pause")
    assert not again.success and again.message == "already paused"
    assert h.trigger("resume").success and h.server.state == RUNNING
    stop = h.trigger("stop")
    assert stop.success and h.server.instruction == "" and h.server.state == IDLE
    assert h.server.calls[-4:] == ["pause", "pause", "resume", "stop"]


def test_goal_runs_for_duration_with_feedback_then_stops(h):
    feedback = []
    handle = h.send_goal(
        "reach the green block", 1.5, lambda m: feedback.append((time.monotonic(), m.feedback))
    )
    assert handle.accepted
    # the executor is free while the goal runs: a service answers promptly
    t0 = time.monotonic()
    assert h.set_srv.service_is_ready()
    assert h.trigger("pause").success and h.trigger("resume").success
    assert time.monotonic() - t0 < 2.0
    result = h.wait(handle.get_result_async())
    assert result.status == STATUS["SUCCEEDED"]
    assert result.result.success and "duration 1.5 s reached" in result.result.message
    # feedback >= 2 Hz, elapsed increasing, chunks counted for this goal, state reported
    times = [t for t, _ in feedback]
    assert len(feedback) >= 3
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5
    elapsed = [f.elapsed for _, f in feedback]
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(1.5, abs=0.3)
    assert feedback[-1][1].chunks_executed >= 10
    assert {f.state for _, f in feedback} <= {RUNNING, PAUSED}
    # at the end the node holds with no instruction
    assert h.server.instruction == "" and h.server.calls[-1] == "stop"


def test_cancel_stops_and_holds(h):
    handle = h.send_goal("reach the blue block", 0.0)  # no time limit
    h.spin_for(0.5)
    assert h.server.instruction == "reach the blue block"
    cancel = h.wait(handle.cancel_goal_async())
    assert len(cancel.goals_canceling) == 1
    result = h.wait(handle.get_result_async())
    assert result.status == STATUS["CANCELED"]
    assert not result.result.success and "cancelled" in result.result.message
    assert h.server.instruction == "" and "stop" in h.server.calls


def test_goals_ending_differently_in_one_node_lifetime(h):
    """Regression: succeed, then cancel, then abort in the same node (rclpy once refused the logger
    severity change at a shared call site and the exception stopped the node's executor)."""
    done = h.send_goal("reach the red block", 0.3)
    assert h.wait(done.get_result_async()).status == STATUS["SUCCEEDED"]
    cancelled = h.send_goal("reach the red block", 0.0)
    h.spin_for(0.3)
    h.wait(cancelled.cancel_goal_async())
    assert h.wait(cancelled.get_result_async()).status == STATUS["CANCELED"]
    aborted = h.send_goal("reach the red block", 0.0)
    h.spin_for(0.3)
    h.trigger("stop")
    assert h.wait(aborted.get_result_async()).status == STATUS["ABORTED"]
    again = h.send_goal("reach the green block", 0.3)
    assert h.wait(again.get_result_async()).status == STATUS["SUCCEEDED"]
    assert h.thread.is_alive()


def test_new_goal_preempts_old_one(h):
    first = h.send_goal("reach the red block", 0.0)
    h.spin_for(0.3)
    second = h.send_goal("reach the green block", 0.0)
    result = h.wait(first.get_result_async())
    assert result.status == STATUS["ABORTED"]
    assert "pre-empted by a new goal" in result.result.message and "green" in result.result.message
    h.spin_for(0.3)
    assert h.server.instruction == "reach the green block"
    h.wait(second.cancel_goal_async())
    assert h.wait(second.get_result_async()).status == STATUS["CANCELED"]


def test_service_instruction_preempts_goal(h):
    goal = h.send_goal("reach the red block", 10.0)
    h.spin_for(0.3)
    assert h.set_instruction("reach the blue block").accepted
    result = h.wait(goal.get_result_async())
    assert result.status == STATUS["ABORTED"]
    assert "pre-empted by instruction 'reach the blue block'" in result.result.message
    assert h.server.instruction == "reach the blue block"  # the new instruction keeps running


def test_stop_service_aborts_goal(h):
    goal = h.send_goal("reach the red block", 10.0)
    h.spin_for(0.3)
    assert h.trigger("stop").success
    result = h.wait(goal.get_result_async())
    assert result.status == STATUS["ABORTED"] and "instruction cleared" in result.result.message


def test_fault_aborts_goal_with_reason(h):
    goal = h.send_goal("reach the red block", 10.0)
    h.spin_for(0.3)
    with h.server.lock:
        h.server.state, h.server.fault = FAULT, "joint 4 outside limits"
    result = h.wait(goal.get_result_async())
    assert result.status == STATUS["ABORTED"] and "joint 4 outside limits" in result.result.message


def test_empty_goal_rejected_and_refused_instruction_aborts(h):
    assert not h.send_goal("  ", 1.0).accepted
    assert not h.send_goal("reach", float("nan")).accepted
    handle = h.send_goal("a forbidden instruction", 1.0)
    assert handle.accepted
    result = h.wait(handle.get_result_async())
    assert result.status == STATUS["ABORTED"]
    assert result.result.message == "instruction refused: not allowed in this test"


def test_gripper_sink_replaced_and_sends_once_per_change(h):
    received = []
    h.client.create_subscription(
        Float64, "/franka_gripper/width_command", lambda m: received.append(m.data), 10
    )
    h.spin_for(1.0)  # discovery
    sink = h.server.gripper_sink
    assert sink == h.server.interfaces.gripper_output.submit
    t = 100.0
    widths = [0.08] * 30 + [0.0] * 30 + [0.0] * 30 + [0.08] * 30
    for i, w in enumerate(widths):
        sink(w, t + i * 0.05)  # 20 Hz, 6 s of simulated time
    h.spin_for(1.0)
    assert received == [0.08, 0.0, 0.08]


def test_gripper_output_none_removes_the_sink(ctx):
    node = HookNode(ctx, [Parameter("gripper.output", value="none")])
    try:
        assert node.gripper_sink is None and node.interfaces.gripper_output is None
    finally:
        node.destroy_node()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([Parameter("gripper.output", value="magic")], r"gripper.output.*choose one of"),
        ([Parameter("gripper.force", value=500.0)], r"gripper.force"),
        ([Parameter("gripper.threshold", value=0.079)], r"threshold band"),
        ([Parameter("interfaces.feedback_rate", value=1.0)], r"interfaces.feedback_rate"),
        (
            [
                Parameter("realsense.camera_names", value=["front"]),
                Parameter("realsense.serial_numbers", value=["1", "2"]),
            ],
            r"same length",
        ),
        (
            [
                Parameter("realsense.camera_names", value=["side"]),
                Parameter("realsense.serial_numbers", value=["1"]),
            ],
            r"not model cameras",
        ),
        ([Parameter("realsense.profile", value="640x480")], r"realsense.profile"),
    ],
)
def test_invalid_parameters_raise_named_errors(ctx, overrides, match):
    with pytest.raises(InterfaceParameterError, match=match) as err:
        HookNode(ctx, overrides)
    assert isinstance(err.value, ParameterError)  # the node's main exits cleanly on it


def test_franka_actions_without_franka_msgs_is_a_parameter_error(ctx):
    from apt_policy.ros.gripper_output import franka_msgs_available

    if franka_msgs_available():
        pytest.skip("franka_msgs is importable here")
    with pytest.raises(InterfaceParameterError, match=r"gripper.output.*franka_msgs cannot be imported"):
        HookNode(ctx, [Parameter("gripper.output", value="franka_actions")])


def test_missing_realsense_serial_lists_connected_devices(ctx):
    try:
        import_pyrealsense2()
    except ImportError as exc:
        pytest.skip(f"pyrealsense2 not importable: {exc}")
    overrides = [
        Parameter("realsense.camera_names", value=["front"]),
        Parameter("realsense.serial_numbers", value=["000000000000"]),
    ]
    with pytest.raises(ParameterError, match=r"'000000000000' is not connected; connected: "):
        HookNode(ctx, overrides)
