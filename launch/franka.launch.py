"""APT policy on a real Franka FR3: franka_bringup + realsense2_camera (when installed) + the policy node.

    ros2 launch apt_policy franka.launch.py robot_ip:=172.16.0.2 model:=/opt/apt/export
    ros2 launch apt_policy franka.launch.py use_fake_hardware:=true model:=/opt/apt/export \
        start_realsense:=false

The node reads ``params_file`` (default: the installed config/franka.yaml); the launch arguments ``model``,
``backend``, ``control_rate`` and ``cameras`` override it when they are not empty. ``robot_ip``,
``use_fake_hardware`` and ``load_gripper`` go to franka_bringup's franka.launch.py; ``camera_serial`` and
``color_profile`` go to realsense2_camera's rs_launch.py. An included package that is not installed is
skipped with a log line. franka_bringup does not load a joint_trajectory_controller: spawn the controller
named in ``trajectory_topic`` (default ``fr3_arm_controller``) yourself, see docs/INTERFACES.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "apt_policy"

# name -> (default, description); every argument maps to a node parameter or an included launch argument
ARGUMENTS = {
    "robot_ip": ("", "Franka control IP (franka_bringup robot_ip); required with real hardware."),
    "use_fake_hardware": ("false", "franka_bringup use_fake_hardware: mock components instead of the arm."),
    "load_gripper": ("true", "franka_bringup load_gripper: start the franka_gripper node."),
    "model": ("", "Exported model directory (node parameter model); empty: keep params_file's."),
    "backend": ("", "Inference backend auto|tensorrt|onnxruntime|torch (node parameter backend)."),
    "control_rate": ("", "Command rate in Hz (node parameter control_rate); empty: keep params_file's."),
    "cameras": ("", "Comma-separated camera image topics (node parameter camera_topics)."),
    "params_file": ("", "Node parameter file; empty: <apt_policy share>/config/franka.yaml."),
    "start_franka_bringup": ("true", "Include franka_bringup/launch/franka.launch.py when installed."),
    "start_realsense": ("true", "Include realsense2_camera/launch/rs_launch.py when installed."),
    "camera_serial": ("", "realsense2_camera serial_no (empty: the first camera found)."),
    "color_profile": ("640x480x30", "realsense2_camera rgb_camera.color_profile."),
}
# launch argument -> node parameter it overrides (when not empty)
NODE_PARAMETERS = {
    "model": "model",
    "backend": "backend",
    "control_rate": "control_rate",
    "cameras": "camera_topics",
}
# launch argument -> argument of franka_bringup's franka.launch.py
FRANKA_BRINGUP_ARGUMENTS = {
    "robot_ip": "robot_ip",
    "use_fake_hardware": "use_fake_hardware",
    "load_gripper": "load_gripper",
}
# launch argument -> argument of realsense2_camera's rs_launch.py
REALSENSE_ARGUMENTS = {"camera_serial": "serial_no", "color_profile": "rgb_camera.color_profile"}
# switches and files used by this launch file itself
OWN_ARGUMENTS = ("params_file", "start_franka_bringup", "start_realsense")


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
        if not text:
            continue
        if param == "control_rate":
            out[param] = float(text)
        elif param == "camera_topics":
            out[param] = [t.strip() for t in text.split(",") if t.strip()]
        else:
            out[param] = text
    return out


def realsense_arguments(values: dict[str, str]) -> dict[str, str]:
    """rs_launch.py arguments from the non-empty launch arguments; a digits-only serial gets realsense-ros'
    ``_`` prefix, or launch would turn it into an integer (and drop leading zeros)."""
    out = {}
    for arg, rs_arg in REALSENSE_ARGUMENTS.items():
        text = values.get(arg, "").strip()
        if not text:
            continue
        if rs_arg == "serial_no" and text.isdigit():
            text = "_" + text
        out[rs_arg] = text
    return out


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    actions = []
    if _truthy(values["start_franka_bringup"]):
        share = package_share("franka_bringup")
        if share is None:
            actions.append(
                LogInfo(msg="franka_bringup is not installed: not starting the arm (start it yourself)")
            )
        else:
            actions.append(
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(os.path.join(share, "launch", "franka.launch.py")),
                    launch_arguments={v: values[k] for k, v in FRANKA_BRINGUP_ARGUMENTS.items()}.items(),
                )
            )
    if _truthy(values["start_realsense"]):
        share = package_share("realsense2_camera")
        if share is None:
            actions.append(LogInfo(msg="realsense2_camera is not installed: not starting the camera driver"))
        else:
            actions.append(
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(os.path.join(share, "launch", "rs_launch.py")),
                    launch_arguments=realsense_arguments(values).items(),
                )
            )
    params_file = values["params_file"] or default_params_file("franka.yaml")
    actions.append(
        Node(
            package=PACKAGE,
            executable="policy_node",
            name="apt_policy",
            parameters=[params_file, node_overrides(values)],
            output="screen",
            emulate_tty=True,
        )
    )
    return actions


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=t) for n, (d, t) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
