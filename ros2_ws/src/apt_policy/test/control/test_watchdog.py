"""Watchdog input checks on explicit times."""

from __future__ import annotations

import math

import pytest
from apt_policy.control.watchdog import WatchdogConfig, stale_input_reason


def test_state_and_camera_ages() -> None:
    cfg = WatchdogConfig(max_state_age=0.1, max_camera_age=0.2)
    assert stale_input_reason(cfg, 10.0, 9.95, {"wrist": 9.85, "scene": 9.9}) is None
    assert stale_input_reason(cfg, 10.0, 9.85, None) == "joint state stale (150 ms > 100 ms)"
    reason = stale_input_reason(cfg, 10.0, 9.95, {"wrist": 9.7, "scene": 9.9})
    assert reason == "camera 'wrist' stale (300 ms > 200 ms)"
    assert stale_input_reason(cfg, 10.0, None, None) is None  # nothing to check
    assert stale_input_reason(cfg, 10.0, 10.5, {"wrist": 10.2}) is None  # future stamps count as fresh
    assert "invalid stamp" in (stale_input_reason(cfg, 10.0, math.nan, None) or "")
    assert "invalid stamp" in (stale_input_reason(cfg, 10.0, 9.99, {"wrist": "later"}) or "")


def test_required_cameras_must_have_frames() -> None:
    cfg = WatchdogConfig(cameras=("wrist", "scene"))
    assert stale_input_reason(cfg, 1.0, None, {"wrist": 1.0}) == "camera 'scene' has no frame"
    assert stale_input_reason(cfg, 1.0, None, {"wrist": 1.0, "scene": None}) == "camera 'scene' has no frame"
    assert stale_input_reason(cfg, 1.0, None, {"wrist": 1.0, "scene": 1.0, "extra": 0.0}) is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_state_age"):
        WatchdogConfig(max_state_age=0.0)
    with pytest.raises(ValueError, match="max_camera_age"):
        WatchdogConfig(max_camera_age=math.nan)
    assert WatchdogConfig(max_inference_latency=math.inf).max_inference_latency == math.inf
