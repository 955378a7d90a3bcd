"""evaluate(): success, wrong-block and language-free scoring."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.tasks.reaching import (
    HELD_OUT_INSTRUCTIONS,
    ReachingExpert,
    evaluate,
    goal_configuration,
    held_out_gap,
    sample_scene,
    target_color,
)

H, DT = 16, 0.1
FAST = {"image_size": (16, 16), "render_size": None, "max_steps": 40}


def make_policy(always: str | None = None, seed: int = 10_000):
    """Expert that reaches the named block (or always ``always``); tracks the episode's scene by count."""
    state = {"episode": -1, "last_step": None}

    def policy(obs):
        if obs.step == 0 and state["last_step"] != 0:
            state["episode"] += 1
        state["last_step"] = obs.step
        scene = sample_scene(seed + state["episode"])
        color = always or target_color(obs.instruction) or scene.colors[0]
        expert = ReachingExpert(goal_configuration(scene.block(color)), DT, H)
        return expert.chunk(obs.state[:7].astype(float), obs.joint_velocity)

    return policy


def test_instruction_following_expert_scores_full_marks_on_both_phrasings() -> None:
    train = evaluate(make_policy(), episodes=6, instructions="train", progress=False, **FAST)
    held = evaluate(make_policy(), episodes=6, instructions="held_out", progress=False, **FAST)
    assert train.success_rate == 1.0 and held.success_rate == 1.0
    assert held_out_gap(train, held) == 0.0
    assert all(row["instruction"] in HELD_OUT_INSTRUCTIONS for row in held.episodes)
    assert train.violations == 0 and train.mean_final_distance < 0.03


def test_a_policy_ignoring_language_is_scored_as_wrong_block() -> None:
    result = evaluate(make_policy(always="green"), episodes=6, instructions="train", progress=False, **FAST)
    # Targets cycle red, green, blue: only the green episodes succeed.
    assert result.success_rate == pytest.approx(2 / 6)
    assert result.wrong_block_rate == pytest.approx(4 / 6)
    # Without language, reaching any block counts.
    free = evaluate(make_policy(always="green"), episodes=3, instructions="none", progress=False, **FAST)
    assert free.success_rate == 1.0 and free.wrong_block_rate == 0.0
    assert {row["instruction"] for row in free.episodes} == {""}
    with pytest.raises(ValueError, match="instructions="):
        evaluate(make_policy(), episodes=1, instructions="unknown")
    assert np.isfinite(result.mean_final_distance)
