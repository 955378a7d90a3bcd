"""ROS message <-> plain data. No state, no threads; every failure is a :class:`ConversionError` saying why.

Images: ``rgb8``/``bgr8``/``rgba8``/``bgra8``/``mono8`` are decoded with NumPy as views on ``msg.data`` (rclpy
hands ``uint8[]`` over as ``array.array``, so ``np.frombuffer`` does not copy), honouring ``step`` (row
padding). Other encodings go through cv_bridge when it is installed (imported lazily), else are rejected.
``CompressedImage`` goes through ``cv2.imdecode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from apt_policy.ros import image_cdr

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
DIRECT_ENCODINGS = frozenset(_CHANNELS)  # decoded with NumPy; the others need cv_bridge
MAX_IMAGE_PIXELS = 4096 * 4096


class ConversionError(ValueError):
    """A message that cannot be turned into valid plain data (the message says what is wrong)."""


def stamp_to_s(stamp) -> float:
    """builtin_interfaces/Time -> seconds (float)."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def s_to_stamp(seconds: float, stamp) -> None:
    """Write ``seconds`` into a builtin_interfaces/Time in place."""
    sec = int(np.floor(seconds))
    stamp.sec = sec
    stamp.nanosec = min(round((seconds - sec) * 1e9), 999_999_999)


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (a view on the message buffer where the encoding allows)."""
    h, w, step, enc = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding).lower()
    if h <= 0 or w <= 0 or h * w > MAX_IMAGE_PIXELS:
        raise ConversionError(f"image size {w}x{h} is invalid")
    channels = _CHANNELS.get(enc)
    if channels is None:
        return _via_cv_bridge(msg, enc)
    if step < w * channels:
        raise ConversionError(f"{enc} image {w}x{h}: step {step} < width*channels {w * channels}")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * h:
        raise ConversionError(f"{enc} image {w}x{h}: {data.size} bytes, expected step*height = {step * h}")
    rows = data[: step * h].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if enc in ("rgb8", "rgba8"):
        return rows[:, :, :3]
    if enc in ("bgr8", "bgra8"):
        return rows[:, :, 2::-1]
    return np.broadcast_to(rows, (h, w, 3))  # mono8: one byte shown as grey, no copy


def raw_image_to_rgb(raw: bytes) -> tuple[np.ndarray, float]:
    """A serialised sensor_msgs/Image -> (RGB, header stamp in s), read in place by ``image_cdr``.

    Bytes ``image_cdr`` cannot read are rejected with its reason and never handed to rclpy's deserialiser:
    that crashes the process on some malformed input (4 bytes ``00 00 2c b5``, a big-endian header and no
    body, segfaults Fast CDR; found by tools/fuzz_decoders.py). Encodings NumPy does not decode go through
    cv_bridge on a message rebuilt from the parsed fields.
    """
    try:
        view = image_cdr.parse_image(raw)
    except image_cdr.CdrError as exc:
        raise ConversionError(f"not a serialised sensor_msgs/Image this node reads: {exc}") from None
    if view.encoding.lower() in DIRECT_ENCODINGS:
        return image_to_rgb(view), view.stamp_s
    from sensor_msgs.msg import Image

    msg = Image(
        height=view.height,
        width=view.width,
        encoding=view.encoding,
        is_bigendian=view.is_bigendian,
        step=view.step,
        data=bytes(view.data),
    )
    return image_to_rgb(msg), view.stamp_s


def _via_cv_bridge(msg, enc: str) -> np.ndarray:
    try:
        from cv_bridge import CvBridge
    except ImportError:
        raise ConversionError(
            f"image encoding {enc!r} is not supported without cv_bridge "
            f"(supported directly: {', '.join(sorted(_CHANNELS))})"
        ) from None
    try:
        rgb = CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as exc:  # cv_bridge raises its own error types
        raise ConversionError(f"cv_bridge could not convert {enc!r} to rgb8: {exc}") from exc
    return np.asarray(rgb)


def compressed_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> (H, W, 3) uint8 RGB."""
    import cv2

    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size == 0:
        raise ConversionError("compressed image has no data")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConversionError(f"compressed image ({msg.format!r}, {buf.size} bytes) could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def joint_positions(msg, joint_names: Sequence[str]) -> np.ndarray:
    """sensor_msgs/JointState -> positions of ``joint_names`` in that order (the message: any order)."""
    names = list(msg.name)
    positions = np.asarray(msg.position, dtype=np.float64)
    if positions.shape != (len(names),):
        raise ConversionError(f"joint state has {len(names)} names but {positions.size} positions")
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):  # which value would count is anyone's guess: refuse the message
        duplicated = sorted({n for n in names if names.count(n) > 1})
        raise ConversionError(f"joint state names joints more than once: {duplicated}")
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise ConversionError(f"joint state is missing joints {missing} (has {names})")
    q = positions[[index[n] for n in joint_names]]
    if not np.all(np.isfinite(q)):
        bad = [n for n, v in zip(joint_names, q, strict=True) if not np.isfinite(v)]
        raise ConversionError(f"joint state has NaN/inf positions for {bad}")
    return q


