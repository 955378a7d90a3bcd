"""The simulated-clock evaluator: reproducible from a seed, RTC through the node's control core, and its
violation checker (SimArm, fake_franka's contract) catches an infeasible command."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.runtime.latency import parse_latency
from apt_policy.sim.closed_loop import EvalConfig, ScriptedPolicy, evaluate, run_episode
from apt_policy.tasks.scene import sample_scene

SHORT = {"max_time_s": 4.0}


def test_same_seed_same_figures_and_latency_costs_simulated_not_wall_time() -> None:
    cfg = EvalConfig(latency="orin", strategy="crossfade", episodes=2, seed=3, **SHORT)
    a = evaluate(ScriptedPolicy(), cfg)
    b = evaluate(ScriptedPolicy(), cfg)
    assert a.rows == b.rows and a.switch_dv_p99 == b.switch_dv_p99 and a.jerk_rms == b.jerk_rms
    other = evaluate(
        ScriptedPolicy(), EvalConfig(latency="orin", strategy="crossfade", episodes=2, seed=4, **SHORT)
    )
    assert other.jerk_rms != a.jerk_rms  # the seed matters (latency draws, chunk noise)
    assert a.success_rate == 1.0 and a.violations == 0
    assert a.wall_s < 60  # 2 x 4 simulated seconds with ~180 ms inference: CPU seconds, no sleeping


def test_rtc_sends_prefixes_the_policy_honours_and_chunks_take_over_on_time() -> None:
    policy = ScriptedPolicy(rtc="trained")
    cell = evaluate(policy, EvalConfig(latency="fixed:200", strategy="rtc", episodes=1, **SHORT))
    sent = [p for p in policy.prefixes if p is not None]
    assert len(sent) >= 3 and all(p.shape == (3, 8) for p in sent)  # 200 ms at 0.1 s: 3 actions consumed
    assert cell.rtc_on_time >= len(sent) - 1 and cell.rtc_late == 0
    assert cell.violations == 0 and cell.success_rate == 1.0


def test_rtc_falls_back_to_crossfade_for_a_policy_without_rtc_inputs() -> None:
    policy = ScriptedPolicy(rtc=None)
    cell = evaluate(policy, EvalConfig(latency="fixed:200", strategy="rtc", episodes=1, **SHORT))
    assert all(p is None for p in policy.prefixes) and cell.rtc_on_time == 0
    crossfade = evaluate(
        ScriptedPolicy(), EvalConfig(latency="fixed:200", strategy="crossfade", episodes=1, **SHORT)
    )
    assert cell.rows == crossfade.rows and cell.switch_dv_p99 == crossfade.switch_dv_p99


def test_rtc_switches_are_smoother_than_none_at_the_same_latency() -> None:
    cfg = {"latency": "fixed:200", "episodes": 2, **SHORT}
    none = evaluate(ScriptedPolicy(disagreement=0.02), EvalConfig(strategy="none", **cfg))
    rtc = evaluate(ScriptedPolicy(disagreement=0.02, rtc="trained"), EvalConfig(strategy="rtc", **cfg))
    assert rtc.switch_dv_p99 < none.switch_dv_p99 / 3


def test_violation_checker_catches_an_injected_infeasible_command() -> None:
    scene = sample_scene(20_000)
    policy = ScriptedPolicy()
    cfg = EvalConfig(latency="none", strategy="crossfade", episodes=1, max_time_s=1.0)

    def jump(t: float, traj):  # at 0.5 s: the look-ahead's first point 0.2 rad away from the plan
        if abs(t - 1.5) < 1e-9:
            positions = traj.positions.copy()
            positions[:, 0] += 0.2
            return type(traj)(traj.times, positions, traj.velocities)
        return traj

    clean = run_episode(policy, scene, "red", "reach the red block", cfg, np.random.default_rng(0))
    bad = run_episode(
        policy,
        scene,
        "red",
        "reach the red block",
        cfg,
        np.random.default_rng(0),
        parse_latency("none"),
        jump,
    )
    assert clean.violation_total == 0
    assert bad.violations.get("too_fast", 0) >= 1


@pytest.mark.parametrize("strategy", ["none", "ensemble"])
def test_every_strategy_runs_without_violations(strategy: str) -> None:
    cell = evaluate(ScriptedPolicy(), EvalConfig(latency="thor", strategy=strategy, episodes=1, **SHORT))
    assert cell.violations == 0 and cell.switches > 0


def test_delay_estimate_carries_over_episodes_like_a_running_node() -> None:
    """The node keeps one controller for its lifetime: the evaluator hands each episode's delay window to
    the next (``warm_delay``, default), so the second episode's estimate starts from the first's."""
    cfg = EvalConfig(latency="fixed:200", strategy="rtc", episodes=1, **SHORT)
    scene = sample_scene(20_000)
    delays: list[int] = []
    first = run_episode(
        ScriptedPolicy(rtc="trained"),
        scene,
        scene.colors[0],
        "reach the red block",
        cfg,
        np.random.default_rng(0),
        delays=delays,
    )
    assert len(delays) == first.chunks and set(delays) == {3}  # 200 ms at 0.1 s: 3 actions each
    second = run_episode(
        ScriptedPolicy(rtc="trained"),
        scene,
        scene.colors[0],
        "reach the red block",
        cfg,
        np.random.default_rng(0),
        delays=delays,
    )
    assert len(delays) == first.chunks + second.chunks  # the window continued (50 > both)
    cold = run_episode(
        ScriptedPolicy(rtc="trained"),
        scene,
        scene.colors[0],
        "reach the red block",
        cfg,
        np.random.default_rng(0),
    )
    assert cold.chunking["delay_measured"] == first.chunks  # without the list: starts empty


def test_node_parameters_come_from_a_ros2_parameter_file(tmp_path) -> None:
    from apt_policy.sim.closed_loop import node_params_from_yaml

    f = tmp_path / "p.yaml"
    f.write_text(
        "apt_policy:\n  ros__parameters:\n    chunk_request_threshold: 4\n    chunk_execution: none\n"
        "    model: /x\n    not_a_parameter: 1\n"
    )
    assert node_params_from_yaml(f) == {"chunk_request_threshold": 4}  # the cell sets the strategy itself
    f.write_text("apt_policy: {}\n")
    with pytest.raises(SystemExit, match="no ros__parameters"):
        node_params_from_yaml(f)


class _StatefulScripted(ScriptedPolicy):
    """The scripted stand-in declaring a 3-step history (as the action-prior family does); it records what it
    is given."""

    def __init__(self) -> None:
        super().__init__()
        base = self._info

        class Info:
            history_steps = 3

            def __getattr__(self, name: str):
                return getattr(base, name)

        self._info = Info()
        self.histories: list = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):  # type: ignore[no-untyped-def]
        self.histories.append((np.array(state), history))
        return super().predict(images, state, instruction, noise, prefix)


def test_a_stateful_policy_gets_the_released_commands_as_its_history() -> None:
    policy = _StatefulScripted()
    cell = evaluate(policy, EvalConfig(latency="fixed:100", strategy="crossfade", episodes=2, **SHORT))
    assert cell.success_rate == 1.0 and cell.violations == 0
    histories = [h for _, h in policy.histories]
    assert all(h is not None and h.states.shape == h.actions.shape == (3, 8) for h in histories)
    starts = [i for i, (_, h) in enumerate(policy.histories) if not h.valid.any()]
    assert starts[0] == 0 and len(starts) == 2  # an episode start in each episode (controller not RUNNING)
    later = [(s, h) for s, h in policy.histories if h.valid.all()]
    assert len(later) >= 4
    for state, h in later:
        # executed commands at the policy's dt: the last one is where the arm was sent just before the
        # observation (it follows within tracking error), the states are measured joints
        assert np.abs(h.actions[-1, :7] - state[:7]).max() < 0.05
        assert np.all(np.isfinite(h.actions)) and np.all(np.isfinite(h.states))
    moving = [h for _, h in later if np.abs(np.diff(h.actions[:, :7], axis=0)).max() > 1e-3]
    assert moving  # the steps differ while the arm moves: one per dt, not one command repeated


class _Seeing(ScriptedPolicy):
    """The scripted stand-in declaring the demo model's camera (front, 96x128); it records the frames."""

    def __init__(self) -> None:
        super().__init__()
        base = self._info

        class Info:
            cameras = ("front",)
            image_size = (96, 128)

            def __getattr__(self, name: str):
                return getattr(base, name)

        self._info = Info()
        self.seen: list = []

    def predict(self, images, state, instruction, noise=None, prefix=None):  # type: ignore[no-untyped-def]
        self.seen.append((dict(images), np.array(state)))
        return super().predict(images, state, instruction, noise, prefix)


