"""The action-prior demo's history-aware rollout: the policy gets the commands executed, at its dt."""

from __future__ import annotations

import dataclasses

import numpy as np
from apt_policy.core.config import ActionSemantics
from apt_policy.robots.franka import FR3
from apt_policy.runtime.policy import PolicyInfo
from apt_policy.training.demo_action_prior import PriorDemoSettings, history_rollout, steps_to


class RecordingPolicy:
    """Moves joint 0 by +0.01 rad per row from the measured state; records every history it is given."""

    def __init__(self) -> None:
        names = (*FR3.joint_names, "gripper_width")
        self.info = PolicyInfo(
            backend="test",
            model_id="recorder",
            cameras=("front",),
            image_size=(24, 32),
            horizon=4,
            action_dim=8,
            action_names=names,
            state_names=names,
            dt=0.1,
            action_semantics=ActionSemantics(arm="absolute", gripper="absolute"),
            steps=1,
            history_steps=2,
            family="action_prior",
        )
        self.seen: list = []
        self.states: list[np.ndarray] = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):
        self.seen.append(history)
        self.states.append(np.array(state))
        rows = np.repeat(np.asarray(state, np.float64)[None], 4, axis=0)
        rows[:, 0] += 0.01 * np.arange(1, 5)
        return rows

    def warmup(self) -> None:
        pass


def test_history_holds_the_executed_commands_oldest_first():
    policy = RecordingPolicy()
    s = dataclasses.replace(PriorDemoSettings(), render_size=None, eval_max_steps=7, eval_actions_per_chunk=3)
    ok, violations = history_rollout(policy, 10_000, "reach the red block", "red", s)
    assert not ok and violations == 0
    assert len(policy.seen) == 3  # 3 + 3 + 1 executed steps
    first, second = policy.seen[0], policy.seen[1]
    assert not first.valid.any()  # episode start
    assert second.valid.tolist() == [True, True]
    start = policy.states[0]
    # the last two executed commands of the first chunk: rows 1 and 2 (joint 0 + 0.02, + 0.03)
    np.testing.assert_allclose(second.actions[:, 0], start[0] + np.array([0.02, 0.03]), atol=1e-6)
    # each paired with the state measured when it was sent (after rows 0 and 1 were executed)
    np.testing.assert_allclose(second.states[:, 0], start[0] + np.array([0.01, 0.02]), atol=1e-6)


def test_steps_to_reads_the_curve():
    curve = [(250, 0.5), (500, 0.93), (750, 0.8)]
    assert steps_to(curve, 0.9) == 500 and steps_to(curve, 0.95) is None and steps_to([], 0.9) is None


class StartViewPolicy(RecordingPolicy):
    """A ``front@start`` model that swings joint 0 by 0.3 rad per call (the live view changes); records the
    images of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.info = dataclasses.replace(self.info, cameras=("front", "front@start"))
        self.images: list[dict] = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):
        self.images.append({k: np.array(v) for k, v in images.items()})
        rows = np.repeat(np.asarray(state, np.float64)[None], 4, axis=0)
        rows[:, 0] += 0.3 * (1 if len(self.images) % 2 else -1)
        return rows


def test_the_rollout_gives_a_start_view_the_episodes_first_frame():
    policy = StartViewPolicy()
    s = dataclasses.replace(PriorDemoSettings(), render_size=None, eval_max_steps=7, eval_actions_per_chunk=3)
    history_rollout(policy, 10_000, "reach the red block", "red", s)
    assert len(policy.images) == 3 and all(set(i) == {"front", "front@start"} for i in policy.images)
    first = policy.images[0]["front"]
    for call in policy.images:
        np.testing.assert_array_equal(call["front@start"], first)
    assert not np.array_equal(policy.images[1]["front"], first)  # the live view moved on
