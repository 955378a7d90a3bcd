"""GripperDecider on a simulated clock: commands only on change, hysteresis, rate limit, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from apt_policy.control.gripper import GripperDecider, GripperDecisionConfig


def run(decider: GripperDecider, widths, dt: float = 0.01, t0: float = 0.0):
    """Feed ``widths`` one per tick; return the (tick index, command) pairs emitted."""
    out = []
    for i, w in enumerate(widths):
        cmd = decider.update(w, t0 + i * dt)
        if cmd is not None:
            out.append((i, cmd))
    return out


def test_binary_commands_once_per_state_change():
    d = GripperDecider(GripperDecisionConfig(mode="binary", min_interval=0.0))
    widths = [0.08] * 50 + [0.0] * 50 + [0.08] * 50
    sent = run(d, widths)
    assert [(i, c.kind, c.width) for i, c in sent] == [
        (0, "open", 0.08),
        (50, "close", 0.0),
        (100, "open", 0.08),
    ]
    assert d.commands_sent == 3


def test_binary_hysteresis_ignores_noise_around_threshold():
    cfg = GripperDecisionConfig(mode="binary", threshold=0.04, hysteresis=0.01, min_interval=0.0)
    d = GripperDecider(cfg)
    rng = np.random.default_rng(0)
    # starts open, then noise of +-4 mm around the threshold: inside the 10 mm band, never toggles
    widths = [0.08, *list(0.04 + rng.uniform(-0.004, 0.004, size=500))]
    sent = run(d, widths)
    assert [c.kind for _, c in sent] == ["open"]
    # leaving the band downwards closes exactly once
    sent = run(d, [0.034, 0.036, 0.03, 0.0401, 0.0449], t0=10.0)
    assert [c.kind for _, c in sent] == ["close"]


def test_binary_without_hysteresis_would_toggle_with_noise():
    """The same noise with a zero band toggles: shows the hysteresis test above can fail."""
    d = GripperDecider(GripperDecisionConfig(mode="binary", threshold=0.04, hysteresis=0.0, min_interval=0.0))
    rng = np.random.default_rng(0)
    sent = run(d, list(0.04 + rng.uniform(-0.004, 0.004, size=100)))
    assert len(sent) > 10


def test_rate_limit_delays_change_until_interval_passed():
    d = GripperDecider(GripperDecisionConfig(mode="binary", min_interval=0.5))
    # open at t=0, asks to close at t=0.1: must wait until t >= 0.5
    sent = run(d, [0.08] * 10 + [0.0] * 100, dt=0.01)
    assert [(i, c.kind) for i, c in sent] == [(0, "open"), (50, "close")]
    assert sent[1][1].stamp == pytest.approx(0.5)
    assert d.suppressed_by_rate_limit == 40


def test_rate_limit_drops_a_change_that_reverted_in_time():
    d = GripperDecider(GripperDecisionConfig(mode="binary", min_interval=0.5))
    # a short close blip (0.1 s) while rate limited is never sent: the state is open again in time
    sent = run(d, [0.08] * 10 + [0.0] * 10 + [0.08] * 100, dt=0.01)
    assert [c.kind for _, c in sent] == ["open"]


def test_width_mode_sends_on_delta_only():
    d = GripperDecider(GripperDecisionConfig(mode="width", min_width_delta=0.005, min_interval=0.0))
    widths = [0.05, 0.052, 0.054, 0.0551, 0.056, 0.02, 0.02]
    sent = run(d, widths)
    assert [(i, c.kind, round(c.width, 4)) for i, c in sent] == [
        (0, "move", 0.05),
        (3, "move", 0.0551),
        (5, "move", 0.02),
    ]


def test_width_mode_clamps_to_range():
    d = GripperDecider(GripperDecisionConfig(mode="width", min_interval=0.0))
    assert d.update(0.5, 0.0).width == pytest.approx(0.08)
    assert d.update(-1.0, 1.0).width == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "x"])
def test_non_finite_inputs_are_ignored_and_counted(bad):
    d = GripperDecider(GripperDecisionConfig(mode="binary", min_interval=0.0))
    assert d.update(0.08, 0.0).kind == "open"
    assert d.update(bad, 0.1) is None
    assert d.rejected_inputs == 1
    assert d.last_sent.kind == "open"


def test_invalidate_resends_after_failure_but_keeps_rate_limit():
    d = GripperDecider(GripperDecisionConfig(mode="binary", min_interval=0.2))
    assert d.update(0.0, 0.0).kind == "close"
    d.invalidate()
    assert d.update(0.0, 0.1) is None  # rate limited
    again = d.update(0.0, 0.25)
    assert again is not None and again.kind == "close"
    assert d.update(0.0, 0.6) is None  # no further resend


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "toggle"},
        {"min_interval": -1.0},
        {"threshold": math.nan},
        {"open_width": 0.0},
        {"open_width": 0.1},
        {"threshold": 0.079, "hysteresis": 0.01},
    ],
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(ValueError, match="gripper"):
        GripperDecisionConfig(**kwargs)
