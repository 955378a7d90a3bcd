"""APT policy against the simulated FR3 and camera: fake_franka + fake_camera + the policy node.

    ros2 launch apt_policy sim.launch.py model:=/path/to/export instruction:="reach the red block"

The node reads ``params_file`` (default: the installed config/sim.yaml); ``model``, ``backend``,
``control_rate`` and ``instruction`` override it when they are not empty. A ``params_file`` that cannot be
read or a ``control_rate`` that is not a rate stops the launch before anything starts (checks:
apt_policy.ros.launch_args); when the policy node exits, the whole launch ends (non-zero when it failed).
"""

from __future__ import annotations

from apt_policy.ros.launch_args import node_overrides, params_file, policy_exit_failed, policy_exit_message
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription

PACKAGE = "apt_policy"

ARGUMENTS = {
    "model": ("", "Exported model directory (node parameter model); empty: keep params_file's."),
    "backend": ("", "Inference backend auto|tensorrt|onnxruntime|torch (node parameter backend)."),
    "control_rate": ("", "Command rate in Hz (node parameter control_rate); empty: keep params_file's."),
    "instruction": ("", "Instruction to start with (node parameter instruction); empty: IDLE."),
    "autostart": (
        "",
        "Node parameter autostart: true configures and activates at once, false waits for "
        "lifecycle transitions; empty: keep params_file's.",
    ),
    "params_file": ("", "Node parameter file (must exist); empty: <apt_policy share>/config/sim.yaml."),
}
# launch argument -> node parameter it overrides (when not empty)
NODE_PARAMETERS = {
    "autostart": "autostart",
    "model": "model",
    "backend": "backend",
    "control_rate": "control_rate",
    "instruction": "instruction",
}
OWN_ARGUMENTS = ("params_file",)


def _launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    # Checked before any action is made: a bad argument starts nothing.
    node_params = [params_file(values["params_file"], "sim.yaml", __file__)]
    node_params.append(node_overrides(values, NODE_PARAMETERS))
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
    return [
        Node(package=PACKAGE, executable="fake_franka", name="fake_franka", output="screen"),
        Node(package=PACKAGE, executable="fake_camera", name="fake_camera", output="screen"),
        policy,
        RegisterEventHandler(OnProcessExit(target_action=policy, on_exit=_on_policy_exit)),
    ]


def _on_policy_exit(event, context):
    """Without the policy node the simulated arm and camera serve nothing: everything ends (non-zero on
    failure: an exception in launch makes ``ros2 launch`` log it, shut down and exit 1)."""
    message = policy_exit_message(event.returncode)
    if policy_exit_failed(event.returncode):
        return [OpaqueFunction(function=_fail, args=[message])]
    return [LogInfo(msg=message), Shutdown(reason=message)]


def _fail(context, message):
    raise RuntimeError(message)


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=t) for n, (d, t) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
