"""In-process RealSense capture through pyrealsense2's software device (real librealsense frame path)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from apt_policy.ros.realsense_camera import (
    CameraNotFoundError,
    ColorProfile,
    SoftwareColorDevice,
    StampMapper,
    find_device,
    import_pyrealsense2,
    open_cameras,
)

try:
    import_pyrealsense2()
    HAVE_RS = True
except ImportError as exc:  # pragma: no cover - depends on the machine
    HAVE_RS, RS_ERROR = False, str(exc)

needs_rs = pytest.mark.skipif(not HAVE_RS, reason="pyrealsense2 / libusb not importable here")
PROFILE = ColorProfile(64, 48, 30)


class Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[str, np.ndarray, float]] = []
        self.cond = threading.Condition()

    def __call__(self, name: str, image: np.ndarray, stamp_s: float) -> None:
        with self.cond:
            self.frames.append((name, image, stamp_s))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.frames) >= n, timeout), (
                f"got {len(self.frames)} of {n}"
            )


def test_profile_parse():
    assert ColorProfile.parse("640x480x30") == ColorProfile(640, 480, 30)
    assert ColorProfile.parse(" 1280,720,15 ") == ColorProfile(1280, 720, 15)
    for bad in ("640x480", "axbxc", "0x480x30", ""):
        with pytest.raises(ValueError, match=r"WIDTHxHEIGHTxFPS|positive"):
            ColorProfile.parse(bad)


def test_stamp_mapper_global_and_system_time_used_as_is():
    m = StampMapper()
    assert m.to_host(1_700_000_000_123.0, "global_time", host_now_s=1_700_000_000.2) == pytest.approx(
        1_700_000_000.123
    )
    assert m.to_host(5_000.0, "system_time", host_now_s=99.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="domain"):
        m.to_host(1.0, "metadata_clock", 0.0)


def test_stamp_mapper_hardware_clock_uses_least_delayed_frame():
    m = StampMapper(window=50)
    rng = np.random.default_rng(1)
    offset = 1_700_000_000.0  # host time at device time 0
    min_delay = 0.004
    out = []
    for i in range(40):
        capture_dev_s = 10.0 + i / 30.0
        delay = min_delay + rng.uniform(0.0, 0.02)
        out.append(m.to_host(capture_dev_s * 1000.0, "hardware_clock", offset + capture_dev_s + delay))
    true = offset + 10.0 + np.arange(40) / 30.0
    errors = np.array(out) - true
    # after the least-delayed frame has been seen the error is bounded by the spread in the window
    assert np.all(errors >= min_delay - 1e-9)
    assert np.all(errors[10:] <= min_delay + 0.005)
    # monotonic with the device clock
    assert np.all(np.diff(out) > 0)


def test_stamp_mapper_restarts_on_device_clock_wrap():
    m = StampMapper()
    m.to_host(4_000_000.0, "hardware_clock", 100.0)
    stamp = m.to_host(10.0, "hardware_clock", 200.0)  # the device clock wrapped
    assert m.resets == 1
    assert stamp == pytest.approx(200.0)


@needs_rs
def test_missing_serial_lists_connected_devices():
    rs = import_pyrealsense2()
    with pytest.raises(CameraNotFoundError, match=r"'000' is not connected; connected: none"):
        find_device("000", [], rs)
    soft = SoftwareColorDevice("12345", PROFILE, name="Synthetic D435")
    with pytest.raises(CameraNotFoundError, match=r"connected: 12345 \(Synthetic D435\)"):
        open_cameras({"front": "999"}, PROFILE, Collector(), devices=[soft.device])


@needs_rs
def test_wrong_profile_says_what_is_offered():
    soft = SoftwareColorDevice("1", PROFILE)
    with pytest.raises(
        ValueError, match=r"no rgb8 colour stream 640x480x30; rgb8 profiles offered: 64x48x30"
    ):
        open_cameras({"front": "1"}, ColorProfile(640, 480, 30), Collector(), devices=[soft.device])


@needs_rs
def test_software_frames_reach_callback_with_pixels_and_stamps():
    soft = SoftwareColorDevice("111", PROFILE)
    got = Collector()
    cams = open_cameras({"wrist": "111"}, PROFILE, got, devices=[soft.device])
    try:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(5)]
        t0_ms = time.time() * 1000.0
        for i, img in enumerate(images):
            soft.push(img, t0_ms + i * 33.0, "global_time")
        got.wait(5)
    finally:
        for c in cams:
            c.stop()
    assert [n for n, _, _ in got.frames] == ["wrist"] * 5
    for (_, img, stamp), ref, i in zip(got.frames, images, range(5), strict=True):
        np.testing.assert_array_equal(img, ref)
        assert stamp == pytest.approx((t0_ms + i * 33.0) / 1000.0)
    assert cams[0].frames == 5 and cams[0].dropped == 0 and cams[0].errors == 0


@needs_rs
def test_callback_errors_are_counted_not_raised():
    soft = SoftwareColorDevice("7", PROFILE)
    seen = []

    def explode(name, image, stamp):
        seen.append(stamp)
        raise RuntimeError("node refused the frame")

    logged = []
    cams = open_cameras({"front": "7"}, PROFILE, explode, devices=[soft.device], log_error=logged.append)
    try:
        soft.push(np.zeros((48, 64, 3), np.uint8), 1000.0, "hardware_clock")
        soft.push(np.zeros((48, 64, 3), np.uint8), 1033.0, "hardware_clock")
        deadline = time.monotonic() + 5
        while cams[0].errors < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for c in cams:
            c.stop()
    assert cams[0].errors == 2 and len(seen) == 2
    assert any("node refused the frame" in line for line in logged)


@needs_rs
def test_gaps_in_device_frame_numbers_are_counted_as_drops():
    soft = SoftwareColorDevice("8", PROFILE)
    got = Collector()
    cams = open_cameras({"front": "8"}, PROFILE, got, devices=[soft.device])
    try:
        soft.push(np.zeros((48, 64, 3), np.uint8), 1000.0)
        soft._frame_number = 4  # frames 1..3 lost on the way
        soft.push(np.zeros((48, 64, 3), np.uint8), 1133.0)
        got.wait(2)
    finally:
        cams[0].stop()
    assert cams[0].dropped == 3
