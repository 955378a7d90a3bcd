"""The demo report from synthetic recordings: metrics, summary table, figure, video, MCAP save/load."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from apt_policy.demo.recording import EpisodePlan, EpisodeRecording, load_recordings, save_recordings
from apt_policy.demo.report import (
    build_report,
    episode_metrics,
    format_summary,
    nan_to_none,
    plot_report,
    tcp_positions,
    video_frame_count,
    write_video,
)
from apt_policy.robots.franka import FR3
from apt_policy.tasks.expert import goal_configuration
from apt_policy.tasks.scene import SUCCESS_RADIUS, sample_scene

RATE = 100.0


def _recording(
    seed: int,
    target: str,
    end_color: str | None,
    *,
    chunk_ms: list[float],
    command_t: np.ndarray,
    interventions: int = 0,
    violations: int = 0,
    switch: tuple[float, str] | None = None,
    frames: int = 0,
) -> EpisodeRecording:
    """An episode whose arm moves linearly (in joint space) from the ready pose to the reach configuration of
    ``end_color`` over 2 s (or stays at the ready pose when None), sampled at 200 Hz for 3 s."""
    scene = sample_scene(seed)
    q_start = FR3.ready_pose.copy()
    q_end = q_start if end_color is None else goal_configuration(scene.block(end_color))
    t = np.arange(0.0, 3.0, 0.005)
    alpha = np.clip(t / 2.0, 0.0, 1.0)[:, None]
    joint_q = q_start + alpha * (q_end - q_start)
    instructions: tuple[tuple[float, str], ...] = ((0.0, f"reach the {target} block"),)
    if switch is not None:
        instructions = ((0.0, f"reach the {switch[1]} block"), (switch[0], f"go to the {target} block"))
    plan = EpisodePlan(f"ep-{seed}", seed, target, instructions, tuple(q_start), 10.0)
    n_frames = np.arange(frames)
    return EpisodeRecording(
        plan=plan,
        scene=scene.to_dict(),
        joint_t=t,
        joint_q=joint_q,
        chunk_t=np.linspace(0.1, 2.9, len(chunk_ms)),
        chunk_ms=np.asarray(chunk_ms, dtype=np.float64),
        chunk_instruction=[instructions[-1][1]] * len(chunk_ms),
        command_t=command_t,
        status_t=np.array([0.5, 1.5, 2.5]),
        status_state=np.array([1, 1, 1]),
        status_interventions=np.array([0, interventions // 2, interventions]),
        status_missed_ticks=np.array([0, 0, 1]),
        robot_report={"total_violations": violations, "violations": {"too_fast": violations, "gripper": 0}},
        node_stats={"tick_lateness_p99_ms": 0.7},
        duration_s=3.0,
        frame_t=n_frames / 10.0,
        frames=np.stack([np.full((60, 80, 3), (i * 5) % 255, np.uint8) for i in n_frames])
        if frames
        else np.zeros((0, 1, 1, 3), np.uint8),
    )


def _regular_commands(n: int, late: dict[int, float] | None = None) -> np.ndarray:
    """n command arrival times 10 ms apart; ``late[i] = extra`` delays arrival i (and all after it)."""
    intervals = np.full(n - 1, 0.010)
    for i, extra in (late or {}).items():
        intervals[i - 1] += extra
    return np.concatenate([[0.0], np.cumsum(intervals)])


@pytest.fixture
def recordings() -> list[EpisodeRecording]:
    return [
        _recording(20_000, "red", "red", chunk_ms=[10, 20, 30, 40], command_t=_regular_commands(201)),
        _recording(
            20_001,
            "green",
            "blue",
            chunk_ms=[50, 60],
            command_t=_regular_commands(101, {50: 0.020}),
            interventions=4,
            violations=2,
        ),
        _recording(
            20_002, "blue", "blue", chunk_ms=[70], command_t=_regular_commands(11), switch=(1.0, "red")
        ),
    ]


def test_success_final_distance_and_reached_block(recordings: list[EpisodeRecording]) -> None:
    ok, wrong, switched = (episode_metrics(r, RATE) for r in recordings)
    assert ok["success"] and ok["reached"] == "red" and ok["final_distance_m"] < 1e-3
    assert not wrong["success"] and wrong["reached"] == "blue"
    blocks = {b["color"]: b for b in recordings[1].scene["blocks"]}
    green = np.array([blocks["green"]["x"], blocks["green"]["y"], 0.07])
    expected = np.linalg.norm(tcp_positions(recordings[1].joint_q[-1:])[0] - green)
    assert wrong["final_distance_m"] == pytest.approx(expected)
    assert wrong["final_distance_m"] > SUCCESS_RADIUS
    assert switched["success"] and switched["target"] == "blue"


def test_time_to_reach_counts_from_the_last_instruction(recordings: list[EpisodeRecording]) -> None:
    rec = recordings[0]
    d = np.linalg.norm(tcp_positions(rec.joint_q) - sample_scene(20_000).block("red").reach_point, axis=1)
    first_inside = rec.joint_t[np.flatnonzero(d < SUCCESS_RADIUS)[0]]
    assert episode_metrics(rec, RATE)["time_to_reach_s"] == pytest.approx(first_inside)
    assert 0.5 < first_inside < 2.0  # the linear move reaches the radius before it ends at 2 s
    sw = recordings[2]
    d = np.linalg.norm(tcp_positions(sw.joint_q) - sample_scene(20_002).block("blue").reach_point, axis=1)
    inside_after_switch = sw.joint_t[np.flatnonzero((d < SUCCESS_RADIUS) & (sw.joint_t >= 1.0))[0]]
    assert episode_metrics(sw, RATE)["time_to_reach_s"] == pytest.approx(inside_after_switch - 1.0)
    assert episode_metrics(recordings[1], RATE)["time_to_reach_s"] is None


def test_control_rate_jitter_and_latency(recordings: list[EpisodeRecording]) -> None:
    ep1 = episode_metrics(recordings[0], RATE)
    assert ep1["control_rate_hz"] == pytest.approx(100.0)
    assert ep1["tick_jitter_ms_p99"] == pytest.approx(0.0, abs=1e-9)
    assert ep1["inference_ms_p50"] == pytest.approx(25.0)
    assert ep1["inference_ms_p99"] == pytest.approx(np.percentile([10, 20, 30, 40], 99))
    ep2 = episode_metrics(recordings[1], RATE)
    assert ep2["commands"] == 101
    assert ep2["control_rate_hz"] == pytest.approx(100 / 1.02)  # one interval 20 ms late
    assert ep2["command_interval_ms_p50"] == pytest.approx(10.0)
    assert ep2["tick_jitter_ms_p99"] == pytest.approx(np.percentile([0.0] * 99 + [20.0], 99))

    report = build_report(recordings, RATE, {"machine": "test"})
    s = report["summary"]
    assert (s["episodes"], s["successes"]) == (3, 2)
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["chunks"] == 7 and s["commands"] == 201 + 101 + 11
    assert s["inference_ms_p50"] == pytest.approx(40.0)  # median of 10..70
    assert s["command_interval_ms_max"] == pytest.approx(30.0)
    assert s["control_rate_hz"] == pytest.approx((200 + 100 + 10) / (2.0 + 1.02 + 0.1))
    assert s["safety_interventions"] == 4 and s["robot_violations"] == 2 and s["missed_ticks"] == 3
    assert report["episodes"][1]["robot_violations_by_kind"] == {"too_fast": 2}
    assert report["context"] == {"machine": "test"}
    json.dumps(nan_to_none(report), allow_nan=False)  # valid JSON


def test_commands_outside_the_episode_are_ignored() -> None:
    inside = _regular_commands(101)
    rec = _recording(20_000, "red", "red", chunk_ms=[5], command_t=np.concatenate([[-0.5], inside, [3.5]]))
    m = episode_metrics(rec, RATE)
    assert m["commands"] == 101 and m["control_rate_hz"] == pytest.approx(100.0)


def test_summary_table_names_each_episode_and_totals(recordings: list[EpisodeRecording]) -> None:
    text = format_summary(build_report(recordings, RATE))
    lines = text.splitlines()
    assert "reach the red block" in lines[2] and "success" in lines[2]
    assert "FAIL (blue)" in lines[3]
    assert "'reach the red block' -> 'go to the blue block' @1.0s" in lines[4]
    assert "success            2/3 (67%)" in text
    assert "4 safety-filter/watchdog interventions, 2 contract violations" in text


def test_no_joint_states_is_a_clear_error() -> None:
    rec = _recording(20_000, "red", "red", chunk_ms=[5], command_t=_regular_commands(3))
    rec.joint_t, rec.joint_q = np.zeros(0), np.zeros((0, 7))
    with pytest.raises(ValueError, match="no joint states"):
        episode_metrics(rec, RATE)
    with pytest.raises(ValueError, match="no episodes"):
        build_report([], RATE)


def test_figure_and_video_are_written_and_readable(tmp_path, recordings) -> None:
    for rec in recordings:
        frames = _recording(rec.plan.scene_seed, "red", None, chunk_ms=[1], command_t=np.zeros(2), frames=12)
        rec.frame_t, rec.frames = frames.frame_t, frames.frames
    report = build_report(recordings, RATE)
    png = plot_report(recordings, report, tmp_path / "report.png")
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 500 and image.shape[1] > 1000
    assert image.std() > 10  # not blank
    video = tmp_path / "episode.mp4"
    written = write_video(recordings, video, fps=10)
    assert written == 36
    assert video_frame_count(video) == written
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (60, 80, 3)


def test_video_without_frames_is_an_error(tmp_path, recordings) -> None:
    with pytest.raises(RuntimeError, match="no camera frames"):
        write_video(recordings, tmp_path / "x.mp4", fps=10)


def _approx(value):
    """pytest.approx for nested reports (times go through integer ns in the bag)."""
    if isinstance(value, dict):
        return {k: _approx(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_approx(v) for v in value]
    return pytest.approx(value, abs=1e-6) if isinstance(value, float) else value


def test_recordings_round_trip_through_an_mcap_bag(tmp_path, recordings) -> None:
    recordings[0].frame_t = np.array([0.0, 0.1])
    recordings[0].frames = np.random.default_rng(0).integers(0, 255, (2, 6, 8, 3), dtype=np.uint8)
    bag = save_recordings(recordings, tmp_path / "rec")
    assert sorted(p.suffix for p in bag.iterdir()) == [".mcap", ".yaml"]
    loaded = load_recordings(bag)
    assert [r.plan for r in loaded] == [r.plan for r in recordings]
    np.testing.assert_array_equal(loaded[1].joint_q, recordings[1].joint_q)
    np.testing.assert_allclose(loaded[1].joint_t, recordings[1].joint_t, atol=1e-9)
    np.testing.assert_array_equal(loaded[0].frames, recordings[0].frames)  # PNG in the synthetic bag
    np.testing.assert_allclose(loaded[1].command_t, recordings[1].command_t, atol=1e-6)
    assert loaded[1].robot_report == recordings[1].robot_report
    assert loaded[1].node_stats == recordings[1].node_stats
    assert loaded[2].chunk_instruction == recordings[2].chunk_instruction
    np.testing.assert_array_equal(loaded[1].status_interventions, recordings[1].status_interventions)
    assert build_report(loaded, RATE) == _approx(build_report(recordings, RATE))


def test_summary_names_the_hypervisor_steal_of_the_episodes(
    recordings: list[EpisodeRecording], tmp_path
) -> None:
    from apt_policy.demo.machine import steal_seconds

    report = build_report(recordings, RATE)
    report["context"] = {"hypervisor_steal_s": {"ep1": 0.02, "ep2": 0.33, "ep3": None}}
    text = format_summary(report)
    assert "hypervisor steal 350 ms over the episodes (all CPUs; most 330 ms in ep2)" in text
    report["context"] = {"hypervisor_steal_s": {"ep1": None}}
    assert "hypervisor steal" not in format_summary(report)  # not measurable: no line
    stat = tmp_path / "stat"
    stat.write_text("cpu  858640 11112 43473 64128 702 0 261 836 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert steal_seconds(stat) == pytest.approx(836 / ticks)
    stat.write_text("intr 1 2 3\n")
    assert steal_seconds(stat) is None and steal_seconds(tmp_path / "missing") is None
