"""The node's control core with a deterministic short-chunk policy (the action-distillation family: 3
actions per chunk, no RTC inputs), on the simulated clock of sim.closed_loop: the node's own controller,
request threshold, blending fallback, safety filter and the simulated FR3's contract checks."""

from __future__ import annotations

import pytest
from apt_policy.ros.control_setup import build_controller, execution_plan
from apt_policy.ros.params import ParameterError, defaults
from apt_policy.sim.closed_loop import EvalConfig, ScriptedPolicy, evaluate

FAMILY_PARAMS = {"chunk_request_threshold": -1, "blending_steps": 1}  # what the demo sets for this family


def test_apt_threshold_is_refused_and_the_plan_falls_back_to_blending():
    info = ScriptedPolicy(horizon=3).info
    assert not info.rtc_inputs
    with pytest.raises(ParameterError, match="must be below the model's horizon 3"):
        build_controller(defaults(chunk_request_threshold=4), info)  # config/sim.yaml's value for APT
    params = defaults(chunk_execution="auto", **FAMILY_PARAMS)
    assert execution_plan(params, info).blend_mode == "crossfade"  # no prefix inputs: auto -> blending
    controller, _ = build_controller(params, info)
    assert controller.request_threshold() == 1  # half the horizon before any delay is measured


def test_short_chunks_keep_the_arm_fed_within_the_contract():
    """Requests early enough that a chunk is always there (no held tick), every command inside the
    joint_trajectory_controller contract, and the expert's chunks still reach their block."""
    policy = ScriptedPolicy(horizon=3, dt=0.1, disagreement=0.01)
    cell = evaluate(
        policy,
        EvalConfig(
            latency="fixed:50", strategy="auto", episodes=2, max_time_s=6.0, node_params=FAMILY_PARAMS
        ),
    )
    assert cell.violations == 0
    assert cell.held_ticks == 0
    assert cell.switches > 2 * 6.0 / (3 * 0.1)  # at its own rate: a new chunk well before each one ends
    assert cell.success_rate == 1.0
