"""Latency profiles (simulation only) and the delaying Policy wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.runtime.latency import PROFILES, SimulatedLatencyPolicy, parse_latency


def test_parse_names_fixed_and_empty() -> None:
    assert parse_latency("").is_zero and parse_latency(None).is_zero and parse_latency("none").is_zero
    fixed = parse_latency("fixed:200")
    assert fixed.sample(np.random.default_rng(0)) == pytest.approx(0.2)
    assert parse_latency("ORIN") is PROFILES["orin"]
    for bad in ("fixed:abc", "fixed:-5", "jetson"):
        with pytest.raises(ValueError):
            parse_latency(bad)


@pytest.mark.parametrize(("name", "median_ms"), [("orin", 180), ("thor", 95), ("rtx4090", 45)])
def test_profiles_match_their_published_medians_and_have_a_tail(name: str, median_ms: float) -> None:
    profile = PROFILES[name]
    rng = np.random.default_rng(7)
    samples = np.array([profile.sample(rng) for _ in range(4000)]) * 1e3
    assert np.median(samples) == pytest.approx(median_ms, rel=0.03)
    assert np.percentile(samples, 99.5) > 1.15 * median_ms  # heavier than the log-normal body
    assert samples.min() > 0.6 * median_ms
    again = np.random.default_rng(7)
    assert [profile.sample(again) for _ in range(5)] == pytest.approx(samples[:5] * 1e-3)  # reproducible


class _Recorder:
    info = "info"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def predict(self, images, state, instruction, noise=None, **kw):
        self.calls.append((noise, kw))
        return np.zeros((2, 3))

    def warmup(self) -> None:
        self.calls.append(("warmup", {}))

    def close(self) -> None:
        self.calls.append(("close", {}))


def test_wrapper_delays_predict_passes_prefix_only_when_given() -> None:
    now = [0.0]
    slept: list[float] = []
    inner = _Recorder()
    policy = SimulatedLatencyPolicy(
        inner, parse_latency("fixed:150"), seed=1, clock=lambda: now[0], sleep=slept.append
    )
    assert policy.info == "info"
    policy.predict({}, np.zeros(3), "x")
    assert inner.calls[-1] == (None, {}) and slept == [pytest.approx(0.15)]
    prefix = np.ones((2, 3))
    policy.predict({}, np.zeros(3), "x", prefix=prefix)
    assert inner.calls[-1][1]["prefix"] is prefix
    policy.warmup()
    assert len(slept) == 2  # warm-up is not delayed
    policy.close()
    assert inner.calls[-1][0] == "close"
