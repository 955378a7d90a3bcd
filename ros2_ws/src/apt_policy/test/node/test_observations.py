"""ObservationBuffer: freshest consistent set, ages, skew, rejection of malformed samples."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.control.observations import FreshnessLimits, ObservationBuffer, StaleInputsError
from apt_policy.control.watchdog import MISSING, WatchdogConfig, stale_input_reason


def _img(value: int = 0) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


WATCHDOG = WatchdogConfig(max_camera_age=0.2, max_state_age=0.05, max_gripper_age=0.2)


def _buffer(**kw) -> ObservationBuffer:
    return ObservationBuffer(
        ["front", "wrist"],
        joint_dim=7,
        use_gripper=kw.pop("use_gripper", True),
        watchdog=WATCHDOG,
        limits=FreshnessLimits(max_skew_s=0.1),
        **kw,
    )


def _stale(buf: ObservationBuffer, now: float) -> str | None:
    """What the controller's watchdog says of the buffer's inputs (the node passes exactly this)."""
    s = buf.stamps()
    return stale_input_reason(buf.watchdog, now, s.state, s.cameras, s.gripper)


def _fill(buf: ObservationBuffer, t: float) -> None:
    buf.put_image("front", _img(1), t, t)
    buf.put_image("wrist", _img(2), t, t)
    buf.put_joints(np.arange(7.0), t, t)
    buf.put_gripper(0.04, t, t)


def test_freshest_set_has_every_camera_state_and_gripper() -> None:
    buf = _buffer()
    _fill(buf, 10.0)
    obs = buf.freshest(10.01)
    assert set(obs.images) == {"front", "wrist"}
    assert obs.images["wrist"][0, 0, 0] == 2
    np.testing.assert_array_equal(obs.state, [0, 1, 2, 3, 4, 5, 6, 0.04])
    assert obs.t_obs == 10.0


def test_without_gripper_state_is_joints_only() -> None:
    buf = _buffer(use_gripper=False)
    buf.put_image("front", _img(), 1.0, 1.0)
    buf.put_image("wrist", _img(), 1.0, 1.0)
    buf.put_joints(np.ones(7), 1.0, 1.0)
    assert buf.freshest(1.0).state.shape == (7,)


def test_missing_camera_is_stale_and_named() -> None:
    buf = _buffer()
    _fill(buf, 1.0)
    buf.clear_camera("wrist")
    with pytest.raises(StaleInputsError, match="camera 'wrist' has no frame"):
        buf.freshest(1.0)


def test_old_image_and_old_state_are_stale() -> None:
    buf = _buffer()
    _fill(buf, 1.0)
    buf.put_joints(np.zeros(7), 1.25, 1.25)
    buf.put_gripper(0.0, 1.25, 1.25)
    with pytest.raises(StaleInputsError, match=r"camera 'front' stale \(250 ms > 200 ms\)"):
        buf.freshest(1.25)
    _fill(buf, 1.0)
    buf.put_image("front", _img(), 1.2, 1.2)
    buf.put_image("wrist", _img(), 1.2, 1.2)
    with pytest.raises(StaleInputsError, match="joint state stale"):
        buf.freshest(1.25)
    assert _stale(buf, 1.25) is not None
    buf.put_joints(np.zeros(7), 1.25, 1.25)
    buf.put_gripper(0.0, 1.25, 1.25)
    assert _stale(buf, 1.25) is None


def test_camera_skew_beyond_limit_is_refused() -> None:
    buf = _buffer()
    _fill(buf, 1.0)
    # Received together but the sensor stamps are 150 ms apart.
    buf.put_image("front", _img(), 0.85, 1.0)
    with pytest.raises(StaleInputsError, match="150 ms apart"):
        buf.freshest(1.0)


def test_state_closest_to_camera_stamp_is_chosen() -> None:
    buf = _buffer()
    for k in range(10):
        t = 1.0 + 0.005 * k
        buf.put_joints(np.full(7, float(k)), t, t)
    buf.put_gripper(0.01, 1.05, 1.05)
    buf.put_image("front", _img(), 1.02, 1.046)
    buf.put_image("wrist", _img(), 1.02, 1.046)
    obs = buf.freshest(1.05)
    assert obs.state[0] == 4.0  # stamp 1.020
    assert obs.t_obs == pytest.approx(1.046)


def test_zero_stamp_falls_back_to_receive_time() -> None:
    buf = _buffer()
    _fill(buf, 5.0)
    buf.put_image("front", _img(), 0.0, 5.0)
    assert buf.freshest(5.0).skew_s == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b.put_image("side", _img(), 1, 1), "unknown camera"),
        (lambda b: b.put_image("front", np.zeros((4, 6), np.uint8), 1, 1), "HxWx3"),
        (lambda b: b.put_image("front", np.zeros((4, 6, 3), np.float32), 1, 1), "HxWx3"),
        (lambda b: b.put_joints(np.zeros(6), 1, 1), "expected 7"),
        (lambda b: b.put_joints(np.array([np.nan] * 7), 1, 1), "NaN"),
        (lambda b: b.put_gripper(float("inf"), 1, 1), "not finite"),
    ],
)
def test_malformed_samples_raise_and_leave_buffer_unchanged(call, match) -> None:
    buf = _buffer()
    _fill(buf, 1.0)
    with pytest.raises((KeyError, ValueError), match=match):
        call(buf)
    np.testing.assert_array_equal(buf.freshest(1.0).state[:7], np.arange(7.0))


def test_stamps_say_never_received() -> None:
    buf = _buffer()
    stamps = buf.stamps()
    assert stamps.state == MISSING and stamps.gripper == MISSING
    assert stamps.cameras == {"front": None, "wrist": None}
    assert _stale(buf, 3.0) == "joint state has no sample"
    assert _buffer(use_gripper=False).stamps().gripper is None  # not checked


def test_frames_stamped_far_from_the_node_clock_are_rejected_with_the_offset() -> None:
    buf = _buffer()
    _fill(buf, 100.0)
    for stamp, where in ((110.0, "10.0 s in the future"), (90.0, "10.0 s in the past")):
        with pytest.raises(ValueError, match=where):
            buf.put_image("front", _img(7), stamp, 100.01, sensor_now_s=100.0)
    assert buf.freshest(100.01).images["front"][0, 0, 0] == 1  # the good frame stays
    buf.put_image("front", _img(7), 101.5, 100.01, sensor_now_s=100.0)  # within max_stamp_offset_s


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError, match="max_skew_s"):
        FreshnessLimits(max_skew_s=0.0)
    with pytest.raises(ValueError, match="max_stamp_offset_s"):
        FreshnessLimits(max_stamp_offset_s=float("nan"))
    with pytest.raises(ValueError, match="unique"):
        ObservationBuffer(["a", "a"], 7, False)


def test_gripper_has_its_own_age_limit() -> None:
    buf = _buffer()
    _fill(buf, 1.0)
    buf.put_joints(np.zeros(7), 1.1, 1.1)
    buf.put_image("front", _img(), 1.1, 1.1)
    buf.put_image("wrist", _img(), 1.1, 1.1)
    assert _stale(buf, 1.1) is None  # gripper 100 ms old: fine at 15 Hz
    buf.put_joints(np.zeros(7), 1.25, 1.25)
    buf.put_image("front", _img(), 1.25, 1.25)
    buf.put_image("wrist", _img(), 1.25, 1.25)
    with pytest.raises(StaleInputsError, match=r"gripper state stale \(250 ms"):
        buf.freshest(1.25)
