"""Every parameter file in config/ and launch/ is accepted by the real node process with the exported demo
model, and the operator interfaces answer across processes (service, action with feedback, Trigger).

The model is a tiny random one-camera FR3 policy exported with apt-export (the parameter files must work with
any exported model). No camera or arm is running here, so the node holds; the interfaces must still work.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

import rclpy
from apt_msgs.action import FollowInstruction
from apt_msgs.msg import PolicyStatus
from apt_msgs.srv import SetInstruction
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
PARAM_FILES = sorted((ROOT / "ros2_ws" / "src" / "apt_policy" / "config").glob("*.yaml")) + sorted(
    (ROOT / "launch").glob("*.yaml")
)


def _spin_until(executor, cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        executor.spin_once(timeout_sec=0.05)


@pytest.mark.parametrize("params_file", PARAM_FILES, ids=lambda p: p.name)
def test_node_comes_up_with_param_file_and_answers(params_file: Path, tiny_export: Path, processes):
    proc = processes.start(
        "policy_node",
        ["apt-policy-node", "--ros-args", "--params-file", str(params_file), "-p", f"model:={tiny_export}"],
    )
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("launch_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    statuses: list[PolicyStatus] = []
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(PolicyStatus, "/apt_policy/status", statuses.append, qos)
    action = ActionClient(node, FollowInstruction, "/apt_policy/follow_instruction")
    set_srv = node.create_client(SetInstruction, "/apt_policy/set_instruction")
    stop_srv = node.create_client(Trigger, "/apt_policy/stop")
    try:
        _spin_until(
            executor,
            lambda: statuses or proc.poll() is not None,
            120.0,
            "the first ~/status",
        )
        assert proc.poll() is None, f"node exited:\n{processes.output('policy_node')[-3000:]}"
        if yaml.safe_load(params_file.read_text())["apt_policy"]["ros__parameters"].get("autostart") is False:
            # A lifecycle-managed setup (franka.yaml): configure and activate as an operator would.
            assert statuses[-1].last_fault.startswith("lifecycle unconfigured"), statuses[-1]
            change = node.create_client(ChangeState, "/apt_policy/change_state")
            assert change.wait_for_service(timeout_sec=20.0)
            for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                future = change.call_async(ChangeState.Request(transition=Transition(id=transition)))
                _spin_until(executor, future.done, 120.0, f"lifecycle transition {transition}")
                assert future.result().success, processes.output("policy_node")[-3000:]
            count = len(statuses)
            _spin_until(executor, lambda: len(statuses) > count, 20.0, "~/status after activate")
        assert statuses[-1].model_id and statuses[-1].backend

        assert set_srv.wait_for_service(timeout_sec=20.0)
        future = set_srv.call_async(SetInstruction.Request(instruction="reach the red block"))
        _spin_until(executor, future.done, 20.0, "set_instruction")
        assert future.result().accepted, future.result().message
        _spin_until(
            executor,
            lambda: statuses[-1].instruction == "reach the red block",
            10.0,
            "the instruction in ~/status",
        )

        assert action.wait_for_server(timeout_sec=20.0)
        feedback = []
        goal = FollowInstruction.Goal(instruction="reach the blue block", duration=1.0)
        sent = action.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
        _spin_until(executor, sent.done, 20.0, "goal acceptance")
        handle = sent.result()
        assert handle.accepted
        result = handle.get_result_async()
        _spin_until(executor, result.done, 20.0, "goal result")
        assert result.result().status == 4 and result.result().result.success, result.result().result.message
        assert len(feedback) >= 2

        future = stop_srv.call_async(Trigger.Request())
        _spin_until(executor, future.done, 20.0, "stop")
        assert future.result().success
        _spin_until(executor, lambda: statuses[-1].instruction == "", 10.0, "no instruction after stop")
        assert proc.poll() is None
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_sim_setup_pause_resume_cancel_across_processes(tiny_export: Path, processes):
    """fake_franka + fake_camera + the node (config/sim.yaml): the operator interfaces move and stop the
    (simulated) arm; motion is measured on fake_franka's joint states, not on the node's commands."""
    sim_yaml = ROOT / "ros2_ws" / "src" / "apt_policy" / "config" / "sim.yaml"
    processes.start("fake_franka", ["apt-fake-franka"])
    processes.start("fake_camera", ["apt-fake-camera"])
    proc = processes.start(
        "policy_node",
        ["apt-policy-node", "--ros-args", "--params-file", str(sim_yaml), "-p", f"model:={tiny_export}"],
    )
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("sim_probe", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    statuses: list[PolicyStatus] = []
    joints: list[tuple[float, list[float]]] = []
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
    sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(PolicyStatus, "/apt_policy/status", statuses.append, reliable)
    node.create_subscription(
        JointState,
        "/franka/joint_states",
        lambda m: joints.append((m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, list(m.position))),
        sensor,
    )
    action = ActionClient(node, FollowInstruction, "/apt_policy/follow_instruction")
    triggers = {n: node.create_client(Trigger, f"/apt_policy/{n}") for n in ("pause", "resume")}

    def state() -> int:
        return statuses[-1].state if statuses else -1

    def motion(seconds: float) -> float:
        """Largest joint excursion (rad) of the arm over the next ``seconds`` (by fake_franka stamps)."""
        t0 = node.get_clock().now().nanoseconds * 1e-9
        _spin_until(executor, lambda: joints and joints[-1][0] > t0 + seconds, seconds + 5, "joint states")
        window = [q for t, q in joints if t0 <= t <= t0 + seconds]
        assert len(window) >= 5, "fake_franka joint states arrive"
        return max(max(col) - min(col) for col in zip(*window, strict=True))

    def settle(timeout: float = 3.0) -> None:
        """Wait until the arm has come to rest (braking within the acceleration limits)."""
        end = time.monotonic() + timeout
        while motion(0.3) >= 1e-4:
            assert time.monotonic() < end, "the arm does not come to rest"

    def trigger(name: str) -> None:
        assert triggers[name].wait_for_service(timeout_sec=20.0)
        future = triggers[name].call_async(Trigger.Request())
        _spin_until(executor, future.done, 20.0, name)
        assert future.result().success, future.result().message

    try:
        _spin_until(executor, lambda: statuses or proc.poll() is not None, 120.0, "the first ~/status")
        assert proc.poll() is None, f"node exited:\n{processes.output('policy_node')[-3000:]}"
        assert action.wait_for_server(timeout_sec=20.0)
        feedback = []
        sent = action.send_goal_async(
            FollowInstruction.Goal(instruction="reach the red block", duration=0.0),
            feedback_callback=lambda m: feedback.append(m.feedback),
        )
        _spin_until(executor, sent.done, 20.0, "goal acceptance")
        handle = sent.result()
        assert handle.accepted
        _spin_until(executor, lambda: state() == PolicyStatus.RUNNING, 60.0, "RUNNING")
        assert motion(1.0) > 1e-3, "the arm moves while running"
        _spin_until(
            executor, lambda: feedback and feedback[-1].chunks_executed >= 1, 20.0, "chunks in feedback"
        )

        trigger("pause")
        _spin_until(executor, lambda: state() == PolicyStatus.PAUSED, 10.0, "PAUSED")
        settle()
        assert motion(1.0) < 1e-4, "the measured arm stands still while paused"

        trigger("resume")
        _spin_until(
            executor, lambda: state() in (PolicyStatus.RUNNING, PolicyStatus.HOLDING), 10.0, "resumed"
        )
        assert motion(1.5) > 1e-3, "the arm moves again after resume"

        cancel = handle.cancel_goal_async()
        _spin_until(executor, cancel.done, 20.0, "cancel")
        result = handle.get_result_async()
        _spin_until(executor, result.done, 20.0, "goal result")
        assert result.result().status == 5  # CANCELED
        _spin_until(executor, lambda: state() == PolicyStatus.IDLE, 10.0, "IDLE after cancel")
        settle()
        assert motion(1.0) < 1e-4, "the arm holds after cancel"
        assert proc.poll() is None
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
