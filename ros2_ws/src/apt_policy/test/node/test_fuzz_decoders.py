"""Fuzzed camera decoders: whatever bytes arrive, the node gets an RGB frame or a ConversionError (a reason).

A short seeded run of each property (hypothesis, derandomised) runs in ``make test``; the long run (>= 1M
inputs, atheris when installed) is ``python tools/fuzz_decoders.py`` (docs/NODE.md, "Fuzzing").
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
hypothesis = pytest.importorskip("hypothesis")

from apt_policy.ros import conversions, image_cdr  # noqa: E402
from apt_policy.ros.policy_node import _compressed_to_rgb  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

FUZZ = settings(
    max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "16UC1", "yuv422", "", "ü8"]


def _valid(h: int, w: int, encoding: str, pad: int, frame_id: str) -> bytes:
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "16UC1": 2}.get(encoding, 3)
    msg = Image(height=h, width=w, encoding=encoding, step=w * channels + pad)
    msg.header.frame_id = frame_id
    msg.data = bytes(range(256)) * ((msg.step * h) // 256 + 1)
    msg.data = msg.data[: msg.step * h]
    return serialize_message(msg)


def _decode_or_reason(raw: bytes) -> np.ndarray | None:
    """The node's raw-image decoder: a frame of the declared size, or a ConversionError naming why."""
    try:
        rgb, stamp = conversions.raw_image_to_rgb(raw)
    except conversions.ConversionError as exc:
        assert str(exc), "a rejection must say why"
        return None
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert np.isfinite(stamp)
    return rgb


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_rejected_with_a_reason(raw: bytes) -> None:
    _decode_or_reason(raw)


@FUZZ
@given(
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    encoding=st.sampled_from(ENCODINGS),
    pad=st.integers(0, 5),
    frame_id=st.text(max_size=9),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=6),
)
def test_mutated_images_decode_to_their_declared_size_or_are_rejected(
    h: int, w: int, encoding: str, pad: int, frame_id: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    raw = bytearray(_valid(h, w, encoding, pad, frame_id))
    for pos, mask in flips:  # corrupt length fields, sizes, encoding bytes, pixels
        if pos < len(raw):
            raw[pos] ^= mask
    raw = raw[: max(0, len(raw) - cut % (len(raw) + 1))]  # truncation anywhere
    rgb = _decode_or_reason(bytes(raw))
    if rgb is not None:
        view = image_cdr.parse_image(bytes(raw))  # what was accepted is what the fields declare
        assert rgb.shape[:2] == (view.height, view.width)
        assert view.step * view.height <= len(view.data) or view.encoding not in conversions.DIRECT_ENCODINGS


@FUZZ
@given(st.binary(max_size=300))
def test_parse_image_never_reads_past_the_buffer(raw: bytes) -> None:
    try:
        view = image_cdr.parse_image(raw)
    except image_cdr.CdrError as exc:
        assert str(exc)
        return
    start = len(raw) - len(view.data)
    assert start >= 0 and bytes(view.data) == raw[start:][: len(view.data)]


@FUZZ
@given(
    payload=st.binary(max_size=400), fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", ""])
)
def test_corrupt_compressed_images_are_rejected_with_a_reason(payload: bytes, fmt: str) -> None:
    _, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))
    good = jpeg.tobytes()
    for data in (payload, good[: len(good) // 2] + payload, good[:20] + payload + good[20:]):
        msg = CompressedImage(format=fmt, data=data)
        try:
            rgb, _ = _compressed_to_rgb(msg)
        except conversions.ConversionError as exc:
            assert str(exc)
            continue
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


def test_bytes_that_crash_rclpys_deserialiser_are_rejected_in_a_live_process() -> None:
    """Found by tools/fuzz_decoders.py: these 4 bytes segfault rclpy's deserialize_message (Fast CDR),
    which the node used as a fallback for what image_cdr rejects. Run in a child: a regression then fails
    cleanly instead of killing the test run."""
    import subprocess
    import sys

    code = (
        "from apt_policy.ros.conversions import raw_image_to_rgb, ConversionError\n"
        "try:\n    raw_image_to_rgb(b'\\x00\\x00\\x2c\\xb5')\n"
        "except ConversionError as e:\n    print('rejected:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"decoder crashed (exit {out.returncode}): {out.stderr[-500:]}"
    assert "rejected: not a serialised sensor_msgs/Image this node reads: truncated message" in out.stdout
