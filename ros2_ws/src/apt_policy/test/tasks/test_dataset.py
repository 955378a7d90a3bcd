"""Stage-1 / Stage-2 demonstration datasets."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from apt_policy.robots.franka import FR3
from apt_policy.tasks.dataset import cached_dataset, executed_target, with_start_views
from apt_policy.tasks.reaching import (
    TRAIN_TEMPLATES,
    DemoConfig,
    DemoDataset,
    generate_dataset,
    generate_episode,
    target_color,
)

CONFIG = DemoConfig(cameras=("front", "side"), image_size=(24, 32), horizon=8, steps_per_episode=12)


def test_stage1_has_no_language_and_stage2_names_the_target() -> None:
    s1 = generate_dataset(4, stage=1, config=CONFIG, progress=False)
    assert set(s1.instructions.tolist()) == {""}
    s2 = generate_dataset(6, stage=2, config=CONFIG, progress=False)
    allowed = {t.format(color=c) for t in TRAIN_TEMPLATES for c in ("red", "green", "blue")}
    for instruction, target in zip(s2.instructions, s2.targets, strict=False):
        assert instruction in allowed
        assert target_color(str(instruction)) == target
    assert len(s2) == 6 * 12
    assert s2.images["side"].shape == (72, 24, 32, 3)
    assert s2.states.shape == (72, 8) and s2.actions.shape == (72, 8, 8)
    assert s2.state_names[-1] == "gripper_width" and s2.action_names[0] == "fr3_joint1"


def test_action_labels_match_the_executed_trajectory() -> None:
    samples = list(generate_episode(11, stage=2, config=CONFIG))
    for now, nxt in itertools.pairwise(samples):
        # Without execution noise the arm executes the first action of each label chunk.
        np.testing.assert_allclose(now["actions"][0, :7], nxt["state"][:7], atol=1e-5)
        np.testing.assert_allclose(now["actions"][:, 7], now["state"][7])
    # The episode makes progress toward the labelled target.
    target = samples[0]["scene"].block(samples[0]["target"])
    from apt_policy.robots.franka import forward_kinematics

    d0 = np.linalg.norm(forward_kinematics(samples[0]["state"][:7].astype(float))[:3, 3] - target.reach_point)
    d1 = np.linalg.norm(
        forward_kinematics(samples[-1]["state"][:7].astype(float))[:3, 3] - target.reach_point
    )
    assert d1 < d0 / 2


def test_generation_is_reproducible_and_saves_round_trip(tmp_path: Path) -> None:
    a = generate_dataset(2, stage=2, config=CONFIG, seed=5, progress=False)
    b = generate_dataset(2, stage=2, config=CONFIG, seed=5, progress=False)
    c = generate_dataset(2, stage=2, config=CONFIG, seed=6, progress=False)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.images["front"], b.images["front"])
    assert not np.array_equal(a.images["front"], c.images["front"])
    path = a.save(tmp_path / "demos.npz")
    loaded = DemoDataset.load(path)
    assert loaded.stage == 2 and loaded.config["horizon"] == 8
    np.testing.assert_array_equal(loaded.images["side"], a.images["side"])
    np.testing.assert_array_equal(loaded.actions, a.actions)
    assert loaded.instructions.tolist() == a.instructions.tolist()
    assert loaded[3]["instruction"] == a.instructions[3]


def test_execution_noise_perturbs_states_not_labels() -> None:
    noisy = DemoConfig(image_size=(16, 16), horizon=4, steps_per_episode=6, execution_noise=0.02)
    samples = list(generate_episode(3, stage=1, config=noisy))
    gaps = [np.abs(s["actions"][0, :7] - n["state"][:7]).max() for s, n in itertools.pairwise(samples)]
    assert max(gaps) > 1e-3


def test_executed_target_draws_the_old_noise_and_kicks_that_often() -> None:
    joints = FR3.ready_pose.astype(float)
    # Kicks off: the same draws as before kicks existed (joints + N(0, execution_noise) per joint).
    plain = DemoConfig(execution_noise=0.02)
    got = executed_target(joints, np.random.default_rng(4), plain)
    expected = FR3.clip_position(joints + np.random.default_rng(4).normal(0, 0.02, 7))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(executed_target(joints, np.random.default_rng(4), DemoConfig()), joints)
    # Kicks on: about kick_probability of the steps land kick_noise further off.
    kicked = DemoConfig(execution_noise=0.0, kick_probability=0.25, kick_noise=0.05)
    rng = np.random.default_rng(0)
    offsets = np.array([np.abs(executed_target(joints, rng, kicked) - joints).max() for _ in range(2000)])
    assert 0.2 < np.mean(offsets > 0) < 0.3
    assert np.median(offsets[offsets > 0]) > 0.05  # the largest of 7 half-normal draws of scale 0.05


def test_kick_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="kick_probability"):
        DemoConfig(kick_probability=1.5)
    with pytest.raises(ValueError, match="noise magnitudes"):
        DemoConfig(kick_noise=-0.1)


def test_worker_processes_give_the_same_dataset() -> None:
    small = DemoConfig(image_size=(16, 24), horizon=4, steps_per_episode=3, execution_noise=0.02)
    one = generate_dataset(23, stage=2, config=small, seed=9, progress=False)
    three = generate_dataset(23, stage=2, config=small, seed=9, progress=False, workers=3)
    assert len(three) == 23 * 3 and three.episode.tolist() == one.episode.tolist()
    np.testing.assert_array_equal(three.images["front"], one.images["front"])
    np.testing.assert_array_equal(three.actions, one.actions)
    np.testing.assert_array_equal(three.states, one.states)
    assert three.instructions.tolist() == one.instructions.tolist()
    assert three.step.tolist() == one.step.tolist()
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(1, stage=2, config=small, workers=0)


def test_cached_dataset_loads_a_matching_copy_and_regenerates_on_other_settings(tmp_path: Path) -> None:
    small = DemoConfig(image_size=(16, 24), horizon=4, steps_per_episode=3)
    shared, own = tmp_path / "shared", tmp_path / "own"
    made = cached_dataset([shared], 2, small, seed=4, progress=False)
    assert (shared / "demos.npz").is_file() and (shared / "demos.key").is_file()
    (shared / "demos.npz").touch()
    stamp = (shared / "demos.npz").stat().st_mtime_ns
    again = cached_dataset([shared, own], 2, small, seed=4, progress=False)  # the shared copy, read
    np.testing.assert_array_equal(again.images["front"], made.images["front"])
    assert not own.exists() and (shared / "demos.npz").stat().st_mtime_ns == stamp
    other = cached_dataset([shared, own], 2, small, seed=5, progress=False)  # another seed: generated in own
    assert (own / "demos.npz").is_file() and (shared / "demos.npz").stat().st_mtime_ns == stamp
    assert not np.array_equal(other.images["front"], made.images["front"])
    assert len(cached_dataset([own], 3, small, seed=5, progress=False)) == 9  # more episodes: regenerated
    with pytest.raises(ValueError, match="directory"):
        cached_dataset([], 2, small, seed=4)


def test_start_views_are_each_episodes_first_frame() -> None:
    """``front@start`` of every sample is its episode's step-0 front frame (the samples in any order), the
    live views are untouched, and a start view of a camera the data lacks is refused."""
    data = generate_dataset(3, stage=2, config=CONFIG, seed=5, progress=False)
    order = np.random.default_rng(0).permutation(len(data))  # shuffled: the first frame is found by step
    shuffled = data.select(order)
    out = with_start_views(shuffled, ("front", "front@start", "side"))
    assert list(out.images) == ["front", "side", "front@start"]
    np.testing.assert_array_equal(out.images["side"], shuffled.images["side"])
    for i in range(len(out)):
        j = np.nonzero((data.episode == out.episode[i]) & (data.step == 0))[0][0]
        np.testing.assert_array_equal(out.images["front@start"][i], data.images["front"][j])
    later = np.nonzero(out.step > 3)[0]
    assert not np.array_equal(out.images["front@start"][later], out.images["front"][later])  # the arm moved
    assert with_start_views(data, ("front",)) is data
    with pytest.raises(ValueError, match="wrist"):
        with_start_views(data, ("front", "wrist@start"))
