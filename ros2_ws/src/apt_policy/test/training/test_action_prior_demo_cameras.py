"""The action-prior demo's ``cameras`` setting: the views reach the data config and the VLM's layout (a start
view in the layout, not in the data), and saved demonstrations from other views are refused before any
training."""

from __future__ import annotations

from pathlib import Path

import pytest
from apt_policy.tasks.dataset import DemoConfig, generate_dataset
from apt_policy.training.demo_action_prior import (
    PriorDemoSettings,
    _demo_config,
    _policy_config,
    run_prior_demo,
)


def test_two_views_reach_the_data_and_the_backbone_layout() -> None:
    s = PriorDemoSettings(cameras=("front", "side"))
    dc = _demo_config(s)
    assert dc.cameras == ("front", "side")
    small = DemoConfig(cameras=dc.cameras, image_size=(16, 24), horizon=4, steps_per_episode=2)
    data = generate_dataset(1, 2, small, progress=False)
    config = _policy_config(s, data, dc)
    assert tuple(config.cameras) == ("front", "side") and config.backbone["num_cameras"] == 2
    one = PriorDemoSettings(cameras=("front",))
    assert _policy_config(one, data, _demo_config(one)).backbone["num_cameras"] == 1


def test_the_default_start_view_is_rendered_by_no_camera_but_laid_out_in_the_vlm() -> None:
    s = PriorDemoSettings()
    assert s.cameras == ("front", "front@start")
    dc = _demo_config(s)
    assert dc.cameras == ("front",)  # the data renders the live view; the start view is taken from it
    small = DemoConfig(cameras=dc.cameras, image_size=(16, 24), horizon=4, steps_per_episode=2)
    config = _policy_config(s, generate_dataset(1, 2, small, progress=False), dc)
    assert tuple(config.cameras) == ("front", "front@start") and config.backbone["num_cameras"] == 2
    with pytest.raises(ValueError, match="'side@start' is the start view of 'side'"):
        _demo_config(PriorDemoSettings(cameras=("front", "side@start")))


def test_demonstrations_from_other_views_are_refused(tmp_path: Path) -> None:
    s = PriorDemoSettings()
    front_only = DemoConfig(
        cameras=("front",), image_size=s.image_size, horizon=s.horizon, steps_per_episode=2
    )
    path = generate_dataset(1, 2, front_only, progress=False).save(tmp_path / "demos.npz")
    with pytest.raises(ValueError, match=r"cameras \('front',\), these settings \('front', 'side'\)"):
        run_prior_demo(tmp_path / "out", progress=False, data=str(path), cameras=("front", "side"))
