"""Franka FR3 / Panda descriptions: joint names, limits and modified-DH kinematics (numpy only).

Numbers come from Franka's control-parameters page and libfranka's ``rate_limiting.h`` (see
``/work/shared/reference/robot_side.md``). Units: rad, rad/s, rad/s², rad/s³, metres.

Kinematics use the modified Denavit-Hartenberg convention (Craig): the transform from frame ``i-1`` to
frame ``i`` is ``RotX(alpha) · TransX(a) · RotZ(q_i) · TransZ(d)`` with the row ``i`` of ``DH_TABLE``.
The Franka Hand TCP sits 0.1034 m further along the flange z axis, rotated -π/4 about it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DH_TABLE",
    "FLANGE_D",
    "FR3",
    "HAND_TCP_OFFSET",
    "HAND_TCP_ROTATION",
    "PANDA",
    "READY_POSE",
    "IKResult",
    "RobotProfile",
    "available_profiles",
    "flange_pose",
    "forward_kinematics",
    "get_profile",
    "inverse_kinematics",
    "jacobian",
    "joint_frames",
    "tcp_pose",
]

# (a, d, alpha) per joint, modified DH, from Franka's documentation.
DH_TABLE = np.array(
    [
        [0.0, 0.333, 0.0],
        [0.0, 0.0, -math.pi / 2],
        [0.0, 0.316, math.pi / 2],
        [0.0825, 0.0, math.pi / 2],
        [-0.0825, 0.384, -math.pi / 2],
        [0.0, 0.0, math.pi / 2],
        [0.088, 0.0, math.pi / 2],
    ],
    dtype=np.float64,
)
FLANGE_D = 0.107
HAND_TCP_OFFSET = 0.1034
HAND_TCP_ROTATION = -math.pi / 4

READY_POSE = np.array([0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4])

_ARRAY_FIELDS = ("position_lower", "position_upper", "velocity", "acceleration", "jerk", "ready_pose")


@dataclass(frozen=True, eq=False)
class RobotProfile:
    """Everything the stack needs to know about one arm: names, limits, a home pose.

    Arrays are float64, shape ``(dof,)``, read-only. Build variants with :meth:`with_overrides`.
    """

    name: str
    joint_names: tuple[str, ...]
    position_lower: np.ndarray
    position_upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray
    ready_pose: np.ndarray
    gripper_joint_names: tuple[str, ...]
    max_gripper_width: float = 0.08

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(str(n) for n in self.joint_names))
        object.__setattr__(self, "gripper_joint_names", tuple(str(n) for n in self.gripper_joint_names))
        dof = len(self.joint_names)
        if dof == 0 or len(set(self.joint_names)) != dof:
            raise ValueError(f"{self.name}: joint_names must be non-empty and unique, got {self.joint_names}")
        for field in _ARRAY_FIELDS:
            raw = getattr(self, field)
            arr = np.array(raw, dtype=np.float64).reshape(-1) if np.ndim(raw) else None
            if arr is None:  # a scalar applies to every joint
                arr = np.full(dof, float(raw))
            if arr.shape != (dof,):
                raise ValueError(f"{self.name}: {field} needs {dof} values, got {arr.shape[0]}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{self.name}: {field} must be finite, got {arr.tolist()}")
            arr.setflags(write=False)
            object.__setattr__(self, field, arr)
        if np.any(self.position_lower >= self.position_upper):
            raise ValueError(f"{self.name}: position_lower must be < position_upper on every joint")
        for field in ("velocity", "acceleration", "jerk"):
            if np.any(getattr(self, field) <= 0):
                values = getattr(self, field).tolist()
                raise ValueError(f"{self.name}: {field} limits must be > 0, got {values}")
        if not self.within_limits(self.ready_pose):
            ready = self.ready_pose.tolist()
            raise ValueError(f"{self.name}: ready_pose {ready} is outside the position limits")
        width = float(self.max_gripper_width)
        if not (0 < width <= 0.2):
            raise ValueError(f"{self.name}: max_gripper_width must be in (0, 0.2] m, got {width}")
        object.__setattr__(self, "max_gripper_width", width)

    @property
    def dof(self) -> int:
        return len(self.joint_names)

    def within_limits(self, q: np.ndarray, tol: float = 0.0) -> bool:
        """True when every joint of ``q`` is finite and inside ``[lower - tol, upper + tol]``."""
        q = np.asarray(q, dtype=np.float64)
        return bool(
            q.shape == (self.dof,)
            and np.all(np.isfinite(q))
            and np.all(q >= self.position_lower - tol)
            and np.all(q <= self.position_upper + tol)
        )

    def clip_position(self, q: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """``q`` clipped into the position limits shrunk by ``margin`` on each side."""
        q = np.asarray(q, dtype=np.float64)
        return np.clip(q, self.position_lower + margin, self.position_upper - margin)

    def joint_index(self, names: Sequence[str]) -> np.ndarray:
        """Indices into this profile's joint order of ``names`` (``KeyError`` naming unknown joints)."""
        lookup = {n: i for i, n in enumerate(self.joint_names)}
        missing = [n for n in names if n not in lookup]
        if missing:
            raise KeyError(f"unknown joints for {self.name}: {missing}; expected {list(self.joint_names)}")
        return np.array([lookup[n] for n in names], dtype=np.int64)

    def with_overrides(self, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> RobotProfile:
        """A copy with fields replaced (e.g. from YAML); values are validated like a new profile.

        Limit fields accept a list of ``dof`` numbers or one number for every joint. Tightening is the
        expected use; a warning-free widening beyond the hardware table is refused for the velocity,
        acceleration and jerk limits and the position range.
        """
        changes = {**(overrides or {}), **kwargs}
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ValueError(f"unknown robot profile fields {unknown}; valid: {sorted(valid)}")
        new = dataclasses.replace(self, **changes)
        for field in ("velocity", "acceleration", "jerk"):
            if np.any(getattr(new, field) > getattr(self, field) + 1e-12):
                limit = getattr(self, field).tolist()
                raise ValueError(f"{field} override exceeds the {self.name} hardware limits {limit}")
        if np.any(new.position_lower < self.position_lower - 1e-12) or np.any(
            new.position_upper > self.position_upper + 1e-12
        ):
            raise ValueError(f"position override widens the {self.name} hardware range")
        return new

    def summary(self) -> dict[str, Any]:
        """Plain-data view (lists), e.g. for logs and bundle manifests."""
        out: dict[str, Any] = {"name": self.name, "joint_names": list(self.joint_names)}
        for field in _ARRAY_FIELDS:
            out[field] = getattr(self, field).tolist()
        out["gripper_joint_names"] = list(self.gripper_joint_names)
        out["max_gripper_width"] = self.max_gripper_width
        return out


def _sym(values: Sequence[float]) -> tuple[list[float], list[float]]:
    return [-v for v in values], list(values)


_FR3_LOWER, _FR3_UPPER = _sym([2.7437, 1.7837, 2.9007, 0.0, 2.8065, 0.0, 3.0159])
_FR3_LOWER[3], _FR3_UPPER[3] = -3.0421, -0.1518
_FR3_LOWER[5], _FR3_UPPER[5] = 0.5445, 4.5169

FR3 = RobotProfile(
    name="fr3",
    joint_names=tuple(f"fr3_joint{i}" for i in range(1, 8)),
    position_lower=np.array(_FR3_LOWER),
    position_upper=np.array(_FR3_UPPER),
    velocity=np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26]),
    acceleration=np.full(7, 10.0),
    jerk=np.full(7, 5000.0),
    ready_pose=READY_POSE,
    gripper_joint_names=("fr3_finger_joint1", "fr3_finger_joint2"),
)

