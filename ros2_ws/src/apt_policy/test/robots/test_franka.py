"""Franka profiles and kinematics against the reference tables and hand-computed poses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from apt_policy.robots.franka import (
    FR3,
    PANDA,
    forward_kinematics,
    get_profile,
    inverse_kinematics,
    jacobian,
    joint_frames,
)


def test_fr3_limits_match_reference_table() -> None:
    assert FR3.joint_names == tuple(f"fr3_joint{i}" for i in range(1, 8))
    np.testing.assert_array_equal(
        FR3.position_upper, [2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159]
    )
    np.testing.assert_array_equal(
        FR3.position_lower, [-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159]
    )
    np.testing.assert_array_equal(FR3.velocity, [2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
    np.testing.assert_array_equal(FR3.acceleration, [10.0] * 7)
    np.testing.assert_array_equal(FR3.jerk, [5000.0] * 7)
    assert FR3.gripper_joint_names == ("fr3_finger_joint1", "fr3_finger_joint2")
    assert FR3.max_gripper_width == 0.08


def test_panda_limits_match_reference_table() -> None:
    assert PANDA.joint_names[0] == "panda_joint1"
    np.testing.assert_array_equal(
        PANDA.position_lower, [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
    )
    np.testing.assert_array_equal(
        PANDA.position_upper, [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
    )
    np.testing.assert_array_equal(PANDA.velocity, [2.175] * 4 + [2.61] * 3)
    np.testing.assert_array_equal(PANDA.acceleration, [15, 7.5, 10, 12.5, 15, 20, 20])
    np.testing.assert_array_equal(PANDA.jerk, [7500, 3750, 5000, 6250, 7500, 10000, 10000])


def test_profile_arrays_are_read_only_and_lookup_works() -> None:
    with pytest.raises(ValueError):
        FR3.velocity[0] = 100.0
    assert get_profile("FR3") is FR3
    assert get_profile("panda") is PANDA
    with pytest.raises(ValueError, match="unknown robot"):
        get_profile("ur5")
    np.testing.assert_array_equal(FR3.joint_index(["fr3_joint3", "fr3_joint1"]), [2, 0])
    with pytest.raises(KeyError, match="panda_joint1"):
        FR3.joint_index(["panda_joint1"])


def test_overrides_are_validated() -> None:
    slow = FR3.with_overrides({"velocity": 1.0}, acceleration=[2.0] * 7)
    np.testing.assert_array_equal(slow.velocity, [1.0] * 7)
    np.testing.assert_array_equal(slow.acceleration, [2.0] * 7)
    np.testing.assert_array_equal(FR3.velocity[0], 2.62)  # original untouched
    with pytest.raises(ValueError, match="unknown robot profile fields"):
        FR3.with_overrides(velocty=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        FR3.with_overrides(velocity=3.0)
    with pytest.raises(ValueError, match="needs 7 values"):
        FR3.with_overrides(velocity=[1.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        FR3.with_overrides(jerk=0.0)
    with pytest.raises(ValueError, match="finite"):
        FR3.with_overrides(velocity=[float("nan")] * 7)
    with pytest.raises(ValueError, match="ready_pose"):
        FR3.with_overrides(ready_pose=[0.0] * 7)  # joint 4 and 6 outside the FR3 range
    with pytest.raises(ValueError, match="widens"):
        FR3.with_overrides(position_upper=[3.0] * 7)


def test_zero_pose_flange_and_tcp_by_hand() -> None:
    # At q = 0 the DH table gives: x = a4 + a5 + a7 = 0.0825 - 0.0825 + 0.088,
    # z = d1 + d3 + d5 - d_flange = 0.333 + 0.316 + 0.384 - 0.107 (the flange points down).
    flange = forward_kinematics(np.zeros(7), tcp=False)
    np.testing.assert_allclose(flange[:3, 3], [0.088, 0.0, 0.926], atol=1e-12)
    np.testing.assert_allclose(flange[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-12)
    tcp = forward_kinematics(np.zeros(7))
    np.testing.assert_allclose(tcp[:3, 3], [0.088, 0.0, 0.926 - 0.1034], atol=1e-12)
    c = math.cos(math.pi / 4)
    # TCP = flange rotated -pi/4 about its z axis.
    np.testing.assert_allclose(tcp[:3, :3], [[c, c, 0], [c, -c, 0], [0, 0, -1]], atol=1e-12)


def test_ready_pose_tcp_matches_franka_value() -> None:
    # libfranka reports O_T_EE ~ (0.307, 0, 0.487), tool pointing down, at this pose.
    tcp = forward_kinematics(FR3.ready_pose)
    np.testing.assert_allclose(tcp[:3, 3], [0.30689, 0.0, 0.48688], atol=2e-4)
    np.testing.assert_allclose(tcp[:3, 2], [0.0, 0.0, -1.0], atol=1e-9)


def test_batched_fk_matches_single() -> None:
    rng = np.random.default_rng(1)
    qs = rng.uniform(FR3.position_lower, FR3.position_upper, size=(5, 7))
    batch = joint_frames(qs)
    for i in range(5):
        np.testing.assert_allclose(batch[i], joint_frames(qs[i]), atol=1e-12)


def test_jacobian_matches_finite_differences() -> None:
    q = FR3.ready_pose + 0.1
    J = jacobian(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        dp = (forward_kinematics(q + dq)[:3, 3] - forward_kinematics(q - dq)[:3, 3]) / (2 * eps)
        np.testing.assert_allclose(J[:3, i], dp, atol=1e-6)


def test_ik_round_trip_tool_down_within_limits() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        target = np.array([rng.uniform(0.3, 0.6), rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.4)])
        result = inverse_kinematics(FR3, target, tool_down=True)
        assert result.success, result
        assert FR3.within_limits(result.q)
        pose = forward_kinematics(result.q)
        np.testing.assert_allclose(pose[:3, 3], target, atol=2e-4)
        assert pose[2, 2] < -0.999


def test_ik_round_trip_from_reachable_joint_configurations() -> None:
    rng = np.random.default_rng(3)
    for _ in range(10):
        q_true = FR3.ready_pose + rng.uniform(-0.4, 0.4, size=7)
        target = forward_kinematics(q_true)[:3, 3]
        result = inverse_kinematics(FR3, target)
        assert result.success
        np.testing.assert_allclose(forward_kinematics(result.q)[:3, 3], target, atol=2e-4)


def test_ik_unreachable_target_reports_failure_and_stays_in_limits() -> None:
    result = inverse_kinematics(FR3, np.array([2.0, 0.0, 0.5]))
    assert not result.success
    assert result.position_error > 0.5
    assert FR3.within_limits(result.q)
    with pytest.raises(ValueError, match="finite"):
        inverse_kinematics(FR3, np.array([np.nan, 0.0, 0.0]))
