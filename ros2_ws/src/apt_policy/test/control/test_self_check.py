"""The node's configure-time self-check: one prediction on a synthetic observation, checked and timed."""

from __future__ import annotations

import numpy as np
from apt_policy.control.limits import JointLimits
from apt_policy.control.self_check import INSTRUCTION, check_chunk, run_self_check, synthetic_images
from apt_policy.control.semantics import ActionLayout
from apt_policy.robots.franka import FR3

LIMITS = JointLimits.from_profile(FR3)
READY = FR3.ready_pose
STATE = np.append(READY, 0.08)
ABSOLUTE = ActionLayout(dof=7, arm="absolute", gripper="absolute")


def chunk_at(q: np.ndarray, horizon: int = 4) -> np.ndarray:
    return np.tile(np.append(q, 0.04), (horizon, 1)).astype(np.float32)


def test_synthetic_images_have_the_model_size_per_camera():
    images = synthetic_images(("front", "wrist"), (24, 32))
    assert set(images) == {"front", "wrist"}
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img in images.values())


def test_a_finite_chunk_inside_the_limits_passes_and_is_timed():
    seen = []

    def predict(images, state, instruction):
        seen.append((sorted(images), state.copy(), instruction))
        return chunk_at(READY)

    ticks = iter([10.0, 10.025])
    result = run_self_check(
        predict,
        synthetic_images(("front",), (8, 8)),
        STATE,
        (4, 8),
        ABSOLUTE,
        LIMITS,
        clock=lambda: next(ticks),
    )
    assert result.ok and result.problem == ""
    assert abs(result.latency_ms - 25.0) < 1e-6
    assert seen[0][0] == ["front"] and np.array_equal(seen[0][1], STATE) and seen[0][2] == INSTRUCTION


def test_non_finite_wrong_shape_and_raising_predictions_fail():
    bad = chunk_at(READY)
    bad[2, 3] = np.nan
    assert "NaN" in check_chunk(bad, (4, 8), ABSOLUTE, LIMITS, STATE)
    assert "shape" in check_chunk(chunk_at(READY, 5), (4, 8), ABSOLUTE, LIMITS, STATE)

    def broken(images, state, instruction):
        raise RuntimeError("model exploded")

    result = run_self_check(broken, {}, STATE, (4, 8), ABSOLUTE, LIMITS)
    assert not result.ok and "model exploded" in result.problem and np.isnan(result.latency_ms)


def test_targets_outside_the_position_limits_fail_naming_the_joints():
    q = READY.copy()
    q[3] = 0.0  # joint 4's upper limit is -0.1518
    problem = check_chunk(chunk_at(q), (4, 8), ABSOLUTE, LIMITS, STATE)
    assert "position limits" in problem and "fr3_joint4" in problem and "fr3_joint1" not in problem
    at_limit = READY.copy()
    at_limit[0] = LIMITS.upper[0]
    assert check_chunk(chunk_at(at_limit), (4, 8), ABSOLUTE, LIMITS, STATE) == ""


def test_delta_actions_are_checked_from_the_ready_pose_and_velocities_against_velocity_limits():
    delta = ActionLayout(dof=7, arm="delta", arm_scale=1.0, gripper="absolute")
    small = np.zeros(7)
    small[0] = 0.1
    assert check_chunk(chunk_at(small), (4, 8), delta, LIMITS, STATE) == ""
    large = np.zeros(7)
    large[5] = 4.0  # 1.57 + 4 > joint 6's upper limit 4.5169
    assert "fr3_joint6" in check_chunk(chunk_at(large), (4, 8), delta, LIMITS, STATE)
    velocity = ActionLayout(dof=7, arm="velocity", arm_scale=1.0, gripper="absolute")
    assert check_chunk(chunk_at(np.full(7, 1.0)), (4, 8), velocity, LIMITS, STATE) == ""
    fast = np.full(7, 1.0)
    fast[2] = 3.0  # joint 3's velocity limit is 2.62 rad/s
    assert "velocity limits" in check_chunk(chunk_at(fast), (4, 8), velocity, LIMITS, STATE)
