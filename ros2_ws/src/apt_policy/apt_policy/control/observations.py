"""Latest inputs of the policy (camera frames, joint state, gripper width) and the freshest consistent set.

ROS-free and thread-safe: the node's subscription callbacks (executor thread) put samples in, the
inference worker takes :meth:`ObservationBuffer.freshest` sets out, the stream thread asks
:meth:`ObservationBuffer.stale_reason`.

Two clocks per sample:

* ``stamp_s``    -- the sensor's time (message header stamp, seconds); only compared with other sensor stamps
                    (skew between cameras and state). Zero/unknown stamps fall back to the receive time.
* ``received_s`` -- ``time.monotonic()`` when the sample reached the node; ages and the observation time used
                    for latency compensation are measured on this clock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One input value with its sensor stamp and monotonic receive time (seconds)."""

    value: np.ndarray
    stamp_s: float
    received_s: float


@dataclass(frozen=True)
class ObservationSet:
    """A consistent set of inputs for one inference.

    ``t_obs`` is the monotonic receive time of the OLDEST camera frame in the set: the chunk computed from it
    is scheduled from that instant (conservative latency compensation).
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray
    t_obs: float
    stamp_s: float
    skew_s: float


@dataclass(frozen=True)
class FreshnessLimits:
    """Maximum ages (s, monotonic receive clock) and skew (s, sensor stamps) an observation set may have."""

    max_image_age_s: float = 0.2
    max_state_age_s: float = 0.05
    max_skew_s: float = 0.1
    max_gripper_age_s: float = 0.2  # franka_gripper publishes its joint states at only 15 Hz

    def __post_init__(self) -> None:
        for name in ("max_image_age_s", "max_state_age_s", "max_skew_s", "max_gripper_age_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


class StaleInputsError(Exception):
    """No observation set satisfies the freshness limits; the message says which input and by how much."""


class ObservationBuffer:
    """Latest frame per camera, a short history of joint states, and the latest gripper width.

    ``cameras``: the model's camera names (every one is required). ``joint_dim``: arm joints expected.
    ``use_gripper``: append the gripper width to the state (the model's state has one more value).
    """

    def __init__(
        self,
        cameras: Sequence[str],
        joint_dim: int,
        use_gripper: bool,
        limits: FreshnessLimits | None = None,
        state_history: int = 64,
    ) -> None:
        if not cameras:
            raise ValueError("at least one camera is required")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names must be unique, got {list(cameras)}")
        self.cameras = tuple(cameras)
        self.joint_dim = int(joint_dim)
        self.use_gripper = bool(use_gripper)
        self.limits = limits or FreshnessLimits()
        self._lock = threading.Lock()
        self._images: dict[str, Sample] = {}
        self._joints: deque[Sample] = deque(maxlen=state_history)
        self._gripper: Sample | None = None

    # -- writers (subscription callbacks) ---------------------------------------------------------------

    def put_image(self, camera: str, image: np.ndarray, stamp_s: float, received_s: float) -> None:
        """Store the newest frame of ``camera`` (H, W, 3 uint8 RGB). The array is kept, not copied."""
        if camera not in self.cameras:
            raise KeyError(f"unknown camera {camera!r}; the model expects {list(self.cameras)}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"camera {camera!r}: expected HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
        sample = Sample(image, _stamp_or(stamp_s, received_s), received_s)
        with self._lock:
            self._images[camera] = sample

    def put_joints(self, positions: np.ndarray, stamp_s: float, received_s: float) -> None:
        """Store a joint position vector (already ordered as the model expects, finite)."""
        q = np.asarray(positions, dtype=np.float64)
        if q.shape != (self.joint_dim,):
            raise ValueError(f"expected {self.joint_dim} joint positions, got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"joint positions contain NaN/inf: {q.tolist()}")
        with self._lock:
            self._joints.append(Sample(q, _stamp_or(stamp_s, received_s), received_s))

    def put_gripper(self, width: float, stamp_s: float, received_s: float) -> None:
        """Store the measured gripper width (m)."""
        if not np.isfinite(width):
            raise ValueError(f"gripper width is not finite: {width}")
        with self._lock:
            self._gripper = Sample(np.array([width], np.float64), _stamp_or(stamp_s, received_s), received_s)

    def clear_camera(self, camera: str) -> None:
        """Forget the frame of ``camera`` (e.g. after a decode error: never reuse an older frame silently)."""
        with self._lock:
            self._images.pop(camera, None)

    # -- readers ----------------------------------------------------------------------------------------

    def latest_joints(self) -> Sample | None:
        """The newest joint state sample, or None."""
        with self._lock:
            return self._joints[-1] if self._joints else None

    def latest_gripper(self) -> Sample | None:
        with self._lock:
            return self._gripper

    def ages(self, now_s: float) -> dict[str, float]:
        """Age (s) of the newest sample of every input; ``inf`` for an input never received."""
        with self._lock:
            out = {
                f"camera:{c}": now_s - self._images[c].received_s if c in self._images else np.inf
                for c in self.cameras
            }
            out["joint_state"] = now_s - self._joints[-1].received_s if self._joints else np.inf
            if self.use_gripper:
                out["gripper"] = now_s - self._gripper.received_s if self._gripper else np.inf
        return out

    def stale_reason(self, now_s: float) -> str | None:
        """Why the inputs are too old to act on (None when all are within their max age)."""
        problems = []
        for name, age in self.ages(now_s).items():
            if name.startswith("camera:"):
                limit = self.limits.max_image_age_s
            elif name == "gripper":
                limit = self.limits.max_gripper_age_s
            else:
                limit = self.limits.max_state_age_s
            if age > limit:
                problems.append(
                    f"{name} " + ("never received" if np.isinf(age) else f"{age * 1e3:.0f} ms old")
                )
        return ("stale input: " + ", ".join(problems)) if problems else None

    def freshest(self, now_s: float) -> ObservationSet:
        """The newest frame of every camera plus the joint state closest in sensor time to them.

        Raises :class:`StaleInputsError` when an input is missing, older than its max age, or the cameras and
        state are further apart than ``max_skew_s``.
        """
        reason = self.stale_reason(now_s)
        if reason:
            raise StaleInputsError(reason)
        with self._lock:
            frames = {c: self._images[c] for c in self.cameras}
            joints = list(self._joints)
            gripper = self._gripper
        cam_stamps = [s.stamp_s for s in frames.values()]
        cam_skew = max(cam_stamps) - min(cam_stamps)
        if cam_skew > self.limits.max_skew_s:
            raise StaleInputsError(
                f"camera frames {cam_skew * 1e3:.0f} ms apart (max skew "
                f"{self.limits.max_skew_s * 1e3:.0f} ms)"
            )
        ref = max(cam_stamps)
        joint = min(joints, key=lambda s: abs(s.stamp_s - ref))
        state_skew = abs(joint.stamp_s - ref)
        if state_skew > self.limits.max_skew_s:
            raise StaleInputsError(
                f"joint state {state_skew * 1e3:.0f} ms from the camera frames (max skew "
                f"{self.limits.max_skew_s * 1e3:.0f} ms)"
            )
        parts = [joint.value]
        if self.use_gripper:
            assert gripper is not None  # stale_reason checked it
            parts.append(gripper.value)
        state = np.concatenate(parts)
        return ObservationSet(
            images={c: s.value for c, s in frames.items()},
            state=state,
            t_obs=min(s.received_s for s in frames.values()),
            stamp_s=ref,
            skew_s=max(cam_skew, state_skew),
        )


def _stamp_or(stamp_s: float, received_s: float) -> float:
    """A sensor stamp, or the receive time when the sender left it unset (zero) or it is not finite."""
    return float(stamp_s) if stamp_s > 0 and np.isfinite(stamp_s) else float(received_s)
