"""fake_camera: renders the reaching scene from the arm's joint states and publishes like realsense-ros.

Subscribes:
  /franka/joint_states              sensor_msgs/JointState (arm pose to draw; ready pose until one arrives)
  /franka_gripper/joint_states      sensor_msgs/JointState (finger positions -> gripper width)
  ~/scene                           std_msgs/String JSON ``{"blocks": [{"color", "x", "y", "yaw"}...]}`` or
                                    ``{"seed": n}``: place the blocks (invalid JSON is logged and ignored)
Publishes (realsense-ros names and encodings):
  /camera/camera/color/image_raw    sensor_msgs/Image rgb8, 640x480 at 30 Hz, frame camera_color_optical_frame
  /camera/camera/color/camera_info  sensor_msgs/CameraInfo (plumb_bob, zero distortion)
  ~/current_scene                   std_msgs/String JSON of the scene (transient local)
Services:
  ~/enable                          std_srvs/SetBool: stop / restart publishing ("camera unplugged")

Frames are rendered on a monotonic-clock thread; the image QoS is reliable (like realsense-ros' default),
which best-effort subscribers can also receive; ``qos_reliability: best_effort`` makes it best effort.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool

from apt_policy.robots.franka import get_profile
from apt_policy.ros.qos import LATCHED
from apt_policy.ros.spin import spin_node
from apt_policy.tasks.camera import PinholeCamera, make_camera
from apt_policy.tasks.render import render
from apt_policy.tasks.scene import Scene, sample_scene

_PARAMS: tuple[tuple[str, Any, str], ...] = (
    ("robot", "fr3", "Robot profile whose joint names are read from the joint states."),
    ("joint_states_topic", "/franka/joint_states", "Arm joint states to render."),
    ("gripper_states_topic", "/franka_gripper/joint_states", "Finger joint states (width = sum)."),
    ("image_topic", "/camera/camera/color/image_raw", "Colour image topic (rgb8)."),
    ("camera_info_topic", "/camera/camera/color/camera_info", "Camera info topic."),
    ("frame_id", "camera_color_optical_frame", "frame_id of images and camera info."),
    ("camera_preset", "front", "Camera pose preset (apt_policy.tasks.camera.CAMERA_PRESETS)."),
    ("width", 640, "Image width (px)."),
    ("height", 480, "Image height (px)."),
    ("fps", 30.0, "Frame rate (Hz)."),
    ("scene_seed", 0, "Seed of the block layout (replaced by messages on ~/scene)."),
    ("publish", True, "Publish frames (false simulates a stopped camera; also ~/enable)."),
    ("qos_reliability", "reliable", "Image QoS reliability: reliable | best_effort."),
)


def camera_info(camera: PinholeCamera, frame_id: str) -> CameraInfo:
    """CameraInfo of an undistorted pinhole camera."""
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = camera.width, camera.height
    info.distortion_model = "plumb_bob"
    info.d = [0.0] * 5
    info.k = camera.K.reshape(-1).tolist()
    info.r = np.eye(3).reshape(-1).tolist()
    P = np.zeros((3, 4))
    P[:, :3] = camera.K
    info.p = P.reshape(-1).tolist()
    return info


class FakeCamera(Node):
    """Renders :func:`apt_policy.tasks.render.render` frames of the current arm pose and scene."""

    def __init__(self) -> None:
        super().__init__("fake_camera")
        p = {name: self._declare(name, default, text) for name, default, text in _PARAMS}
        if p["width"] <= 0 or p["height"] <= 0 or p["fps"] <= 0:
            raise ValueError("width, height and fps must be > 0")
        if p["qos_reliability"] not in ("reliable", "best_effort"):
            raise ValueError(f"qos_reliability must be reliable or best_effort, got {p['qos_reliability']!r}")
        self.params = p
        self.profile = get_profile(p["robot"])
        self.camera = make_camera(p["camera_preset"], width=p["width"], height=p["height"])
        self._lock = threading.Lock()
        self.scene = sample_scene(int(p["scene_seed"]))
        self._q = self.profile.ready_pose.copy()
        self._width = self.profile.max_gripper_width
        self._enabled = threading.Event()
        if p["publish"]:
            self._enabled.set()
        self.frames = 0

        reliability = (
            ReliabilityPolicy.RELIABLE
            if p["qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        image_qos = QoSProfile(depth=2, reliability=reliability, history=HistoryPolicy.KEEP_LAST)
        self.image_pub = self.create_publisher(Image, p["image_topic"], image_qos)
        self.info_pub = self.create_publisher(CameraInfo, p["camera_info_topic"], image_qos)
        self.scene_pub = self.create_publisher(String, "~/current_scene", LATCHED)
        self.create_subscription(
            JointState, p["joint_states_topic"], self._on_joints, qos_profile_sensor_data
        )
        self.create_subscription(
            JointState, p["gripper_states_topic"], self._on_gripper, qos_profile_sensor_data
        )
        self.create_subscription(String, "~/scene", self._on_scene, 10)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.add_on_set_parameters_callback(self._on_params)
        self._info = camera_info(self.camera, p["frame_id"])
        self._publish_scene()

        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="fake_camera_render", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"rendering {p['width']}x{p['height']} at {p['fps']:.0f} Hz on {p['image_topic']}"
            f" (scene seed {p['scene_seed']}, camera {p['camera_preset']})"
        )

    def _declare(self, name: str, default: Any, description: str) -> Any:
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    # ------------------------------------------------------------------------------------------ inputs
    def _on_joints(self, msg: JointState) -> None:
        lookup = dict(zip(msg.name, msg.position, strict=False))
        try:
            q = np.array([lookup[n] for n in self.profile.joint_names], dtype=np.float64)
        except KeyError:
            return  # not this arm's joints
        if np.all(np.isfinite(q)):
            with self._lock:
                self._q = q

    def _on_gripper(self, msg: JointState) -> None:
        lookup = dict(zip(msg.name, msg.position, strict=False))
        fingers = [lookup.get(n) for n in self.profile.gripper_joint_names]
        if all(f is not None and np.isfinite(f) for f in fingers):
            with self._lock:
                self._width = float(sum(fingers))

    def _on_scene(self, msg: String) -> None:
        try:
            scene = Scene.from_dict(json.loads(msg.data))
        except (ValueError, KeyError, TypeError) as exc:
            self.get_logger().error(f"ignored ~/scene message: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self.scene = scene
        self.get_logger().info(f"scene set: {json.dumps(scene.to_dict())}")
        self._publish_scene()

    def _publish_scene(self) -> None:
        self.scene_pub.publish(String(data=json.dumps(self.scene.to_dict())))

    def _set_enabled(self, enabled: bool) -> None:
        if enabled:
            self._enabled.set()
        else:
            self._enabled.clear()
        self.get_logger().info("publishing" if enabled else "stopped publishing (camera disabled)")

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self._set_enabled(bool(request.data))
        response.success = True
        response.message = "publishing" if request.data else "stopped"
        return response

    def _on_params(self, params: list) -> SetParametersResult:
        for param in params:
            if param.name == "publish":
                self._set_enabled(bool(param.value))
            elif param.name in ("robot", "width", "height", "fps", "camera_preset", "image_topic"):
                return SetParametersResult(successful=False, reason=f"{param.name} is read-only after start")
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------------------- output
    def _loop(self) -> None:
        try:
            self._render_loop()
        except Exception:
            if self.context.ok():
                raise

    def _render_loop(self) -> None:
        period = 1.0 / self.params["fps"]
        next_frame = time.monotonic()
        while not self._stop.is_set():
            delay = next_frame - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            next_frame = max(next_frame + period, time.monotonic() - period)
            if not self._enabled.is_set():
                continue
            with self._lock:
                scene, q, width = self.scene, self._q.copy(), self._width
            stamp = self.get_clock().now().to_msg()  # capture time
            rgb = render(scene, q, self.camera, width)
            self.publish_frame(rgb, stamp)

    def publish_frame(self, rgb: np.ndarray, stamp: Any) -> None:
        msg = Image()
        msg.header.stamp = stamp
        msg.header.frame_id = self.params["frame_id"]
        msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
        msg.encoding = "rgb8"
        msg.is_bigendian = 0
        msg.step = msg.width * 3
        msg.data = np.ascontiguousarray(rgb).tobytes()
        self._info.header.stamp = stamp
        self.image_pub.publish(msg)
        self.info_pub.publish(self._info)
        self.frames += 1

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        elapsed = time.monotonic() - self._started
        rate = self.frames / elapsed if elapsed > 0 else 0.0
        print(f"[fake_camera] published {self.frames} frames in {elapsed:.1f} s ({rate:.1f} Hz)", flush=True)


def main(args: list[str] | None = None) -> int:
    """Entry point (``apt-fake-camera``, ``ros2 run apt_policy fake_camera``); accepts --ros-args."""
    return spin_node(FakeCamera, "fake_camera", args)


if __name__ == "__main__":
    sys.exit(main())
