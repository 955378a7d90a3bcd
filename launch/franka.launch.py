"""APT policy on a real Franka FR3: franka_bringup + realsense2_camera (when installed) + the policy node.

    ros2 launch apt_policy franka.launch.py robot_ip:=172.16.0.2 model:=/opt/apt/export
    ros2 launch apt_policy franka.launch.py use_fake_hardware:=true model:=/opt/apt/export \
        start_realsense:=false
    ros2 launch apt_policy franka.launch.py robot_ip:=172.16.0.2 backend:=remote   # model on a GPU host
        (with inference.launch.py on the GPU host; docs/DEPLOY.md, "Remote inference")

The node reads ``params_file`` (default: the installed config/franka.yaml); the launch arguments ``model``,
``backend``, ``control_rate`` and ``cameras`` override it when they are not empty. ``robot_ip``,
``robot_type``, ``use_fake_hardware`` and ``load_gripper`` go to franka_bringup's franka.launch.py;
``camera_serial`` and ``color_profile`` go to realsense2_camera's rs_launch.py. An included package that is
not installed is skipped with a log line. Bad arguments (a params_file that cannot be read, a boolean that is
not true/false, a rate that is not a number, real hardware without robot_ip) stop the launch before anything
starts (checks: apt_policy.ros.launch_args); when the policy node exits, the whole launch ends (non-zero
when the node failed). franka_bringup does not load a joint_trajectory_controller: spawn the controller
named in ``trajectory_topic`` (default ``fr3_arm_controller``) yourself, see docs/INTERFACES.md.
"""

from __future__ import annotations

import os

from apt_policy.ros.launch_args import (
    franka_bringup_arguments,
    node_overrides,
    package_share,
    params_file,
    parse_bool,
    policy_exit_failed,
    policy_exit_message,
    realsense_arguments,
)
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription

PACKAGE = "apt_policy"

# name -> (default, description); every argument maps to a node parameter or an included launch argument
ARGUMENTS = {
    "robot_ip": ("", "Franka control IP (franka_bringup robot_ip); required with real hardware."),
    "robot_type": ("fr3", "franka_bringup robot_type (also passed as arm_id, its name in older releases)."),
    "use_fake_hardware": ("false", "franka_bringup use_fake_hardware: mock components instead of the arm."),
    "load_gripper": ("true", "franka_bringup load_gripper: start the franka_gripper node."),
    "model": ("", "Exported model directory (node parameter model); empty: keep params_file's."),
    "backend": ("", "Inference backend auto|tensorrt|onnxruntime|torch|remote (node parameter backend)."),
    "remote_server": ("", "backend remote: the inference node's name (node parameter remote_server)."),
    "remote_image_encoding": ("", "backend remote: jpeg or rgb8 (node parameter remote_image_encoding)."),
    "control_rate": ("", "Command rate in Hz (node parameter control_rate); empty: keep params_file's."),
    "cameras": ("", "Comma-separated camera image topics (node parameter camera_topics)."),
    "autostart": (
        "",
        "Node parameter autostart: true configures and activates at once, false waits for "
        "lifecycle transitions; empty: keep params_file's.",
    ),
    "params_file": ("", "Node parameter file (must exist); empty: <apt_policy share>/config/franka.yaml."),
    "start_franka_bringup": ("true", "Include franka_bringup/launch/franka.launch.py when installed."),
    "start_realsense": ("true", "Include realsense2_camera/launch/rs_launch.py when installed."),
    "camera_serial": ("", "realsense2_camera serial_no (empty: the first camera found)."),
    "color_profile": ("640x480x30", "realsense2_camera rgb_camera.color_profile."),
}
# launch argument -> node parameter it overrides (when not empty)
NODE_PARAMETERS = {
    "autostart": "autostart",
    "model": "model",
    "backend": "backend",
    "remote_server": "remote_server",
    "remote_image_encoding": "remote_image_encoding",
    "control_rate": "control_rate",
    "cameras": "camera_topics",
}
# launch argument -> argument of franka_bringup's franka.launch.py
FRANKA_BRINGUP_ARGUMENTS = {
    "robot_ip": "robot_ip",
    "robot_type": "robot_type",
    "use_fake_hardware": "use_fake_hardware",
    "load_gripper": "load_gripper",
}
# launch argument -> argument of realsense2_camera's rs_launch.py
REALSENSE_ARGUMENTS = {"camera_serial": "serial_no", "color_profile": "rgb_camera.color_profile"}
# switches and files used by this launch file itself
OWN_ARGUMENTS = ("params_file", "start_franka_bringup", "start_realsense")


def _launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    # Everything is checked before any action is made: a bad argument starts nothing.
    node_params = [params_file(values["params_file"], "franka.yaml", __file__)]
    node_params.append(node_overrides(values, NODE_PARAMETERS))
    start_bringup = parse_bool("start_franka_bringup", values["start_franka_bringup"])
    start_realsense = parse_bool("start_realsense", values["start_realsense"])
    bringup_share = package_share("franka_bringup") if start_bringup else None
    bringup_args = franka_bringup_arguments(values, FRANKA_BRINGUP_ARGUMENTS) if bringup_share else {}
    actions = []
    if start_bringup:
        share = bringup_share
        if share is None:
            actions.append(
                LogInfo(msg="franka_bringup is not installed: not starting the arm (start it yourself)")
            )
        else:
            actions.append(
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(os.path.join(share, "launch", "franka.launch.py")),
                    launch_arguments=bringup_args.items(),
                )
            )
    if start_realsense:
        share = package_share("realsense2_camera")
        if share is None:
            actions.append(LogInfo(msg="realsense2_camera is not installed: not starting the camera driver"))
        else:
            actions.append(
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(os.path.join(share, "launch", "rs_launch.py")),
                    launch_arguments=realsense_arguments(values, REALSENSE_ARGUMENTS).items(),
                )
            )
    # A managed node: launch_ros follows its lifecycle (transition events in the launch log, ChangeState
    # events); with autostart false it waits unconfigured for `ros2 lifecycle set /apt_policy configure`.
    policy = LifecycleNode(
        package=PACKAGE,
        executable="policy_node",
        name="apt_policy",
        namespace="",
        parameters=node_params,
        output="screen",
        emulate_tty=True,
    )
    actions += [policy, RegisterEventHandler(OnProcessExit(target_action=policy, on_exit=_on_policy_exit))]
    return actions


def _on_policy_exit(event, context):
    """The policy node is the point of this launch: when it exits, everything ends (non-zero on failure:
    an exception in launch makes ``ros2 launch`` log it, shut down and exit 1)."""
    message = policy_exit_message(event.returncode)
    if policy_exit_failed(event.returncode):
        return [OpaqueFunction(function=_fail, args=[message])]
    return [LogInfo(msg=message), Shutdown(reason=message)]


def _fail(context, message):
    raise RuntimeError(message)


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=t) for n, (d, t) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
