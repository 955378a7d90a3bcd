"""Start views (``<camera>@start``): which cameras need a topic, which frame a start view holds and when it is
taken again, and the config refusing a start view of a camera the model does not have."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from apt_policy.control.history import HistoryBuffer
from apt_policy.core.config import ConfigError
from apt_policy.core.start_views import StartViews, check_cameras, live_cameras, start_source
from apt_policy.model.presets import tiny_policy_config


def _frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_names() -> None:
    cams = ("front", "front@start", "side")
    assert live_cameras(cams) == ("front", "side")
    assert start_source("front@start") == "front" and start_source("front") is None
    check_cameras(cams)
    with pytest.raises(ValueError, match="start view of 'wrist'"):
        check_cameras(("front", "wrist@start"))


def test_a_start_view_holds_the_first_frame_of_each_episode() -> None:
    views = StartViews(("front", "front@start"))
    first = views.add({"front": _frame(1)}, episode=0)
    assert set(first) == {"front", "front@start"}
    np.testing.assert_array_equal(first["front@start"], _frame(1))
    later = views.add({"front": _frame(2)}, episode=0)
    np.testing.assert_array_equal(later["front"], _frame(2))
    np.testing.assert_array_equal(later["front@start"], _frame(1))  # held, not the live frame
    new = views.add({"front": _frame(3)}, episode=1)
    np.testing.assert_array_equal(new["front@start"], _frame(3))
    np.testing.assert_array_equal(views.add({"front": _frame(4)}, episode=1)["front@start"], _frame(3))
    with pytest.raises(KeyError, match="front"):
        views.add({"side": _frame(5)}, episode=2)
    plain = StartViews(("front",))
    assert not plain and plain.add({"front": _frame(1)}, 0).keys() == {"front"}


def test_the_history_counts_episodes_only_after_something_was_executed() -> None:
    """Resets while nothing was sent (every tick before the first chunk) keep the episode: its start views
    were taken by the first prediction, before the arm moved."""
    for steps in (3, 0):  # a start-view model may keep no history steps and still needs the episodes
        h = HistoryBuffer(steps, 2, 2, 0.1)
        h.reset()
        h.reset()
        assert h.episode == 0
        assert h.record(0.0, np.zeros(2), np.ones(2))
        assert h.episode == 0
        h.reset()
        assert h.episode == 1
        h.reset()
        assert h.episode == 1
        h.record(1.0, np.zeros(2), np.ones(2))
        h.reset()
        assert h.episode == 2


def test_the_config_refuses_a_start_view_of_a_missing_camera() -> None:
    config = tiny_policy_config("pi")
    replace(config, cameras=("front", "front@start")).validate()
    with pytest.raises(ConfigError, match="'side@start' is the start view of 'side'"):
        replace(config, cameras=("front", "side@start")).validate()