_PANDA_LOWER, _PANDA_UPPER = _sym([2.8973, 1.7628, 2.8973, 0.0, 2.8973, 0.0, 2.8973])
_PANDA_LOWER[3], _PANDA_UPPER[3] = -3.0718, -0.0698
_PANDA_LOWER[5], _PANDA_UPPER[5] = -0.0175, 3.7525

PANDA = RobotProfile(
    name="panda",
    joint_names=tuple(f"panda_joint{i}" for i in range(1, 8)),
    position_lower=np.array(_PANDA_LOWER),
    position_upper=np.array(_PANDA_UPPER),
    velocity=np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61]),
    acceleration=np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0]),
    jerk=np.array([7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0]),
    ready_pose=READY_POSE,
    gripper_joint_names=("panda_finger_joint1", "panda_finger_joint2"),
)

_PROFILES = {"fr3": FR3, "panda": PANDA}


def available_profiles() -> list[str]:
    return sorted(_PROFILES)


def get_profile(name: str, overrides: Mapping[str, Any] | None = None) -> RobotProfile:
    """The profile called ``name`` (``"fr3"`` or ``"panda"``, case-insensitive), optionally overridden."""
    key = str(name).strip().lower()
    if key not in _PROFILES:
        raise ValueError(f"unknown robot {name!r}; available: {available_profiles()}")
    profile = _PROFILES[key]
    return profile.with_overrides(overrides) if overrides else profile


