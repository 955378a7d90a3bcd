"""Reaching scene sampling, success metric, camera projection and the renderer."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest
from apt_policy.robots.franka import FR3
from apt_policy.tasks.reaching import (
    BLOCK_SIZE,
    REACH_HEIGHT,
    SUCCESS_RADIUS,
    Block,
    Scene,
    block_pixel,
    is_success,
    make_camera,
    make_cameras,
    render,
    sample_scene,
)
from apt_policy.tasks.scene import MIN_BLOCK_SPACING, WORKSPACE


def test_scene_is_reproducible_from_seed_and_blocks_do_not_overlap() -> None:
    assert sample_scene(7) == sample_scene(7)
    assert sample_scene(7) != sample_scene(8)
    for seed in range(20):
        scene = sample_scene(seed)
        assert scene.colors == ("red", "green", "blue")
        for a, b in itertools.combinations(scene.blocks, 2):
            assert math.hypot(a.x - b.x, a.y - b.y) >= MIN_BLOCK_SPACING
        for b in scene.blocks:
            assert WORKSPACE["x"][0] <= b.x <= WORKSPACE["x"][1]
            assert WORKSPACE["y"][0] <= b.y <= WORKSPACE["y"][1]


def test_success_metric_uses_the_reach_point_and_3cm_radius() -> None:
    scene = Scene((Block("red", 0.5, 0.1), Block("green", 0.5, -0.1)))
    reach = np.array([0.5, 0.1, BLOCK_SIZE + REACH_HEIGHT])
    np.testing.assert_allclose(scene.block("red").reach_point, reach)
    assert SUCCESS_RADIUS == 0.03
    assert is_success(reach, scene, "red")
    assert is_success(reach + np.array([0.0, 0.0, 0.029]), scene, "red")
    assert not is_success(reach + np.array([0.0, 0.0, 0.031]), scene, "red")
    assert not is_success(reach + np.array([0.0, 0.022, 0.022]), scene, "red")  # 3.1 cm off-axis
    assert not is_success(reach, scene, "green")
    with pytest.raises(KeyError, match="blue"):
        is_success(reach, scene, "blue")


def test_scene_json_round_trip_and_validation() -> None:
    scene = sample_scene(3)
    assert Scene.from_dict(scene.to_dict()) == scene
    assert Scene.from_dict({"seed": 3}) == scene
    with pytest.raises(ValueError, match="colour"):
        Scene((Block("purple", 0.5, 0.0),))
    with pytest.raises(ValueError, match="one block per colour"):
        Scene((Block("red", 0.5, 0.0), Block("red", 0.4, 0.1)))
    with pytest.raises(ValueError, match="unknown block fields"):
        Scene.from_dict({"blocks": [{"color": "red", "x": 0.5, "y": 0.0, "z": 1.0}]})


def test_camera_projects_the_optical_axis_target_to_the_image_centre() -> None:
    cam = make_camera("front", 640, 480)
    target = cam.world_from_camera[:3, 3] + cam.world_from_camera[:3, 2] * 1.5
    uv, depth = cam.project(target)
    np.testing.assert_allclose(uv, [319.5, 239.5], atol=1e-9)
    assert depth == pytest.approx(1.5)
    # Intrinsics scale with resolution: a D435-like 615 px focal length at 640x480.
    assert cam.fx == pytest.approx(615.0) and cam.fy == pytest.approx(615.0)
    assert make_camera("front", 320, 240).fx == pytest.approx(307.5)
    # Any size keeps the 640x480 field of view (the policy resizes without cropping).
    square = make_camera("front", 96, 96)
    assert (square.fx, square.fy) == (pytest.approx(615.0 * 96 / 640), pytest.approx(615.0 * 96 / 480))


@pytest.mark.parametrize("size", [(480, 640), (96, 96), (64, 80)])
def test_render_shape_dtype_and_determinism(size: tuple[int, int]) -> None:
    h, w = size
    cam = make_camera("front", w, h)
    scene = sample_scene(0)
    a = render(scene, FR3.ready_pose, cam)
    assert a.shape == (h, w, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render(scene, FR3.ready_pose, cam))


def test_blocks_appear_in_their_colour_where_they_project() -> None:
    cam = make_camera("front", 640, 480)
    scene = sample_scene(0)
    img = render(scene, FR3.ready_pose, cam)
    dominant = {"red": 0, "green": 1, "blue": 2}
    for block in scene.blocks:
        u, v = block_pixel(scene, block.color, cam)
        patch = img[int(v) - 2 : int(v) + 3, int(u) - 2 : int(u) + 3].reshape(-1, 3).astype(int)
        mean = patch.mean(axis=0)
        assert int(np.argmax(mean)) == dominant[block.color], (block.color, mean)


def test_renders_differ_where_blocks_differ() -> None:
    cam = make_camera("front", 160, 120)
    scene = sample_scene(0)
    red = scene.block("red")
    moved = Scene(
        tuple(Block(b.color, b.x, b.y - 0.08, b.yaw) if b.color == "red" else b for b in scene.blocks)
    )
    a = render(scene, FR3.ready_pose, cam)
    b = render(moved, FR3.ready_pose, cam)
    changed = np.any(a != b, axis=2)
    assert changed.sum() > 20
    # Every changed pixel lies near the red block's old or new position.
    ys, xs = np.nonzero(changed)
    centres = [block_pixel(scene, "red", cam), block_pixel(moved, "red", cam)]
    near = np.zeros(len(xs), bool)
    for u, v in centres:
        near |= np.hypot(xs - u, ys - v) < 22  # a cube spans ~15 px here, its shadow a few more
    assert near.all()
    assert red.x == moved.block("red").x


def test_render_changes_when_the_arm_moves_and_rejects_bad_joints() -> None:
    cam = make_camera("front", 160, 120)
    scene = sample_scene(0)
    q = FR3.ready_pose.copy()
    q[0] += 0.3
    assert np.any(render(scene, q, cam) != render(scene, FR3.ready_pose, cam))
    with pytest.raises(ValueError, match="7 finite"):
        render(scene, np.full(7, np.nan), cam)


def test_camera_rig_matches_a_resized_native_frame() -> None:
    scene = sample_scene(0)
    native = render(scene, FR3.ready_pose, make_camera("front", 640, 480))
    expected = cv2.resize(native, (96, 72), interpolation=cv2.INTER_AREA)
    rig = make_cameras(["front"], (72, 96))
    np.testing.assert_array_equal(rig.render(scene, FR3.ready_pose, 0.08)["front"], expected)
    # Rendering directly at the small size is an approximation of the same view.
    direct = make_cameras(["front"], (72, 96), render_size=None).render(scene, FR3.ready_pose, 0.08)["front"]
    other = make_cameras(["front"], (72, 96), render_size=None).render(sample_scene(9), FR3.ready_pose, 0.08)
    error = np.abs(direct.astype(int) - expected).mean()
    assert error < 6.0
    assert error < np.abs(other["front"].astype(int) - expected).mean()
