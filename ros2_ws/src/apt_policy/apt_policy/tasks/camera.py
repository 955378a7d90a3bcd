"""Pinhole cameras looking at the reaching table (optical frame: x right, y down, z forward)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CAMERA_PRESETS", "PinholeCamera", "look_at", "make_camera"]

# Focal length of a RealSense D435 colour stream at 640x480, in pixels.
_REFERENCE_FOCAL = 615.0
_REFERENCE_SIZE = (480, 640)  # (height, width)

# name -> (eye, target) in the robot base frame (m).
CAMERA_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "front": ((0.85, 0.0, 0.60), (0.48, 0.0, 0.0)),
    "side": ((0.50, -1.35, 0.85), (0.40, 0.0, 0.30)),
}


_UP = np.array([0.0, 0.0, 1.0])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = _UP) -> np.ndarray:
    """World-from-camera pose (4x4) of an optical frame at ``eye`` whose z axis points at ``target``."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("camera looks straight along 'up'; choose another up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """Intrinsics (pixels) and pose (``world_from_camera``, 4x4) of an undistorted camera."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_from_camera: np.ndarray

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the standard name of the intrinsic matrix
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def position(self) -> np.ndarray:
        return self.world_from_camera[:3, 3].copy()

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` in the camera's optical frame."""
        T = np.linalg.inv(self.world_from_camera)
        return np.asarray(points, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]

    def project_camera_points(self, pc: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(..., 2)`` of camera-frame points (z must be > 0)."""
        z = pc[..., 2]
        return np.stack([self.fx * pc[..., 0] / z + self.cx, self.fy * pc[..., 1] / z + self.cy], axis=-1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``(..., 2)`` and depths ``(...,)`` of world points; depth <= 0 means behind the camera."""
        pc = self.to_camera(points)
        z = pc[..., 2]
        safe = np.where(z > 1e-6, z, 1e-6)
        uv = np.stack([self.fx * pc[..., 0] / safe + self.cx, self.fy * pc[..., 1] / safe + self.cy], axis=-1)
        return uv, z


def make_camera(name: str = "front", width: int = 640, height: int = 480) -> PinholeCamera:
    """A preset camera at any resolution, always with the field of view of a D435 at 640x480.

    At another size the intrinsics are those of the 640x480 image resized to ``width x height`` (pixels
    may be non-square), so a frame rendered small for training matches what the policy sees after it
    resizes a 640x480 camera frame (``core.preprocess`` resizes without cropping).
    """
    if name not in CAMERA_PRESETS:
        raise ValueError(f"unknown camera {name!r}; presets: {sorted(CAMERA_PRESETS)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"camera size must be positive, got {width}x{height}")
    eye, target = CAMERA_PRESETS[name]
    ref_h, ref_w = _REFERENCE_SIZE
    return PinholeCamera(
        name=name,
        width=int(width),
        height=int(height),
        fx=_REFERENCE_FOCAL * width / ref_w,
        fy=_REFERENCE_FOCAL * height / ref_h,
        cx=(width - 1) / 2,
        cy=(height - 1) / 2,
        world_from_camera=look_at(np.array(eye), np.array(target)),
    )


def horizontal_fov_deg(camera: PinholeCamera) -> float:
    return math.degrees(2 * math.atan(camera.width / (2 * camera.fx)))
