"""OpenCV renderer of the reaching scene: table, shaded cubes, the arm from FK, a visible gripper.

A painter's algorithm over a few dozen primitives (polygons and capsules sorted by camera depth) with
anti-aliased OpenCV drawing; about a millisecond per frame at 640x480. Output: RGB ``uint8 (H, W, 3)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from apt_policy.robots.franka import joint_frames
from apt_policy.tasks.camera import PinholeCamera
from apt_policy.tasks.scene import BLOCK_SIZE, COLORS, Scene

__all__ = ["render"]

_NEAR = 0.05  # near clipping plane (m)
_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_SCALE = 1 << _SHIFT
_LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])
_TABLE = np.array([[-0.3, -0.75, 0.0], [1.05, -0.75, 0.0], [1.05, 0.75, 0.0], [-0.3, 0.75, 0.0]])
_TABLE_COLOR = (196, 172, 138)
_LINK_COLOR = (235, 235, 238)
_JOINT_COLOR = (70, 72, 78)
_FINGER_COLOR = (30, 30, 34)
_CUBE_FACES = ((0, 2, 6, 4), (1, 5, 7, 3), (0, 4, 5, 1), (2, 3, 7, 6), (0, 1, 3, 2), (4, 6, 7, 5))


@dataclass
class _Prim:
    depth: float
    kind: str  # "poly" | "capsule" | "disk"
    points: np.ndarray  # world points
    color: tuple[int, int, int]
    radius: float = 0.0


@lru_cache(maxsize=8)
def _background(height: int, width: int) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array([150, 160, 175], np.float32), np.array([205, 208, 212], np.float32)
    img = top + (bottom - top) * rows
    return np.broadcast_to(img, (height, width, 3)).astype(np.uint8)


def _clip_polygon(pc: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon against z >= _NEAR."""
    out = []
    n = len(pc)
    for i in range(n):
        a, b = pc[i], pc[(i + 1) % n]
        a_in, b_in = a[2] >= _NEAR, b[2] >= _NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (_NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def _shade(color: tuple[int, int, int], normal: np.ndarray) -> tuple[int, int, int]:
    k = 0.45 + 0.55 * max(0.0, float(normal @ _LIGHT))
    return tuple(int(min(255, c * k)) for c in color)  # type: ignore[return-value]


def _arm_primitives(q: np.ndarray, gripper_width: float) -> list[_Prim]:
    F = joint_frames(q)
    origin = lambda i: F[i, :3, 3]  # noqa: E731
    base = np.zeros(3)
    elbow = F[3, :3, 3] + F[3, :3, :3] @ np.array([-0.0825, 0.0, 0.0])  # link 4 -> 5 offset
    prims = [
        _Prim(0, "capsule", np.array([base, origin(1)]), _LINK_COLOR, 0.06),
        _Prim(0, "capsule", np.array([origin(1), origin(2)]), _LINK_COLOR, 0.06),
        _Prim(0, "capsule", np.array([origin(2), origin(3)]), _LINK_COLOR, 0.055),
        _Prim(0, "capsule", np.array([origin(3), elbow]), _LINK_COLOR, 0.055),
        _Prim(0, "capsule", np.array([elbow, origin(4)]), _LINK_COLOR, 0.05),
        _Prim(0, "capsule", np.array([origin(5), origin(6)]), _LINK_COLOR, 0.045),
        _Prim(0, "capsule", np.array([origin(6), origin(7)]), _LINK_COLOR, 0.04),
    ]
    for i in (1, 3, 4, 5):
        prims.append(_Prim(0, "disk", origin(i)[None], _JOINT_COLOR, 0.045))
    tcp = F[8]
    y_axis, z_axis, p_tcp = tcp[:3, 1], tcp[:3, 2], tcp[:3, 3]
    hand_center = origin(7) + z_axis * 0.035
    prims.append(
        _Prim(
            0,
            "capsule",
            np.array([hand_center - y_axis * 0.09, hand_center + y_axis * 0.09]),
            (90, 92, 100),
            0.03,
        )
    )
    half = float(np.clip(gripper_width, 0.0, 0.08)) / 2 + 0.008
    for sign in (-1.0, 1.0):
        tip = p_tcp + sign * y_axis * half
        prims.append(_Prim(0, "capsule", np.array([tip - z_axis * 0.05, tip]), _FINGER_COLOR, 0.009))
    return prims


def _block_primitives(scene: Scene, eye: np.ndarray) -> list[_Prim]:
    prims = []
    for block in scene.blocks:
        corners = block.corners()
        center = block.center
        for face in _CUBE_FACES:
            pts = corners[list(face)]
            face_center = pts.mean(axis=0)
            normal = face_center - center
            normal /= np.linalg.norm(normal)
            if normal @ (eye - face_center) <= 0:  # back face
                continue
            prims.append(_Prim(0, "poly", pts, _shade(COLORS[block.color], normal)))
    return prims


def _draw(img: np.ndarray, cam: PinholeCamera, T_cw: np.ndarray, prim: _Prim) -> None:
    pc = prim.points @ T_cw[:3, :3].T + T_cw[:3, 3]
    if prim.kind == "poly":
        pc = _clip_polygon(pc)
        if len(pc) < 3:
            return
        uv = np.round(cam.project_camera_points(pc) * _SCALE).astype(np.int32)
        cv2.fillPoly(img, [uv], prim.color, cv2.LINE_AA, _SHIFT)
        return
    if np.any(pc[:, 2] < _NEAR):
        return
    uv = np.round(cam.project_camera_points(pc) * _SCALE).astype(np.int32)
    r_px = math.sqrt(cam.fx * cam.fy) * prim.radius / float(pc[:, 2].mean())
    if prim.kind == "disk":
        cv2.circle(img, tuple(uv[0]), int(r_px * _SCALE), prim.color, -1, cv2.LINE_AA, _SHIFT)
        return
    dark = tuple(int(c * 0.62) for c in prim.color)
    p0, p1 = tuple(uv[0]), tuple(uv[1])
    cv2.line(img, p0, p1, dark, max(1, round(2 * r_px)), cv2.LINE_AA, _SHIFT)
    cv2.line(img, p0, p1, prim.color, max(1, round(1.3 * r_px)), cv2.LINE_AA, _SHIFT)


def _shadows(img: np.ndarray, cam: PinholeCamera, T_cw: np.ndarray, scene: Scene, q: np.ndarray) -> None:
    """Soft vertical-light shadows of the blocks and the hand on the table (a strong depth cue)."""
    layer = img.copy()
    dark = (95, 85, 70)
    for block in scene.blocks:
        foot = block.corners()[:4].copy()
        foot[:, :2] += 0.006
        foot[:, 2] = 0.0
        _draw(layer, cam, T_cw, _Prim(0, "poly", foot[[0, 1, 3, 2]], dark))
    F = joint_frames(q)
    for p, r in ((F[8, :3, 3], 0.03), (F[7, :3, 3], 0.045)):
        flat = np.array([[p[0], p[1], 0.0]])
        _draw(layer, cam, T_cw, _Prim(0, "disk", flat, dark, r))
    cv2.addWeighted(layer, 0.55, img, 0.45, 0.0, dst=img)


_STATIC_CACHE: dict[tuple, np.ndarray] = {}


def _static_layer(camera: PinholeCamera, T_cw: np.ndarray) -> np.ndarray:
    """Background and table (with a faint grid for depth perception) as seen by ``camera`` (cached)."""
    key = (
        camera.width,
        camera.height,
        camera.fx,
        camera.fy,
        camera.cx,
        camera.cy,
        camera.world_from_camera.tobytes(),
    )
    img = _STATIC_CACHE.get(key)
    if img is None:
        img = _background(camera.height, camera.width).copy()
        _draw(img, camera, T_cw, _Prim(0, "poly", _TABLE, _TABLE_COLOR))
        for x in np.arange(-0.2, 1.01, 0.2):
            line = np.array([[x, -0.75, 0.0], [x, 0.75, 0.0]])
            _draw(img, camera, T_cw, _Prim(0, "capsule", line, (180, 157, 124), 0.002))
        img.setflags(write=False)
        if len(_STATIC_CACHE) > 16:
            _STATIC_CACHE.clear()
        _STATIC_CACHE[key] = img
    return img


def render(
    scene: Scene,
    q: np.ndarray,
    camera: PinholeCamera,
    gripper_width: float = 0.08,
) -> np.ndarray:
    """RGB ``uint8 (camera.height, camera.width, 3)`` image of ``scene`` with the arm at joints ``q``."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (7,) or not np.all(np.isfinite(q)):
        raise ValueError(f"render needs 7 finite joint positions, got {q!r}")
    T_cw = np.linalg.inv(camera.world_from_camera)
    img = _static_layer(camera, T_cw).copy()
    _shadows(img, camera, T_cw, scene, q)
    eye = camera.position
    prims = _block_primitives(scene, eye) + _arm_primitives(q, gripper_width)
    for prim in prims:
        prim.depth = float(np.linalg.norm(prim.points.mean(axis=0) - eye))
    for prim in sorted(prims, key=lambda p: -p.depth):
        _draw(img, camera, T_cw, prim)
    return img


def block_pixel(scene: Scene, color: str, camera: PinholeCamera) -> tuple[float, float]:
    """Pixel (u, v) of the centre of a block's top face, e.g. for tests and overlays."""
    top = scene.block(color).center + np.array([0.0, 0.0, BLOCK_SIZE / 2])
    uv, _ = camera.project(top)
    return float(uv[0]), float(uv[1])