# ---------------------------------------------------------------------------------------------- kinematics


def _dh_transform(a: float, d: float, alpha: float, theta: np.ndarray) -> np.ndarray:
    """Modified-DH link transforms for a batch of joint angles ``theta`` (shape ``(...,)``)."""
    ct, st = np.cos(theta), np.sin(theta)
    ca, sa = math.cos(alpha), math.sin(alpha)
    T = np.zeros((*theta.shape, 4, 4))
    T[..., 0, 0], T[..., 0, 1], T[..., 0, 3] = ct, -st, a
    T[..., 1, 0], T[..., 1, 1], T[..., 1, 2], T[..., 1, 3] = st * ca, ct * ca, -sa, -sa * d
    T[..., 2, 0], T[..., 2, 1], T[..., 2, 2], T[..., 2, 3] = st * sa, ct * sa, ca, ca * d
    T[..., 3, 3] = 1.0
    return T


def _tcp_from_flange() -> np.ndarray:
    c, s = math.cos(HAND_TCP_ROTATION), math.sin(HAND_TCP_ROTATION)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[2, 3] = HAND_TCP_OFFSET
    return T


_FLANGE_FROM_J7 = np.eye(4)
_FLANGE_FROM_J7[2, 3] = FLANGE_D
_TCP_FROM_FLANGE = _tcp_from_flange()


