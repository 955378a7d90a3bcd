"""image_cdr reads what rclpy serialises: every field, the pixels as a view, and clear errors otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.ros.conversions import image_to_rgb
from apt_policy.ros.image_cdr import CdrError, parse_image
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image


def _image(rng: np.random.Generator, i: int) -> Image:
    msg = Image()
    msg.header.stamp.sec = int(rng.integers(-(2**31), 2**31 - 1))
    msg.header.stamp.nanosec = int(rng.integers(0, 10**9))
    msg.header.frame_id = "camera_color_optical_frame"[: int(rng.integers(0, 27))]  # every alignment
    msg.height, msg.width = int(rng.integers(1, 24)), int(rng.integers(1, 24))
    msg.encoding = ["rgb8", "bgr8", "mono8", "rgba8", "16UC1", "ü8", ""][i % 7]
    msg.is_bigendian = i % 2
    msg.step = msg.width * 4 + int(rng.integers(0, 4))  # padded rows
    size = msg.step * msg.height - int(rng.integers(0, 3))  # sometimes short: parsed, rejected later
    msg.data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return msg


def test_every_field_matches_rclpy_serialisation() -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        msg = _image(rng, i)
        raw = serialize_message(msg)
        view = parse_image(raw)
        assert (view.height, view.width, view.step, view.encoding, view.is_bigendian, view.frame_id) == (
            msg.height,
            msg.width,
            msg.step,
            msg.encoding,
            msg.is_bigendian,
            msg.header.frame_id,
        )
        assert view.stamp_s == pytest.approx(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, abs=1e-6)
        assert bytes(view.data) == bytes(msg.data)


def test_pixels_are_a_view_on_the_received_bytes_and_decode_like_the_message() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = Image(height=48, width=64, encoding="bgr8", step=64 * 3 + 5)
    rows = np.zeros((48, 64 * 3 + 5), np.uint8)
    rows[:, : 64 * 3] = rgb[:, :, ::-1].reshape(48, -1)
    msg.data = rows.tobytes()
    raw = serialize_message(msg)
    out = image_to_rgb(parse_image(raw))
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(out, image_to_rgb(msg))
    assert not out.flags.owndata and np.shares_memory(out, np.frombuffer(raw, np.uint8))  # no copy


def test_damaged_bytes_raise_cdr_errors_naming_the_problem() -> None:
    raw = serialize_message(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12)))
    with pytest.raises(CdrError, match="too short"):
        parse_image(raw[:3])
    with pytest.raises(CdrError, match="encapsulation"):
        parse_image(b"\x00\x07" + raw[2:])
    for cut in (8, 20, 40, len(raw) - 1):
        with pytest.raises(CdrError, match="truncated"):
            parse_image(raw[:cut])
    big_endian = bytearray(raw)
    big_endian[1] = 0  # claims big endian: the lengths then read as huge numbers
    with pytest.raises(CdrError, match="truncated"):
        parse_image(bytes(big_endian))
    no_nul = bytearray(raw)
    enc_at = raw.index(b"rgb8")
    no_nul[enc_at + 4] = ord("x")  # the encoding string's terminating NUL
    with pytest.raises(CdrError, match="NUL"):
        parse_image(bytes(no_nul))
