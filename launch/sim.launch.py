"""APT policy against the simulated FR3 and camera: fake_franka + fake_camera + the policy node.

    ros2 launch apt_policy sim.launch.py model:=/path/to/export instruction:="reach the red block"

The node reads ``params_file`` (default: the installed config/sim.yaml); ``model``, ``backend``,
``control_rate`` and ``instruction`` override it when they are not empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "apt_policy"

ARGUMENTS = {
    "model": ("", "Exported model directory (node parameter model); empty: keep params_file's."),
    "backend": ("", "Inference backend auto|tensorrt|onnxruntime|torch (node parameter backend)."),
    "control_rate": ("", "Command rate in Hz (node parameter control_rate); empty: keep params_file's."),
    "instruction": ("", "Instruction to start with (node parameter instruction); empty: IDLE."),
    "params_file": ("", "Node parameter file; empty: <apt_policy share>/config/sim.yaml."),
}
# launch argument -> node parameter it overrides (when not empty)
NODE_PARAMETERS = {
    "model": "model",
    "backend": "backend",
    "control_rate": "control_rate",
    "instruction": "instruction",
}
OWN_ARGUMENTS = ("params_file",)


def package_share(package: str) -> str | None:
    """The package's share directory from the ament index, or None when it is not installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return get_package_share_directory(package)
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH at all
        return None


def default_params_file(name: str) -> str:
    """config/<name> of the installed apt_policy, else of the source tree this file lives in."""
    share = package_share(PACKAGE)
    candidates = [Path(share) / "config" / name] if share else []
    here = Path(os.path.abspath(__file__)).parent
    candidates += [here.parent / "config" / name, here.parent / "ros2_ws" / "src" / PACKAGE / "config" / name]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise FileNotFoundError(f"{name} not found in {[str(c) for c in candidates]}")


def node_overrides(values: dict[str, str]) -> dict[str, object]:
    """Typed node parameter overrides from the non-empty launch arguments in ``values``."""
    out: dict[str, object] = {}
    for arg, param in NODE_PARAMETERS.items():
        text = values.get(arg, "").strip()
        if text:
            out[param] = float(text) if param == "control_rate" else text
    return out


def _launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    params_file = values["params_file"] or default_params_file("sim.yaml")
    return [
        Node(package=PACKAGE, executable="fake_franka", name="fake_franka", output="screen"),
        Node(package=PACKAGE, executable="fake_camera", name="fake_camera", output="screen"),
        Node(
            package=PACKAGE,
            executable="policy_node",
            name="apt_policy",
            parameters=[params_file, node_overrides(values)],
            output="screen",
            emulate_tty=True,
        ),
    ]


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=t) for n, (d, t) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
