"""Latest inputs of the policy (camera frames, joint state, gripper width) and the freshest consistent set.

ROS-free and thread-safe: the node's subscription callbacks (executor thread) put samples in, the
inference worker takes :meth:`ObservationBuffer.freshest` sets out, the stream thread passes
:meth:`ObservationBuffer.stamps` to the controller's watchdog, which decides what is stale (the same
:class:`~apt_policy.control.watchdog.WatchdogConfig` guards the sets formed here).

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

from apt_policy.control.watchdog import MISSING, WatchdogConfig, stale_input_reason


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
    """What the buffer accepts beyond the watchdog's ages (seconds, sensor stamps).

    max_skew_s           largest spread of sensor stamps between cameras and state in one set     default 0.1
    max_stamp_offset_s   a frame whose stamp is further than this from the sensor clock's "now"    default 2.0
                         at receipt is rejected (a camera clock 10 s off would otherwise make every
                         set fail the skew check without a word)
    """

    max_skew_s: float = 0.1
    max_stamp_offset_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_skew_s", "max_stamp_offset_s"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


@dataclass(frozen=True)
class InputStamps:
    """Receive times (monotonic s) of the newest sample of every input, for the watchdog.

    ``state``: :data:`~apt_policy.control.watchdog.MISSING` before the first joint state; ``cameras``: None
    for a camera without a frame; ``gripper``: None when the model does not use the gripper width,
    ``MISSING`` before the first sample.
    """

    state: float
    cameras: Mapping[str, float | None]
    gripper: float | None


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
        watchdog: WatchdogConfig | None = None,
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
        self.watchdog = watchdog or WatchdogConfig()
        self.limits = limits or FreshnessLimits()
        self._lock = threading.Lock()
        self._images: dict[str, Sample] = {}
        self._joints: deque[Sample] = deque(maxlen=state_history)
        self._gripper: Sample | None = None

    # -- writers (subscription callbacks) ---------------------------------------------------------------

    def put_image(
        self,
        camera: str,
        image: np.ndarray,
        stamp_s: float,
        received_s: float,
        sensor_now_s: float | None = None,
    ) -> None:
        """Store the newest frame of ``camera`` (H, W, 3 uint8 RGB). The array is kept, not copied.

        ``sensor_now_s``: the sensor clock (the node's ROS clock) at receipt; a stamp further than
        ``max_stamp_offset_s`` from it is rejected (ValueError with the offset)."""
        if camera not in self.cameras:
            raise KeyError(f"unknown camera {camera!r}; the model expects {list(self.cameras)}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"camera {camera!r}: expected HxWx3 uint8 RGB, got {image.shape} {image.dtype}")
        if sensor_now_s is not None and stamp_s > 0 and np.isfinite(stamp_s):
            offset = stamp_s - sensor_now_s
            if abs(offset) > self.limits.max_stamp_offset_s:
                where = "in the future" if offset > 0 else "in the past"
                raise ValueError(
                    f"camera {camera!r}: frame stamped {abs(offset):.1f} s {where} of the node's clock "
                    f"(limit {self.limits.max_stamp_offset_s:.1f} s)"
                )
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

    def stamps(self) -> InputStamps:
        """Receive times of the newest sample of every input (what the watchdog judges)."""
        with self._lock:
            cameras = {c: (self._images[c].received_s if c in self._images else None) for c in self.cameras}
            state = self._joints[-1].received_s if self._joints else MISSING
            gripper = None
            if self.use_gripper:
                gripper = self._gripper.received_s if self._gripper is not None else MISSING
        return InputStamps(state, cameras, gripper)

    def freshest(self, now_s: float) -> ObservationSet:
        """The newest frame of every camera plus the joint state closest in sensor time to them.

        Raises :class:`StaleInputsError` when an input is missing, older than its max age, or the cameras and
        state are further apart than ``max_skew_s``.
        """
        stamps = self.stamps()
        reason = stale_input_reason(self.watchdog, now_s, stamps.state, stamps.cameras, stamps.gripper)
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
            assert gripper is not None  # the watchdog checked it
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
