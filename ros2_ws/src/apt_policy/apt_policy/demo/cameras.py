"""The demo's simulated cameras: one ``apt-fake-camera`` per live camera of the exported model.

The model's first camera is rendered on the topic ``config/sim.yaml`` names and the demo records
(``/camera/camera/color/image_raw``, the RealSense driver's default); every other camera on the topics
``realsense2_camera`` gives a camera launched with ``camera_name:=<name>`` (``/camera/<name>/color/...``).
Every fake camera takes its scene from ``/fake_camera/scene`` and reports the scene it renders on its own
latched ``~/current_scene``, so the demo can wait until all of them show an episode's scene.

A model camera is rendered from the camera pose preset of the same name (``tasks.camera.CAMERA_PRESETS``):
the pose its training images were rendered from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apt_policy.core.start_views import live_cameras
from apt_policy.demo.recording import CAMERA_TOPIC
from apt_policy.runtime.manifest import load_manifest
from apt_policy.tasks.camera import CAMERA_PRESETS

__all__ = [
    "FIRST_IMAGE_TOPIC",
    "SCENE_TOPIC",
    "SimCamera",
    "model_cameras",
    "node_camera_overrides",
    "sim_cameras",
]

SCENE_TOPIC = "/fake_camera/scene"  # where the demo's probe sends an episode's scene (sim/probe.py)
FIRST_IMAGE_TOPIC = CAMERA_TOPIC.removesuffix("/compressed")


@dataclass(frozen=True)
class SimCamera:
    """One fake camera process: the model camera it stands for and the names it uses."""

    name: str  # the model's camera name, also the pose preset it renders from
    node: str
    image_topic: str
    info_topic: str

    @property
    def current_scene_topic(self) -> str:
        return f"/{self.node}/current_scene"

    def arguments(self, scene_seed: int) -> list[str]:
        """``--ros-args`` for ``apt-fake-camera`` (after the executable)."""
        args = ["--ros-args"]
        if self.node != "fake_camera":
            args += ["-r", f"__node:={self.node}", "-r", f"/{self.node}/scene:={SCENE_TOPIC}"]
        return [
            *args,
            "-p",
            f"scene_seed:={int(scene_seed)}",
            "-p",
            f"camera_preset:={self.name}",
            "-p",
            f"image_topic:={self.image_topic}",
            "-p",
            f"camera_info_topic:={self.info_topic}",
        ]


def sim_cameras(names: Sequence[str]) -> list[SimCamera]:
    """The fake cameras for a model with cameras ``names``, in its order (see the module docstring)."""
    if not names:
        raise ValueError("the model names no camera")
    unknown = [n for n in names if n not in CAMERA_PRESETS]
    if unknown:
        raise ValueError(
            f"the demo renders only preset camera poses {sorted(CAMERA_PRESETS)}; the model's cameras"
            f" {unknown} have none (tasks/camera.py)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"camera names repeat: {list(names)}")
    first = names[0]
    cams = [
        SimCamera(
            first, "fake_camera", FIRST_IMAGE_TOPIC, FIRST_IMAGE_TOPIC.replace("image_raw", "camera_info")
        )
    ]
    for name in names[1:]:
        base = f"/camera/{name}/color"
        cams.append(SimCamera(name, f"fake_camera_{name}", f"{base}/image_raw", f"{base}/camera_info"))
    return cams


def node_camera_overrides(cameras: Sequence[SimCamera]) -> list[str]:
    """``-p`` arguments pairing the node's camera topics with the model's camera names."""
    topics = ",".join(f"'{c.image_topic}'" for c in cameras)
    names = ",".join(f"'{c.name}'" for c in cameras)
    return ["-p", f"camera_topics:=[{topics}]", "-p", f"camera_names:=[{names}]"]


def model_cameras(export: Path) -> tuple[str, ...]:
    """The cameras of an exported model that need a fake camera, from its manifest (no ONNX Runtime
    needed): its start views (``core.start_views``) are filled by the node from these."""
    names = tuple(str(c) for c in load_manifest(export, verify=False).config.get("cameras", ()))
    return live_cameras(names)
