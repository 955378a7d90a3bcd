"""Message conversions: zero-copy image decoding honouring step, rejections with reasons, joint reordering."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
from apt_policy.ros.conversions import (
    ConversionError,
    compressed_to_rgb,
    fill_trajectory,
    gripper_width,
    image_to_rgb,
    joint_positions,
    s_to_stamp,
    stamp_to_s,
)
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, (5, 7, 3), dtype=np.uint8)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    padded = np.zeros((h, rows.shape[1] + pad), np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(height=h, width=w, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 3])
def test_rgb8_and_bgr8_decode_with_row_padding(pad: int) -> None:
    np.testing.assert_array_equal(image_to_rgb(_image(RGB, "rgb8", pad)), RGB)
    np.testing.assert_array_equal(image_to_rgb(_image(RGB[:, :, ::-1].copy(), "bgr8", pad)), RGB)


def test_rgba_bgra_and_mono() -> None:
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(_image(rgba, "rgba8")), RGB)
    bgra = np.concatenate([RGB[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(_image(bgra, "bgra8")), RGB)
    mono = RGB[:, :, 0].copy()
    out = image_to_rgb(_image(mono, "mono8", pad=1))
    assert out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out[:, :, 2], mono)


def test_rgb8_is_a_view_on_the_message_buffer() -> None:
    msg = _image(RGB, "rgb8")
    msg.data = array.array("B", msg.data)  # what rclpy delivers
    out = image_to_rgb(msg)
    assert not out.flags.owndata
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: setattr(m, "step", 20), "step 20 < width"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "bytes, expected"),
        (lambda m: setattr(m, "height", 0), "invalid"),
        (lambda m: setattr(m, "encoding", "32FC1"), "not supported without cv_bridge"),
        (lambda m: setattr(m, "height", 6), "bytes, expected"),
    ],
)
def test_malformed_images_are_rejected_with_reason(mutate, match) -> None:
    msg = _image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ConversionError, match=match):
        image_to_rgb(msg)


def test_compressed_png_round_trip_and_garbage() -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="png")
    msg.data = png.tobytes()
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)
    msg.data = b"not an image"
    with pytest.raises(ConversionError, match="could not be decoded"):
        compressed_to_rgb(msg)


def test_joint_state_reordered_by_name_and_missing_or_nan_rejected() -> None:
    names = [f"j{i}" for i in range(3)]
    msg = JointState(name=["j2", "finger", "j0", "j1"], position=[2.0, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(joint_positions(msg, names), [0.0, 1.0, 2.0])
    with pytest.raises(ConversionError, match=r"missing joints \['j3'\]"):
        joint_positions(msg, [*names, "j3"])
    with pytest.raises(ConversionError, match="NaN"):
        joint_positions(JointState(name=names, position=[0.0, float("nan"), 1.0]), names)
    with pytest.raises(ConversionError, match="3 names but 2 positions"):
        joint_positions(JointState(name=names, position=[0.0, 1.0]), names)
    twice = JointState(name=["j0", "j1", "j2", "j1"], position=[0.0, 1.0, 2.0, 9.0])
    with pytest.raises(ConversionError, match=r"more than once: \['j1'\]"):  # not "the last one wins"
        joint_positions(twice, names)
    assert gripper_width(JointState(name=["a", "b"], position=[0.01, 0.015]), ["a", "b"]) == pytest.approx(
        0.025
    )


def test_stamp_round_trip_and_trajectory_fill() -> None:
    img = Image()
    s_to_stamp(12.25, img.header.stamp)
    assert stamp_to_s(img.header.stamp) == pytest.approx(12.25)
    traj = JointTrajectory()
    fill_trajectory(
        traj, ["a", "b"], np.array([0.01, 0.02]), np.ones((2, 2)), np.zeros((2, 2)), JointTrajectoryPoint
    )
    assert traj.header.stamp.sec == 0 and traj.header.stamp.nanosec == 0
    assert [p.time_from_start.nanosec for p in traj.points] == [10_000_000, 20_000_000]
    assert list(traj.points[1].velocities) == [0.0, 0.0]
