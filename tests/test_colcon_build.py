"""The workspace builds with colcon, as it does on a robot inside a ROS 2 install.

Here colcon runs against the pip ROS 2 wheels in the venv; on the robot the same packages build against
/opt/ros/<distro>. Checks what `ros2 run` and `ros2 launch` need: executables in lib/apt_policy, the launch
and config files in share/apt_policy, the ament index entries, and the generated apt_msgs Python code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.ros]


def test_colcon_builds_and_installs_both_packages(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    colcon = shutil.which("colcon", path=str(venv_bin)) or shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    prefix = str(Path(sys.prefix))
    env = {
        **os.environ,
        "AMENT_PREFIX_PATH": prefix,
        "CMAKE_PREFIX_PATH": prefix,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    base = tmp_path / "ws"
    cmd = [
        colcon, "--log-base", str(base / "log"), "build",
        "--base-paths", str(REPO / "ros2_ws" / "src"),
        "--build-base", str(base / "build"), "--install-base", str(base / "install"),
        "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 packages finished" in proc.stdout

    install = base / "install"
    lib = install / "apt_policy" / "lib" / "apt_policy"
    for exe in ("policy_node", "fake_franka", "fake_camera"):
        assert (lib / exe).is_file() and os.access(lib / exe, os.X_OK), f"ros2 run apt_policy {exe} missing"
    share = install / "apt_policy" / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "apt_policy").is_file()
    assert (share / "apt_policy" / "package.xml").is_file()
    for launch_file in sorted((REPO / "launch").glob("*.launch.py")):
        installed = share / "apt_policy" / "launch" / launch_file.name
        assert installed.is_file(), f"{launch_file.name} not installed"
    for config in sorted((REPO / "ros2_ws" / "src" / "apt_policy" / "config").glob("*.yaml")):
        assert (share / "apt_policy" / "config" / config.name).is_file(), f"{config.name} not installed"
    generated = list((install / "apt_msgs").rglob("apt_msgs/msg/_action_chunk.py"))
    assert generated, "apt_msgs Python bindings were not generated"
