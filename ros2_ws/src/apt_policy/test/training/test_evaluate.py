"""training.evaluate draws the policy's noise from its own seed, scaled as the bundle says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from apt_policy.model.presets import tiny_policy_config
from apt_policy.runtime.policy import PolicyInfo
from apt_policy.tasks.dataset import action_names, state_names
from apt_policy.training.evaluate import evaluate


class HoldingPolicy:
    """Holds the current state and records the noise it was given."""

    def __init__(self, noise_scale: float) -> None:
        config = tiny_policy_config(
            cameras=("front",),
            image_size=(32, 48),
            state_names=state_names(),
            action_names=action_names(),
            horizon=4,
        )
        self.info = PolicyInfo.from_config(dataclasses.replace(config, noise_scale=noise_scale), "fake")
        self.noises: list[np.ndarray] = []

    def predict(self, images, state, instruction, noise=None):
        self.noises.append(np.array(noise))
        return np.repeat(np.asarray(state, np.float32)[None], self.info.horizon, axis=0)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_evaluation_noise_follows_the_policy_noise_scale(scale: float) -> None:
    unit, scaled = HoldingPolicy(1.0), HoldingPolicy(scale)
    for policy in (unit, scaled):
        report = evaluate(policy, 2, held_out=False, render_size=None, max_steps=8, progress=False)
        assert report["episodes"] == 2 and report["success_rate"] == 0.0  # holding still reaches nothing
    assert len(unit.noises) == len(scaled.noises) > 1
    for a, b in zip(unit.noises, scaled.noises, strict=True):
        np.testing.assert_allclose(b, scale * a, rtol=1e-6)
    assert np.std(unit.noises) > 0.5
