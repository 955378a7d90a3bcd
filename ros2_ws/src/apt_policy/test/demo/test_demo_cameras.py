"""demo/cameras.py: which fake cameras the demo starts for a model, and how the node is pointed at them."""

from __future__ import annotations

import pytest
from apt_policy.demo.cameras import node_camera_overrides, sim_cameras


def test_one_camera_keeps_the_recorded_topic_and_the_plain_node_name() -> None:
    (cam,) = sim_cameras(("front",))
    assert (cam.node, cam.image_topic, cam.info_topic) == (
        "fake_camera",
        "/camera/camera/color/image_raw",
        "/camera/camera/color/camera_info",
    )
    args = cam.arguments(7)
    assert "-r" not in args  # the probe sends scenes to this node's own ~/scene
    assert "scene_seed:=7" in args and "camera_preset:=front" in args


def test_further_cameras_get_realsense_topics_their_own_node_and_the_shared_scene() -> None:
    front, side = sim_cameras(("front", "side"))
    assert front.node == "fake_camera"
    assert (side.node, side.image_topic, side.info_topic) == (
        "fake_camera_side",
        "/camera/side/color/image_raw",
        "/camera/side/color/camera_info",
    )
    assert side.current_scene_topic == "/fake_camera_side/current_scene"
    args = side.arguments(3)
    assert args[:5] == [
        "--ros-args",
        "-r",
        "__node:=fake_camera_side",
        "-r",
        "/fake_camera_side/scene:=/fake_camera/scene",
    ]
    assert "camera_preset:=side" in args


def test_a_camera_without_a_pose_preset_or_a_repeated_one_is_refused() -> None:
    with pytest.raises(ValueError, match="only preset camera poses"):
        sim_cameras(("front", "wrist"))
    with pytest.raises(ValueError, match="repeat"):
        sim_cameras(("front", "front"))
    with pytest.raises(ValueError, match="no camera"):
        sim_cameras(())


def test_the_node_pairs_each_topic_with_its_model_camera() -> None:
    """The -p values parse as the string arrays the node declares (the override syntax is rcl's YAML)."""
    import yaml

    args = node_camera_overrides(sim_cameras(("front", "side")))
    values = dict(a.split(":=", 1) for a in args[1::2])
    assert yaml.safe_load(values["camera_topics"]) == [
        "/camera/camera/color/image_raw",
        "/camera/side/color/image_raw",
    ]
    assert yaml.safe_load(values["camera_names"]) == ["front", "side"]
