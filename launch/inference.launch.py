"""The GPU host's side of remote inference: the inference node serving a model to a robot over DDS.

    ros2 launch apt_policy inference.launch.py model:=/opt/apt/export            # on the GPU workstation
    ros2 launch apt_policy franka.launch.py backend:=remote robot_ip:=172.16.0.2  # on the robot PC / Jetson

The node (``apt-inference-node``, apt_policy.ros.inference_node) loads ``model`` with ``backend`` in a child
process, describes it on ``/<server_name>/info`` and answers ``/<server_name>/request`` with
``/<server_name>/chunk``; the robot's policy node (``backend: remote``, ``remote_server: <server_name>``)
keeps every decision about the arm. Both computers need the same ROS_DOMAIN_ID and a discovery range that
reaches the other one (docs/DEPLOY.md, "Remote inference"). An empty ``model`` stops the launch before
anything starts; when the inference node exits, the launch ends (non-zero when it failed).
"""

from __future__ import annotations

from apt_policy.ros.launch_args import node_overrides, policy_exit_failed, policy_exit_message
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "apt_policy"

ARGUMENTS = {
    "model": ("", "Exported model directory (or TensorRT engine dir / bundle) to serve; required."),
    "backend": ("", "Inference backend auto|tensorrt|onnxruntime|torch; empty: auto."),
    "server_name": ("apt_inference", "Node name = topic prefix; the robot's remote_server parameter."),
}
# launch argument -> inference node parameter it sets (when not empty)
NODE_PARAMETERS = {"model": "model", "backend": "backend"}
OWN_ARGUMENTS = ("server_name",)


def _launch_setup(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    if not values["model"].strip():
        raise RuntimeError("inference.launch.py: set model:=<export directory>")
    server = Node(
        package=PACKAGE,
        executable="inference_node",
        name=values["server_name"].strip() or "apt_inference",
        namespace="",
        parameters=[node_overrides(values, NODE_PARAMETERS)],
        output="screen",
        emulate_tty=True,
    )
    return [server, RegisterEventHandler(OnProcessExit(target_action=server, on_exit=_on_exit))]


def _on_exit(event, context):
    message = policy_exit_message(event.returncode)
    if policy_exit_failed(event.returncode):
        return [OpaqueFunction(function=_fail, args=[message])]
    return [LogInfo(msg=message), Shutdown(reason=message)]


def _fail(context, message):
    raise RuntimeError(message)


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(n, default_value=d, description=t) for n, (d, t) in ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