def test_the_policy_sees_the_camera_frame_resized_as_at_deployment() -> None:
    """fake_camera renders 640x480 and the node shrinks it (core.preprocess); a frame rendered directly at
    96x128 differs (edges do not thin out), and the demo models measured 88 vs 94 % success on it."""
    from apt_policy.core.preprocess import resize_rgb
    from apt_policy.tasks.camera import make_camera
    from apt_policy.tasks.render import render

    policy = _Seeing()
    evaluate(policy, EvalConfig(latency="none", strategy="crossfade", episodes=1, max_time_s=1.0))
    scene = sample_scene(EvalConfig().scene_seed)
    assert policy.seen
    for images, state in policy.seen[:3]:
        native = render(scene, state[:7].astype(np.float64), make_camera("front", 640, 480), float(state[7]))
        np.testing.assert_array_equal(images["front"], resize_rgb(native, (96, 128)))
        direct = render(scene, state[:7].astype(np.float64), make_camera("front", 128, 96), float(state[7]))
        assert np.abs(images["front"].astype(int) - direct.astype(int)).max() > 20


class _SeeingStart(_Seeing):
    """``_Seeing`` with a ``front@start`` view and no history steps; marks where each episode begins."""

    def __init__(self) -> None:
        super().__init__()
        inner = self._info

        class Info:
            cameras = ("front", "front@start")

            def __getattr__(self, name: str):
                return getattr(inner, name)

        self._info = Info()
        self.episode_starts: list[int] = []  # index into ``seen`` of each episode's first prediction

    def reset(self, scene, color, seed) -> None:  # type: ignore[no-untyped-def]
        super().reset(scene, color, seed)
        self.episode_starts.append(len(self.seen))

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):  # type: ignore[no-untyped-def]
        return super().predict(images, state, instruction, noise, prefix)


def test_a_start_view_gets_the_frame_of_each_episodes_first_prediction() -> None:
    """Two episodes (two scenes): every prediction's start view is the live frame of its own episode's first
    prediction (not the episode before's, not its own live frame once the arm moved)."""
    policy = _SeeingStart()
    evaluate(policy, EvalConfig(latency="none", strategy="crossfade", episodes=2, max_time_s=1.5))
    starts = policy.episode_starts
    assert len(starts) == 2 and len(policy.seen) >= starts[1] + 2 >= 4
    for first, end in zip(starts, [*starts[1:], len(policy.seen)], strict=True):
        held = policy.seen[first][0]["front"]
        for images, _ in policy.seen[first:end]:
            np.testing.assert_array_equal(images["front@start"], held)
    first_frames = [policy.seen[i][0]["front"] for i in starts]
    assert not np.array_equal(*first_frames)  # two scenes: a view carried over would fail above
    assert any(not np.array_equal(im["front"], im["front@start"]) for im, _ in policy.seen)  # the arm moved
