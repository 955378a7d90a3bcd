"""A killed inference process (issue #17): the node replaces it (bounded, with back-off) and streams again,
never answers "following" while it is down, and FAULTs once it gives up. Real processes over DDS: fake_franka,
fake_camera and the node (config/sim.yaml, a tiny exported model)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_msgs.msg import PolicyStatus  # noqa: E402
from apt_msgs.srv import SetInstruction  # noqa: E402
from apt_policy.bench.procfs import children as _children  # noqa: E402
from apt_policy.ros.qos import EVENTS  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
SIM_YAML = ROOT / "ros2_ws" / "src" / "apt_policy" / "config" / "sim.yaml"
PY = [sys.executable, "-m"]


class Watcher:
    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("restart_watcher", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.statuses: list[PolicyStatus] = []
        self.node.create_subscription(PolicyStatus, "/apt_policy/status", self.statuses.append, EVENTS)
        self.set_srv = self.node.create_client(SetInstruction, "/apt_policy/set_instruction")

    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            self.executor.spin_once(timeout_sec=0.05)

    def set_instruction(self, text: str) -> Any:
        assert self.set_srv.wait_for_service(timeout_sec=60.0)
        future = self.set_srv.call_async(SetInstruction.Request(instruction=text))
        self.wait(future.done, 30.0, "set_instruction")
        return future.result()

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def watcher(ros_env: dict[str, str]) -> Any:
    w = Watcher()
    try:
        yield w
    finally:
        w.close()


def _start(processes: Any, tiny_export: Path, *extra: str) -> Any:
    processes.start("fake_franka", [*PY, "apt_policy.sim.fake_franka"])
    processes.start("fake_camera", [*PY, "apt_policy.sim.fake_camera"])
    args = ["--ros-args", "--params-file", str(SIM_YAML), "-p", f"model:={tiny_export}", *extra]
    return processes.start("policy_node", [*PY, "apt_policy.ros.policy_node", *args])


def test_a_killed_inference_process_is_replaced_and_the_node_streams_again(
    processes: Any, watcher: Watcher, tiny_export: Path
) -> None:
    node = _start(processes, tiny_export)
    assert watcher.set_instruction("reach the red block").accepted
    watcher.wait(lambda: watcher.statuses and watcher.statuses[-1].chunks_produced > 3, 120.0, "chunks")
    (child,) = _children(node.pid)
    os.kill(child, signal.SIGKILL)
    watcher.wait(lambda: _children(node.pid) not in ([], [child]), 60.0, "a new inference process")
    before = watcher.statuses[-1].chunks_produced
    watcher.wait(lambda: watcher.statuses[-1].chunks_produced > before + 3, 60.0, "chunks after the restart")
    out = processes.output("policy_node")
    assert "a new inference process was started" in out, out[-3000:]
    assert node.poll() is None


def test_the_node_faults_when_it_gives_up_and_refuses_to_follow(
    processes: Any, watcher: Watcher, tiny_export: Path
) -> None:
    node = _start(processes, tiny_export, "-p", "inference_restarts:=0")
    assert watcher.set_instruction("reach the red block").accepted
    watcher.wait(lambda: watcher.statuses and watcher.statuses[-1].chunks_produced > 0, 120.0, "a chunk")
    (child,) = _children(node.pid)
    os.kill(child, signal.SIGKILL)
    watcher.wait(
        lambda: watcher.statuses[-1].state == PolicyStatus.FAULT, 60.0, "FAULT once it gives up on inference"
    )
    assert "inference process down" in watcher.statuses[-1].last_fault
    reply = watcher.set_instruction("reach the blue block")
    assert not reply.accepted and "fault" in reply.message.lower(), reply.message
    assert "FAULT: inference process down" in processes.output("policy_node")
