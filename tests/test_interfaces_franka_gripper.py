"""The franka_gripper action transport of GripperOutput against action servers with franka_msgs' definitions.

franka_msgs is not installable here, so the test builds the three interface definitions the gripper output
uses (GraspEpsilon.msg, Grasp.action, Move.action, copied from franka_ros2) into a package named franka_msgs
with the same rosidl tool chain as apt_msgs (cached under $APT_CACHE or <repo>/.cache), then runs, in a
process that can import it, a franka_gripper stand-in (real rclpy ActionServers on /franka_gripper/move and
/franka_gripper/grasp) and a GripperOutput in "auto" mode.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
INTERFACES = {
    "msg/GraspEpsilon.msg": "float64 inner # [m]\nfloat64 outer # [m]\n",
    "action/Grasp.action": (
        "float64 width # [m]\nGraspEpsilon epsilon\nfloat64 speed # [m/s]\nfloat64 force # [N]\n"
        "---\nbool success\nstring error\n---\n"
    ),
    "action/Move.action": (
        "float64 width  # [m]\nfloat64 speed  # [m/s]\n---\nbool success\nstring error\n---\n"
    ),
}
CMAKE = """cmake_minimum_required(VERSION 3.16)
project(franka_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(action_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME}
  "msg/GraspEpsilon.msg" "action/Grasp.action" "action/Move.action"
  DEPENDENCIES action_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
"""
PACKAGE_XML = """<?xml version="1.0"?>
<package format="3">
  <name>franka_msgs</name>
  <version>0.0.0</version>
  <description>The franka_msgs gripper actions, for tests of apt_policy's gripper output</description>
  <maintainer email="apt-ros@example.com">APT-ROS maintainers</maintainer>
  <license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>action_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""

SCRIPT = r"""
import json, threading, time
import rclpy
from rclpy.action import ActionServer, GoalResponse
from rclpy.executors import SingleThreadedExecutor
from franka_msgs.action import Grasp, Move
from apt_policy.control.gripper import GripperDecisionConfig
from apt_policy.ros.gripper_output import GripperOutput, GripperOutputSettings

rclpy.init()
log = {"move": [], "grasp": [], "rejected": 0}
client = rclpy.create_node("apt_policy")
executor = SingleThreadedExecutor()
executor.add_node(client)
spinner = threading.Thread(target=executor.spin, daemon=True)
spinner.start()
settings = GripperOutputSettings(
    output="auto", speed=0.05, force=30.0, epsilon_inner=0.004, epsilon_outer=0.06
)
out = GripperOutput(client, settings, GripperDecisionConfig(mode="binary", min_interval=0.3))
log["transport"] = out.transport

def feed(width, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.submit(width)
        time.sleep(0.02)

feed(0.08, 0.5)  # no server yet: nothing can be sent
log["failures_without_server"] = out.failures

server = rclpy.create_node("franka_gripper")
def move_goal(goal):
    if log["rejected"] == 0:  # reject the first move goal once
        log["rejected"] += 1
        return GoalResponse.REJECT
    return GoalResponse.ACCEPT
def move(handle):
    g = handle.request
    log["move"].append([time.monotonic(), g.width, g.speed])
    handle.succeed()
    return Move.Result(success=True)
def grasp(handle):
    g = handle.request
    log["grasp"].append([time.monotonic(), g.width, g.epsilon.inner, g.epsilon.outer, g.speed, g.force])
    handle.abort()
    return Grasp.Result(success=False, error="object not within epsilon")
ActionServer(server, Move, "~/move", move, goal_callback=move_goal)
ActionServer(server, Grasp, "~/grasp", grasp)
executor.add_node(server)
t0 = time.monotonic()
while not out._move_client.server_is_ready() and time.monotonic() - t0 < 20:
    time.sleep(0.05)

feed(0.08, 1.5)   # open: first goal rejected, retried once
feed(0.0, 1.5)    # close: one grasp, fails, not retried
feed(0.08, 1.0)   # open again
log["failures"] = out.failures
print("RESULT " + json.dumps(log), flush=True)
executor.shutdown()
spinner.join(5)
out.destroy()
server.destroy_node()
client.destroy_node()
rclpy.shutdown()
"""


def _cache_root() -> Path:
    env = os.environ.get("APT_CACHE")
    return Path(env).expanduser() if env else ROOT / ".cache"


@pytest.fixture(scope="module")
def franka_msgs_prefix() -> Path:
    """Install prefix of the franka_msgs gripper subset (built once, cached by content hash)."""
    digest = hashlib.sha256(
        (CMAKE + PACKAGE_XML + json.dumps(INTERFACES, sort_keys=True)).encode()
    ).hexdigest()
    root = _cache_root() / f"franka_msgs_subset-{digest[:12]}"
    install = root / "install"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (install / "share" / "franka_msgs" / "package.xml").is_file():
            src = root / "src" / "franka_msgs"
            for rel, text in {**INTERFACES, "CMakeLists.txt": CMAKE, "package.xml": PACKAGE_XML}.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_text(text)
            prefix = sys.prefix
            env = {**os.environ, "AMENT_PREFIX_PATH": prefix, "CMAKE_PREFIX_PATH": prefix}
            steps = [
                [
                    "cmake", "-S", str(src), "-B", str(root / "build"), "-Wno-dev", "-DBUILD_TESTING=OFF",
                    "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_PREFIX_PATH={prefix}",
                    f"-DCMAKE_INSTALL_PREFIX={install}", f"-DPython3_EXECUTABLE={sys.executable}",
                ],
                ["cmake", "--build", str(root / "build"), "-j", "2"],
                ["cmake", "--install", str(root / "build")],
            ]  # fmt: skip
            for cmd in steps:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
                assert proc.returncode == 0, (
                    f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
                )
    return install


def test_franka_actions_transport(franka_msgs_prefix: Path, ros_env: dict[str, str]):
    site = next(franka_msgs_prefix.glob("lib/python3*/site-packages"))
    env = {
        **ros_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), ros_env.get("PYTHONPATH", "")])),
        "LD_LIBRARY_PATH": os.pathsep.join(
            filter(None, [str(franka_msgs_prefix / "lib"), ros_env.get("LD_LIBRARY_PATH", "")])
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = json.loads(lines[-1][len("RESULT ") :])
    assert log["transport"] == "franka_actions"  # auto picks the actions when franka_msgs imports
    assert log["failures_without_server"] >= 1  # nothing sent while the server was missing
    assert log["rejected"] == 1
    # open (after one rejection and a retry), close, open: one goal each, no repeats
    assert [m[1:] for m in log["move"]] == [[0.08, 0.05], [0.08, 0.05]]
    assert [g[1:] for g in log["grasp"]] == [[0.0, 0.004, 0.06, 0.05, 30.0]]  # failed grasp not retried
    assert log["move"][0][0] < log["grasp"][0][0] < log["move"][1][0]
    assert log["failures"] >= 3  # missing server, rejection, failed grasp
    assert "ended without success" in proc.stderr and "object not within epsilon" in proc.stderr
