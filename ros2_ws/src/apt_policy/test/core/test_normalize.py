"""Normalizer: round trips in both modes, quantile range, constant dims, file validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from apt_policy.core.normalize import Normalizer, NormStatsError


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    states = rng.normal(3.0, 2.0, size=(500, 4))
    states[:, 3] = 0.04  # a constant dimension (closed gripper)
    actions = rng.uniform(-5, 1, size=(500, 6, 3))
    return states, actions


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_round_trip_through_file(tmp_path, data, mode):
    states, actions = data
    norm = Normalizer.fit(states, actions, mode)
    norm.save(tmp_path / "norm_stats.json")
    back = Normalizer.load(tmp_path / "norm_stats.json", mode)
    y = back.normalize_actions(actions)
    np.testing.assert_allclose(back.unnormalize_actions(y), actions, atol=1e-5)
    s = back.normalize_state(states)
    np.testing.assert_allclose(back.unnormalize_state(s), states, atol=1e-5)
    assert np.all(s[:, 3] == 0.0)  # constant dim maps to 0, not inf/nan
    if mode == "quantile":
        inside = y[(y > -1.0001) & (y < 1.0001)]
        assert inside.size / y.size > 0.97  # 1st..99th percentile -> [-1, 1]
        assert y.min() < -0.99 and y.max() > 0.99
    else:
        np.testing.assert_allclose(y.reshape(-1, 3).mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(y.reshape(-1, 3).std(0), 1.0, atol=1e-4)


def test_errors_name_the_problem(tmp_path, data):
    states, actions = data
    norm = Normalizer.fit(states, actions, "quantile")
    with pytest.raises(NormStatsError, match="state has dim 3"):
        norm.normalize_state(states[:, :3])
    d = norm.to_dict()
    with pytest.raises(NormStatsError, match="missing 'actions'"):
        Normalizer.from_dict({"state": d["state"]})
    bad = json.loads(json.dumps(d))
    bad["actions"]["q99"] = bad["actions"]["q99"][:2]
    with pytest.raises(NormStatsError, match="lengths differ"):
        Normalizer.from_dict(bad)
    with pytest.raises(NormStatsError, match="differs from the config"):
        Normalizer.from_dict(d, mode="mean_std")
    with pytest.raises(NormStatsError, match="not found"):
        Normalizer.load(tmp_path / "missing.json")