def gripper_width(msg, finger_names: Sequence[str]) -> float:
    """Gripper sensor_msgs/JointState (one position per finger, m) -> opening width (sum of the fingers)."""
    return float(np.sum(joint_positions(msg, finger_names)))


def fill_trajectory(
    msg,
    joint_names: Sequence[str],
    times_s: np.ndarray,
    positions: np.ndarray,
    velocities: np.ndarray | None,
    point_type,
    stamp_s: float = 0.0,
) -> None:
    """Fill a trajectory_msgs/JointTrajectory from plain arrays.

    ``times_s`` (n,) strictly increasing and > 0; ``positions``/``velocities`` (n, dof); ``stamp_s`` the
    header stamp (0 = "start now" for a joint_trajectory_controller).
    """
    s_to_stamp(stamp_s, msg.header.stamp)
    msg.joint_names = list(joint_names)
    points = []
    for k in range(positions.shape[0]):
        p = point_type()
        p.positions = positions[k].tolist()
        if velocities is not None:
            p.velocities = velocities[k].tolist()
        t = float(times_s[k])
        p.time_from_start.sec = int(t)
        p.time_from_start.nanosec = round((t - int(t)) * 1e9)
        points.append(p)
    msg.points = points


def fill_action_chunk(
    msg,
    *,
    stamp_s: float,
    chunk_id: int,
    instruction: str,
    action_names: Sequence[str],
    dt: float,
    actions: np.ndarray,
    inference_ms: float,
    backend: str,
) -> None:
    """Fill an apt_msgs/ActionChunk from a (horizon, action_dim) array."""
    s_to_stamp(stamp_s, msg.header.stamp)
    msg.chunk_id = int(chunk_id)
    msg.instruction = instruction
    msg.action_names = list(action_names)
    msg.dt = float(dt)
    msg.horizon, msg.action_dim = (int(x) for x in actions.shape)
    msg.actions = np.ascontiguousarray(actions, dtype=np.float32).ravel().tolist()
    msg.inference_time_ms = float(inference_ms)
    msg.backend = backend


def fill_chunk_inputs(
    msg,
    *,
    stamp_s: float,
    chunk_id: int,
    action_dim: int,
    state_dim: int,
    state: np.ndarray,
    prefix: np.ndarray | None,
    history: Any,
) -> None:
    """Fill an apt_msgs/ChunkInputs: the policy's state input, the RTC prefix rows (None: none) and a
    ``runtime.policy.History`` (None: a stateless policy) that one chunk was computed from."""
    s_to_stamp(stamp_s, msg.header.stamp)
    msg.chunk_id = int(chunk_id)
    msg.state = np.asarray(state, np.float32).reshape(-1).tolist()
    msg.action_dim, msg.state_dim = int(action_dim), int(state_dim)
    rows = np.zeros((0, action_dim), np.float32) if prefix is None else np.asarray(prefix, np.float32)
    msg.prefix_rows = int(rows.shape[0])
    msg.prefix = rows.reshape(-1).tolist()
    if history is not None:
        valid = np.asarray(history.valid, bool).reshape(-1)
        msg.history_steps = int(valid.shape[0])
        msg.history_states = np.asarray(history.states, np.float32).reshape(-1).tolist()
        msg.history_actions = np.asarray(history.actions, np.float32).reshape(-1).tolist()
        msg.history_valid = valid.tolist()


def diagnostic_values(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """Key/value pairs for diagnostic_msgs/KeyValue, floats shortened."""
    out = []
    for k, v in values.items():
        out.append((k, f"{v:.4g}" if isinstance(v, float) else str(v)))
    return out


def node_diagnostics(msg, name: str = "apt_policy") -> dict[str, float] | None:
    """The numeric values of the first status in a DiagnosticArray whose name contains ``name``."""
    for status in msg.status:
        if name not in status.name:
            continue
        values: dict[str, float] = {}
        for kv in status.values:
            try:
                values[kv.key] = float(kv.value)
            except ValueError:
                continue
        return values
    return None
