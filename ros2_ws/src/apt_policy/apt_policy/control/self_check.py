"""The policy node's self-check when it is configured: one prediction on a synthetic observation.

Mid-grey images of the model's size for every camera, the robot's ready pose (plus an open gripper when the
model's state has one) and a fixed instruction go through the same ``predict`` the stream will use. The
chunk must have the model's shape, be finite, and resolve (action semantics, from the ready pose) to arm
targets inside the joint position limits (absolute / delta actions) or velocities inside the velocity
limits (velocity actions). Its latency is measured (the model is already warmed up). Plain data in, a
:class:`SelfCheckResult` out; the node decides what a failure means (its configure transition fails).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from apt_policy.control.limits import JointLimits
from apt_policy.control.semantics import ActionLayout

INSTRUCTION = "self check"
GREY = 128
LIMIT_TOLERANCE = 1e-6  # rad or rad/s: float noise at a limit is not a violation


@dataclass(frozen=True)
class SelfCheckResult:
    """``problem`` is empty when the check passed; ``latency_ms`` is NaN when predict raised."""

    problem: str
    latency_ms: float

    @property
    def ok(self) -> bool:
        return not self.problem


def synthetic_images(cameras: Sequence[str], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Mid-grey RGB images (height, width, 3) uint8, one per camera."""
    height, width = image_size
    return {name: np.full((height, width, 3), GREY, dtype=np.uint8) for name in cameras}


def check_chunk(
    actions: np.ndarray,
    expected_shape: tuple[int, int],
    layout: ActionLayout,
    limits: JointLimits,
    state: np.ndarray,
) -> str:
    """Why ``actions`` (predicted from ``state``) is not a usable chunk; empty when it is."""
    actions = np.asarray(actions)
    if actions.shape != tuple(expected_shape):
        return f"prediction has shape {actions.shape}, the model declares {tuple(expected_shape)}"
    problem = layout.check(actions, state)
    if problem is not None:
        return f"prediction: {problem}"
    arm = layout.resolve_arm(actions, state)
    if layout.arm == "velocity":
        over = np.abs(arm) > limits.velocity[None, :] + LIMIT_TOLERANCE
        what = "velocities outside the velocity limits"
    else:
        low, high = limits.lower - LIMIT_TOLERANCE, limits.upper + LIMIT_TOLERANCE
        over = (arm < low[None, :]) | (arm > high[None, :])
        what = "joint targets outside the position limits"
    if np.any(over):
        steps, joints = np.nonzero(over)
        names = sorted({limits.names[j] for j in joints})
        return f"prediction: {len(steps)} {what} (joints {names}, first at step {int(steps[0])})"
    return ""


def run_self_check(
    predict: Callable[..., np.ndarray],
    images: Mapping[str, np.ndarray],
    state: np.ndarray,
    expected_shape: tuple[int, int],
    layout: ActionLayout,
    limits: JointLimits,
    instruction: str = INSTRUCTION,
    clock: Callable[[], float] = time.perf_counter,
) -> SelfCheckResult:
    """One ``predict(images, state, instruction)``, timed and checked with :func:`check_chunk`."""
    started = clock()
    try:
        actions = predict(images, state, instruction)
    except Exception as exc:  # the model's own failure is the finding
        return SelfCheckResult(f"prediction failed: {type(exc).__name__}: {exc}", float("nan"))
    latency_ms = (clock() - started) * 1e3
    return SelfCheckResult(check_chunk(actions, expected_shape, layout, limits, state), latency_ms)
