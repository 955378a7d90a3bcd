"""The executables as ``ros2 launch`` runs them (issue #23), without launch itself: real processes, real DDS.

* launch's ``name=`` is ``--ros-args -r __node:=NAME``, which renames every node of the process: the helper
  nodes (fake_franka's command receiver, the policy node's poller) must keep their own names, so the graph
  lists every name once.
* A terminal Ctrl-C reaches the whole process group and ``ros2 launch`` then sends each child another
  SIGINT: the shutdown must run to the end whatever signals repeat (exit 0, final output written, no
  inference process or /dev/shm file left), and the inference child leaves the shutdown to its parent (no
  KeyboardInterrupt traceback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_policy.bench.procfs import children as _children  # noqa: E402
from apt_policy.runtime.process_policy import arena_files as _shm_files  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
# `python -m`: independent of how fresh the environment's console scripts are (same main() as apt-fake-franka)
FAKE_FRANKA = [sys.executable, "-m", "apt_policy.sim.fake_franka"]
SIM_YAML = ROOT / "ros2_ws" / "src" / "apt_policy" / "config" / "sim.yaml"


class GraphProbe:
    """A node in its own context that watches the ROS graph."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("graph_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def names(self) -> Counter[str]:
        return Counter(
            (ns.rstrip("/") + "/" + name) for name, ns in self.node.get_node_names_and_namespaces()
        )

    def wait_spinning(self, node: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
        """Until ``node`` answers a parameter service call: it is built and its executor spins."""
        from rcl_interfaces.srv import ListParameters

        client = self.node.create_client(ListParameters, f"{node}/list_parameters")
        self.wait(lambda: client.service_is_ready() or proc.poll() is not None, timeout, f"{node}'s services")
        assert proc.poll() is None, f"{node} exited with {proc.returncode}"
        # service_is_ready() means the server's request reader is matched, not that its response writer has
        # matched our reply reader yet: a reply sent before that is lost (a CI run waited 120 s for one).
        # Ask again every 2 s until one call is answered (the race: ros2/rmw_fastrtps#390, ros2/rclcpp#1152).
        calls = [client.call_async(ListParameters.Request())]
        asked = [time.monotonic()]

        def answered() -> bool:
            if any(f.done() for f in calls) or proc.poll() is not None:
                return True
            if time.monotonic() - asked[0] > 2.0:
                calls.append(client.call_async(ListParameters.Request()))
                asked[0] = time.monotonic()
            return False

        self.wait(answered, timeout, f"{node} to answer")
        assert proc.poll() is None, f"{node} exited with {proc.returncode}"

    def others(self) -> int:
        """How many nodes (by name, duplicates counted) there are besides this one."""
        return sum(n for name, n in self.names().items() if name != "/graph_probe")

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def graph(ros_env: dict[str, str]) -> Any:
    probe = GraphProbe()
    try:
        yield probe
    finally:
        probe.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


def _ctrl_c(proc: subprocess.Popen, times: int, gap_s: float = 0.02) -> int:
    """SIGINT to the process group (what a terminal's Ctrl-C does), ``times`` times, then wait for exit.

    The first signal starts the shutdown; the later ones land inside it as launch's forwarded SIGINT does
    (where they land varies from run to run; a correct shutdown ignores them wherever they land)."""
    for i in range(times):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGINT)
        if i + 1 < times:
            time.sleep(gap_s)
    return proc.wait(60)


def test_fake_franka_under_a_launch_name_lists_each_node_once(processes: Any, graph: GraphProbe) -> None:
    proc = processes.start("fake_franka", [*FAKE_FRANKA, "--ros-args", "-r", "__node:=fake_franka"])
    graph.wait(lambda: graph.others() >= 2 or proc.poll() is not None, 60, "fake_franka's two nodes")
    names = graph.names()
    assert proc.poll() is None, processes.output("fake_franka")
    assert names["/fake_franka"] == 1, names
    assert names["/fake_franka_commands"] == 1, names
    renamed = processes.start("fake_franka_2", [*FAKE_FRANKA, "--ros-args", "-r", "__node:=arm_sim"])
    graph.wait(
        lambda: names_have(graph, "/arm_sim", "/arm_sim_commands") or renamed.poll() is not None,
        60,
        "/arm_sim and /arm_sim_commands",
    )
    names = graph.names()
    assert names["/arm_sim"] == 1 and names["/arm_sim_commands"] == 1, names


def names_have(graph: GraphProbe, *wanted: str) -> bool:
    names = graph.names()
    return all(names[w] >= 1 for w in wanted)


def test_policy_node_under_a_launch_name_lists_each_node_once(
    processes: Any, graph: GraphProbe, tiny_export: Path
) -> None:
    proc = processes.start(
        "policy_node",
        [
            "apt-policy-node",
            "--ros-args",
            "-r",
            "__node:=apt_policy",
            "--params-file",
            str(SIM_YAML),
            "-p",
            f"model:={tiny_export}",
        ],
    )
    graph.wait(
        lambda: names_have(graph, "/apt_policy", "/apt_policy_poll") or proc.poll() is not None,
        120,
        "/apt_policy and its poller",
    )
    assert proc.poll() is None, processes.output("policy_node")[-3000:]
    names = graph.names()
    assert names["/apt_policy"] == 1, names
    assert names["/apt_policy_poll"] == 1, names


@pytest.mark.parametrize("times", [2, 3])
def test_fake_franka_completes_its_shutdown_through_repeated_sigint(
    processes: Any, graph: GraphProbe, tmp_path: Path, times: int
) -> None:
    log = tmp_path / "arrivals.json"
    proc = processes.start(
        "fake_franka",
        [*FAKE_FRANKA, "--ros-args", "-r", "__node:=fake_franka", "-p", f"arrival_log:={log}"],
    )
    graph.wait_spinning("/fake_franka", proc)
    assert proc.poll() is None, processes.output("fake_franka")
    code = _ctrl_c(proc, times)
    out = processes.output("fake_franka")
    assert code == 0, out[-3000:]
    assert "[fake_franka] summary: " in out, out[-3000:]
    assert json.loads(log.read_text())["clock"] == "monotonic"
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.parametrize("times", [2, 3])
def test_policy_node_completes_its_shutdown_through_repeated_sigint(
    processes: Any, graph: GraphProbe, tiny_export: Path, times: int
) -> None:
    shm_before = _shm_files()
    proc = processes.start(
        "policy_node",
        [
            "apt-policy-node",
            "--ros-args",
            "--params-file",
            str(SIM_YAML),
            "-p",
            f"model:={tiny_export}",
            "-p",
            "instruction:=reach the red block",
        ],
    )
    graph.wait_spinning("/apt_policy", proc)
    assert proc.poll() is None, processes.output("policy_node")[-3000:]
    children = _children(proc.pid)
    assert children, "no inference process"
    code = _ctrl_c(proc, times)
    out = processes.output("policy_node")
    assert code == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert not [c for c in children if _alive(c)], "inference process left running"
    assert _shm_files() <= shm_before, "shared memory file left in /dev/shm"