def joint_frames(q: np.ndarray) -> np.ndarray:
    """Base-frame poses of frames 1..7, flange and hand TCP: ``(..., 9, 4, 4)`` for ``q`` ``(..., 7)``."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 7:
        raise ValueError(f"expected 7 joint positions, got shape {q.shape}")
    batch = q.shape[:-1]
    frames = np.empty((*batch, 9, 4, 4))
    T = np.broadcast_to(np.eye(4), (*batch, 4, 4))
    for i, (a, d, alpha) in enumerate(DH_TABLE):
        T = T @ _dh_transform(a, d, alpha, q[..., i])
        frames[..., i, :, :] = T
    frames[..., 7, :, :] = T @ _FLANGE_FROM_J7
    frames[..., 8, :, :] = frames[..., 7, :, :] @ _TCP_FROM_FLANGE
    return frames


def forward_kinematics(q: np.ndarray, tcp: bool = True) -> np.ndarray:
    """4x4 base-frame pose of the hand TCP (``tcp=True``) or the flange, batched over leading axes."""
    return joint_frames(q)[..., 8 if tcp else 7, :, :]


def tcp_pose(q: np.ndarray) -> np.ndarray:
    return forward_kinematics(q, tcp=True)


def flange_pose(q: np.ndarray) -> np.ndarray:
    return forward_kinematics(q, tcp=False)


def jacobian(q: np.ndarray, tcp: bool = True) -> np.ndarray:
    """Geometric Jacobian ``(6, 7)`` (linear rows first) of the TCP or flange in the base frame."""
    frames = joint_frames(q)
    p_end = frames[8 if tcp else 7, :3, 3]
    J = np.empty((6, 7))
    for i in range(7):
        z, p = frames[i, :3, 2], frames[i, :3, 3]
        J[:3, i] = np.cross(z, p_end - p)
        J[3:, i] = z
    return J


def _angle_to_down(pose: np.ndarray) -> float:
    """Angle (rad) between the pose's z axis and the world's -z axis."""
    z = pose[:3, 2]
    return float(math.atan2(math.hypot(z[0], z[1]), -z[2]))


@dataclass(frozen=True)
class IKResult:
    """Outcome of :func:`inverse_kinematics`: joint positions (always within limits) and residuals."""

    q: np.ndarray
    success: bool
    position_error: float
    orientation_error: float
    iterations: int


def inverse_kinematics(
    profile: RobotProfile,
    target_position: np.ndarray,
    q_init: np.ndarray | None = None,
    *,
    tool_down: bool = False,
    q_rest: np.ndarray | None = None,
    damping: float = 0.05,
    max_iterations: int = 200,
    position_tolerance: float = 1e-4,
    orientation_tolerance: float = 1e-3,
    max_step: float = 0.2,
    nullspace_gain: float = 0.1,
    limit_margin: float = 0.02,
    tcp: bool = True,
) -> IKResult:
    """Damped-least-squares IK for the TCP position, optionally with the tool z axis pointing down.

    With ``tool_down`` the TCP z axis is driven to ``(0, 0, -1)`` (yaw about it stays free). The arm's
    redundancy pulls toward ``q_rest`` (default: the ready pose) in the Jacobian null space. Every
    iterate is clipped into the position limits shrunk by ``limit_margin``, so the result is always
    valid; ``success`` says whether the tolerances were reached.
    """
    target = np.asarray(target_position, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(target)):
        raise ValueError(f"IK target must be finite, got {target}")
    q = profile.clip_position(profile.ready_pose if q_init is None else q_init, limit_margin)
    rest = profile.ready_pose if q_rest is None else np.asarray(q_rest, dtype=np.float64)
    down = np.array([0.0, 0.0, -1.0])
    pos_err = rot_err = math.inf
    it = 0
    for it in range(1, max_iterations + 1):  # noqa: B007 - reported as IKResult.iterations
        frames = joint_frames(q)
        end = frames[8 if tcp else 7]
        e_pos = target - end[:3, 3]
        J_full = jacobian(q, tcp=tcp)
        if tool_down:
            e_rot = np.cross(end[:3, 2], down)
            e = np.concatenate([e_pos, e_rot])
            J = J_full
            rot_err = _angle_to_down(end)
        else:
            e = e_pos
            J = J_full[:3]
            rot_err = 0.0
        pos_err = float(np.linalg.norm(e_pos))
        if pos_err < position_tolerance and rot_err < orientation_tolerance:
            break
        JJt = J @ J.T + (damping**2) * np.eye(J.shape[0])
        dq = J.T @ np.linalg.solve(JJt, e)
        if nullspace_gain > 0:  # exact projector, so the posture pull cannot fight the task
            null = np.eye(7) - np.linalg.pinv(J, rcond=1e-6) @ J
            dq += nullspace_gain * null @ (rest - q)
        norm = float(np.max(np.abs(dq)))
        if norm > max_step:
            dq *= max_step / norm
        q = profile.clip_position(q + dq, limit_margin)
    else:
        end = forward_kinematics(q, tcp=tcp)
        pos_err = float(np.linalg.norm(target - end[:3, 3]))
        rot_err = _angle_to_down(end) if tool_down else 0.0
    success = pos_err < position_tolerance and rot_err < orientation_tolerance
    return IKResult(
        q=q, success=bool(success), position_error=pos_err, orientation_error=rot_err, iterations=it
    )
