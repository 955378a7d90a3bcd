"""Closed-loop evaluation on a simulated clock, through the node's own control core.

    python -m apt_policy.sim.closed_loop --latency orin --strategy rtc --episodes 50
    python -m apt_policy.sim.closed_loop --table --episodes 50 --json table.json      # strategy x latency

One clock advances everything at the control rate: the simulated FR3 (:class:`apt_policy.sim.arm.SimArm`,
the joint_trajectory_controller contract fake_franka checks, physics every ``physics_dt``), the camera
renderer (``tasks``: 640x480 frames shrunk to the policy's size by ``core.preprocess``, exactly what the
policy gets from fake_camera through the node), the node's
:class:`~apt_policy.control.controller.Controller` built from the node's own parameters
(``ros.control_setup.build_controller``: schedule, blending / real-time chunking, safety filter, watchdog,
look-ahead sent as the node sends it) and the policy. An inference started at ``t`` delivers its
chunk at ``t + latency`` (latency drawn from the profile, ``runtime.latency``) while the arm keeps executing;
the next request waits for it, as the node's single inference worker does. A stateful policy
(``info.history_steps`` > 0, the action-prior family) gets the node's history: the commands released to the
arm (after the safety filter) with the state then, at the policy's dt, restarted whenever the controller is
not RUNNING (``control.history``, as the node keeps it). Nothing sleeps: 50 episodes at 200 ms take CPU
seconds to minutes, and every figure reproduces exactly from ``--seed``.

Policies: ``--policy scripted`` (the task's expert, with chunk-to-chunk disagreement like a learned policy;
see :class:`ScriptedPolicy`, no model needed) or ``--model EXPORT_DIR`` (any exported policy, via
``load_policy``). Per episode (:class:`EpisodeResult`): success (TCP within 3 cm of the named block's reach
point at the end, ``tasks.scene``), time to reach, final distance, at every chunk switch the jump of the
commanded joint velocity and acceleration and of the policy target's velocity (against the same jumps
within chunks), jerk RMS of the command, safety interventions, and contract violations counted by SimArm.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.control.controller import WAITING_FOR_CHUNK, ControllerState
from apt_policy.control.history import HistoryBuffer
from apt_policy.control.schedule import Chunk
from apt_policy.core.config import ActionSemantics
from apt_policy.core.start_views import StartViews, live_cameras
from apt_policy.robots.franka import FR3, forward_kinematics
from apt_policy.ros.control_setup import build_controller, execution_plan
from apt_policy.ros.params import defaults
from apt_policy.runtime.latency import LatencyProfile, parse_latency
from apt_policy.runtime.policy import History, PolicyInfo
from apt_policy.sim.arm import SimArm
from apt_policy.tasks.expert import ReachingExpert, goal_configuration
from apt_policy.tasks.instructions import make_instruction
from apt_policy.tasks.rollout import make_cameras
from apt_policy.tasks.scene import SUCCESS_RADIUS, Scene, distance_to_block, sample_scene

__all__ = [
    "CellResult",
    "EpisodeResult",
    "EvalConfig",
    "ScriptedPolicy",
    "evaluate",
    "run_episode",
    "run_table",
]

STRATEGY_ROWS = ("none", "crossfade", "ensemble", "rtc (training-free)", "rtc (trained)")
DEFAULT_LATENCIES = ("none", "rtx4090", "thor", "orin", "fixed:300")
SETTLE_SPEED = 0.03  # rad/s: every joint slower than this counts as at rest (as the demo)


# ------------------------------------------------------------------------------------------ policies


def _info(horizon: int, dt: float, rtc_inputs: bool, rtc_max_delay: int) -> Any:
    names = tuple(FR3.joint_names)
    info = PolicyInfo(
        backend="scripted",
        model_id="scripted-expert",
        cameras=(),
        image_size=(96, 96),
        horizon=horizon,
        action_dim=8,
        action_names=(*names, "gripper_width"),
        state_names=(*names, "gripper_width"),
        dt=dt,
        action_semantics=ActionSemantics("absolute", 1.0, "absolute"),
        steps=1,
    )
    # PolicyInfo gains rtc_inputs / rtc_max_delay with the RTC model branch; carried alongside until then.
    return _InfoWithRtc(info, rtc_inputs, rtc_max_delay)


class _InfoWithRtc:
    """A PolicyInfo plus ``rtc_inputs`` / ``rtc_max_delay`` (until PolicyInfo has them)."""

    def __init__(self, info: Any, rtc_inputs: bool, rtc_max_delay: int) -> None:
        self._info = info
        self.rtc_inputs = bool(rtc_inputs)
        self.rtc_max_delay = int(rtc_max_delay)

    def __getattr__(self, name: str) -> Any:
        if name == "_info":
            raise AttributeError(name)
        return getattr(self._info, name)


class ScriptedPolicy:
    """A stand-in for a learned policy that honours the Policy contract, ``prefix`` included.

    Chunks are the task expert's (``tasks.expert``: absolute joint targets, ``dt`` apart, from the measured
    joints and the privileged joint velocity the evaluator sets in ``joint_velocity``) plus a smooth random
    offset per chunk (``disagreement`` rad at the chunk's start and its end, per joint): consecutive chunks
    disagree as a learned policy's do, which is what chunk switching has to absorb.

    ``rtc``: what it does with a committed prefix of ``d`` rows (None = it takes none):

    * ``"trained"``  -- rows ``0..d-1`` = the prefix; the rest is the chunk it would have produced from the
      observation, shifted to join the prefix's last row and returning to itself over ``join_steps``
      actions along a cosine (no slope change at either end): consistent with the prefix, re-anchored on
      the observation, as training-time RTC aims for (an upper bound; ``rtc_max_delay`` = ``max_delay``);
    * ``"hard"``     -- rows ``0..d-1`` replaced by the prefix, the rest as without one: hard-prefix
      inpainting with no consistency at all (a lower bound for training-free RTC; ``rtc_max_delay`` 0).
    """

    def __init__(
        self,
        horizon: int = 16,
        dt: float = 0.1,
        disagreement: float = 0.01,
        rtc: str | None = None,
        max_delay: int = 8,
        seed: int = 0,
        join_steps: int = 6,
    ) -> None:
        if rtc not in (None, "trained", "hard"):
            raise ValueError(f"rtc must be None, 'trained' or 'hard', got {rtc!r}")
        self.horizon, self.dt, self.disagreement, self.rtc = int(horizon), float(dt), float(disagreement), rtc
        self._info = _info(self.horizon, self.dt, rtc is not None, max_delay if rtc == "trained" else 0)
        self._rng = np.random.default_rng(seed)
        self.join_steps = max(1, int(join_steps))
        self._expert: ReachingExpert | None = None
        self.joint_velocity = np.zeros(7)
        self.prefixes: list[np.ndarray | None] = []

    @property
    def info(self) -> Any:
        return self._info

    def reset(self, scene: Scene, color: str, seed: int) -> None:
        self._expert = ReachingExpert(goal_configuration(scene.block(color), FR3), self.dt, self.horizon, FR3)
        self._rng = np.random.default_rng(seed)

    def warmup(self) -> None:
        return None

    def _offset(self, rows: int, start_at_zero: bool) -> np.ndarray:
        a, b = self._rng.normal(0.0, self.disagreement, (2, 7))
        if start_at_zero:
            a = np.zeros(7)
        s = np.linspace(0.0, 1.0, rows)[:, None] if rows > 1 else np.zeros((rows, 1))
        return a[None, :] + (b - a)[None, :] * s

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
    ) -> np.ndarray:
        if self._expert is None:
            raise RuntimeError("ScriptedPolicy.reset(scene, color, seed) first")
        state = np.asarray(state, dtype=np.float64)
        width = np.full((self.horizon, 1), state[7] if state.size > 7 else 0.08)
        self.prefixes.append(None if prefix is None else np.array(prefix))
        d = 0 if prefix is None or self.rtc is None else min(len(prefix), self.horizon)
        free = self._expert.chunk(state[:7], self.joint_velocity) + self._offset(self.horizon, False)
        if d == 0:
            return np.hstack([free, width])
        assert prefix is not None
        out = np.hstack([free, width])
        out[:d] = prefix[:d]
        if self.rtc == "trained" and d < self.horizon:
            gap = np.asarray(prefix[d - 1, :7], dtype=np.float64) - free[d - 1]
            s = np.arange(1, self.horizon - d + 1) / self.join_steps
            weight = np.where(s < 1.0, 0.5 * (1.0 + np.cos(np.pi * np.minimum(s, 1.0))), 0.0)
            out[d:, :7] = free[d:] + weight[:, None] * gap[None, :]
        return out


# ------------------------------------------------------------------------------------------ evaluator


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation cell: latency profile x chunk-execution strategy (node parameter values)."""

    latency: str = "none"
    strategy: str = "crossfade"  # the node's chunk_execution: auto | rtc | crossfade | ensemble | none
    episodes: int = 50
    seed: int = 0  # latency draws and policy noise; scenes are sample_scene(scene_seed + i)
    scene_seed: int = 20_000
    max_time_s: float = 8.0
    physics_dt: float = 0.005
    settle_s: float = 0.4
    node_params: Mapping[str, Any] = field(default_factory=dict)  # other node parameters (defaults otherwise)
    # the node's delay estimate carries over from one episode to the next, as in a node that keeps running
    # (one controller for its lifetime); False: every episode starts cold, as right after the node starts
    warm_delay: bool = True


@dataclass
class EpisodeResult:
    """Figures of one episode (angles rad, velocities rad/s, accelerations rad/s^2, jerk rad/s^3)."""

    seed: int
    instruction: str
    target: str
    success: bool
    time_to_reach_s: float | None
    final_distance_m: float
    duration_s: float
    chunks: int
    switches: int
    switch_target_dv: list[float]  # policy target: velocity jump at each switch (max over joints)
    within_target_dv: list[float]  # the same between consecutive ticks inside a chunk
    switch_cmd_dv: list[float]  # commanded velocity jump at each switch
    switch_cmd_da: list[float]  # commanded acceleration jump at each switch
    within_cmd_dv: list[float]
    within_cmd_da: list[float]
    jerk_rms: float
    safety_interventions: int
    interventions_by_limit: dict[str, int]  # joint-clips by limit (a tick may clip several joints)
    held_ticks: int
    violations: dict[str, int]
    chunking: dict[str, int]

    @property
    def violation_total(self) -> int:
        return int(sum(self.violations.values()))


def _max_abs(x: np.ndarray) -> float:
    return float(np.max(np.abs(x)))


def run_episode(
    policy: Any,
    scene: Scene,
    color: str,
    instruction: str,
    config: EvalConfig,
    rng: np.random.Generator,
    profile: LatencyProfile | None = None,
    command_hook: Callable[[float, Any], Any] | None = None,
    episode_seed: int = 0,
    delays: list[int] | None = None,
) -> EpisodeResult:
    """One closed-loop episode on the simulated clock (see the module docstring).

    ``command_hook(t, trajectory) -> trajectory`` may alter each look-ahead before the arm receives it
    (tests inject infeasible commands with it). ``delays``: the delay measurements (actions) the node's
    estimator holds when the episode starts; replaced by the window at its end (``EvalConfig.warm_delay``).
    """
    info = policy.info
    profile = profile or parse_latency(config.latency)
    params = defaults(chunk_execution=config.strategy, **dict(config.node_params))
    controller, robot = build_controller(params, info)
    if delays:
        controller.delay.prime(delays)
    plan = execution_plan(params, info)
    if hasattr(policy, "reset"):
        policy.reset(scene, color, episode_seed)
    arm = SimArm(robot)
    names = list(robot.joint_names)
    live = live_cameras(info.cameras)  # the start views are filled from these, as the node does
    rig = make_cameras(live, info.image_size) if live else None
    dt = params.period_s
    substeps = max(1, round(dt / config.physics_dt))
    h = dt / substeps
    ticks = round(config.max_time_s / dt)
    block = scene.block(color)
    use_gripper = len(info.state_names) == robot.dof + 1
    steps = int(getattr(info, "history_steps", 0) or 0)
    start_views = StartViews(info.cameras)
    stateful = steps > 0 or bool(start_views)
    history = HistoryBuffer(steps, len(info.state_names), info.action_dim, info.dt) if stateful else None

    t0 = 1.0
    controller.set_instruction(instruction)
    epoch = controller.epoch
    inflight: tuple[float, Chunk] | None = None
    chunk_id = 0
    positions: list[np.ndarray] = []
    velocities: list[np.ndarray] = []
    targets: list[np.ndarray | None] = []
    executing: list[int | None] = []
    running: list[bool] = []
    distances: list[float] = []
    held = 0
    at_rest_since: float | None = None
    t = t0
    for k in range(ticks):
        t = t0 + k * dt
        if inflight is not None and inflight[0] <= t + 1e-12:
            controller.on_chunk(inflight[1], inflight[0])
            inflight = None
        q, qd, width = arm.state()
        cmd = controller.tick(t, q)
        sent = False
        if cmd.positions is not None:
            traj = cmd.trajectory
            # sent on time, as the node sends: the controller decides at send time (release)
            if traj is not None and controller.release(cmd, t):
                if command_hook is not None:
                    traj = command_hook(t, traj)
                arm.submit_trajectory(names, traj.times, traj.positions, traj.velocities, 0.0, t)
                sent = True
            if cmd.gripper is not None:
                arm.submit_gripper(cmd.gripper)
            positions.append(cmd.positions)
            velocities.append(cmd.velocities)
            sampled = controller.schedule.sample(t, prune=False)
            targets.append(None if sampled is None else sampled.arm)
            executing.append(controller.schedule.executing_chunk_id(t))
            running.append(cmd.state == ControllerState.RUNNING)
            held += cmd.state == ControllerState.HOLDING and cmd.reason != WAITING_FOR_CHUNK
        if history is not None:  # the node's rule (HistoryBuffer.on_command)
            sem = info.action_semantics
            running_now = cmd.state == ControllerState.RUNNING
            history.on_command(
                t,
                running_now,
                sent,
                q,
                width,
                cmd.positions,
                cmd.velocities,
                cmd.gripper,
                sem.arm,
                sem.arm_scale,
            )
        if inflight is None and controller.should_request(t):
            state = np.append(q, width) if use_gripper else q.copy()
            state = state.astype(np.float32)
            images = rig.render(scene, q, width) if rig is not None else {}
            if start_views and history is not None:
                images = start_views.add(images, history.episode)
            prefix = controller.rtc_prefix(t, state, info.action_dim) if plan.rtc else None
            if hasattr(policy, "joint_velocity"):
                policy.joint_velocity = qd.copy()
            chunk_id += 1
            try:
                kwargs: dict[str, Any] = {} if prefix is None else {"prefix": prefix}
                if history is not None:
                    snap = history.snapshot()
                    kwargs["history"] = History(snap.states, snap.actions, snap.valid)
                actions = policy.predict(images, state, instruction, **kwargs)
            except Exception as exc:  # a failing policy is held on, as in the node
                controller.on_inference_error(f"{type(exc).__name__}: {exc}")
            else:
                latency = profile.sample(rng)
                chunk = Chunk(
                    np.asarray(actions, dtype=np.float64),
                    t_obs=t,
                    epoch=epoch,
                    state=state.astype(np.float64),
                    chunk_id=chunk_id,
                    prefix_len=0 if prefix is None else len(prefix),
                )
                inflight = (t + latency, chunk)
        for j in range(substeps):
            arm.step(t + j * h, h)
        q_now, qd_now, _ = arm.state()
        dist = distance_to_block(forward_kinematics(q_now)[:3, 3], block)
        distances.append(dist)
        if dist < SUCCESS_RADIUS and float(np.max(np.abs(qd_now))) < SETTLE_SPEED:
            at_rest_since = t if at_rest_since is None else at_rest_since
            if t - at_rest_since >= config.settle_s:
                break
        else:
            at_rest_since = None

    # -- figures --------------------------------------------------------------------------------------
    d = np.asarray(distances)
    inside = d < SUCCESS_RADIUS
    reach = None
    if inside[-1]:
        outside = np.nonzero(~inside)[0]
        first = 0 if len(outside) == 0 else int(outside[-1]) + 1
        reach = first * dt
    u = np.asarray(velocities).reshape(-1, robot.dof)
    du = np.diff(u, axis=0)  # commanded velocity change per tick
    acc = du / dt
    da = np.diff(acc, axis=0)
    ex = executing
    switch_ticks = [
        i for i in range(1, len(ex)) if ex[i] is not None and ex[i - 1] is not None and ex[i] != ex[i - 1]
    ]
    near_switch = set()
    for i in switch_ticks:
        near_switch.update(range(i - 1, i + 3))
    tgt_dv: dict[int, float] = {}
    for i in range(2, len(targets)):
        a, b, c = targets[i - 2], targets[i - 1], targets[i]
        if a is not None and b is not None and c is not None:
            tgt_dv[i] = _max_abs((c - b) - (b - a)) / dt

    def window(i: int, series: dict[int, float] | np.ndarray, offset: int) -> float | None:
        values = []
        for j in (i, i + 1):
            if isinstance(series, dict):
                if j in series:
                    values.append(series[j])
            elif 0 <= j - offset < len(series):
                values.append(_max_abs(series[j - offset]))
        return max(values) if values else None

    def collect(series: dict[int, float] | np.ndarray, offset: int) -> tuple[list[float], list[float]]:
        at_switch = [v for v in (window(i, series, offset) for i in switch_ticks) if v is not None]
        if isinstance(series, dict):
            within = [v for i, v in series.items() if i not in near_switch and running[i]]
        else:
            within = [
                _max_abs(series[j])
                for j in range(len(series))
                if j + offset not in near_switch and running[min(j + offset, len(running) - 1)]
            ]
        return at_switch, within

    s_tdv, w_tdv = collect(tgt_dv, 0)
    s_dv, w_dv = collect(du, 1)
    s_da, w_da = collect(da, 2)
    jerk = da / dt  # jerk[j] belongs to tick j + 2
    jerk = jerk[np.asarray(running[2 : 2 + len(jerk)], dtype=bool)]
    jerk_rms = float(np.sqrt(np.mean(jerk**2))) if jerk.size else 0.0
    status = controller.status()
    if delays is not None:
        delays[:] = controller.delay.recent()
    q_end = arm.state()[0]
    return EpisodeResult(
        seed=episode_seed,
        instruction=instruction,
        target=color,
        success=bool(distance_to_block(forward_kinematics(q_end)[:3, 3], block) < SUCCESS_RADIUS),
        time_to_reach_s=reach,
        final_distance_m=float(d[-1]),
        duration_s=len(distances) * dt,
        chunks=status.chunks_accepted,
        switches=len(switch_ticks),
        switch_target_dv=s_tdv,
        within_target_dv=w_tdv,
        switch_cmd_dv=s_dv,
        switch_cmd_da=s_da,
        within_cmd_dv=w_dv,
        within_cmd_da=w_da,
        jerk_rms=jerk_rms,
        safety_interventions=status.safety_interventions,
        interventions_by_limit={k: int(sum(v.values())) for k, v in status.interventions_by_limit.items()},
        held_ticks=int(held),
        violations={k: int(v) for k, v in arm.violation_counts().items() if v},
        chunking=controller.chunking_status(),
    )


@dataclass
class CellResult:
    """Pooled figures of one (policy, strategy, latency) cell."""

    label: str
    strategy: str
    latency: str
    episodes: int
    success_rate: float
    time_to_reach_s: float | None  # median over successful episodes
    final_distance_m: float  # median
    switches: int
    switch_dv_p50: float  # policy target velocity jump at switches (rad/s)
    switch_dv_p99: float
    within_dv_p99: float
    switch_cmd_da_p99: float  # commanded acceleration jump at switches (rad/s^2)
    within_cmd_da_p99: float
    jerk_rms: float  # mean of the episodes' RMS (rad/s^3)
    safety_interventions: int
    held_ticks: int
    violations: int
    interventions_by_limit: dict[str, int]
    rtc_on_time: int
    rtc_late: int
    rtc_anchored: int
    delay_over_trained_max: int
    wall_s: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def evaluate(policy: Any, config: EvalConfig, label: str = "", progress: bool = False) -> CellResult:
    """``config.episodes`` episodes on scenes ``sample_scene(scene_seed + i)``, target colours in turn."""
    started = time.process_time()
    profile = parse_latency(config.latency)
    rng = np.random.default_rng(config.seed)
    words = np.random.default_rng(config.seed + 1)
    results: list[EpisodeResult] = []
    delays: list[int] | None = [] if config.warm_delay else None
    for i in range(config.episodes):
        scene = sample_scene(config.scene_seed + i)
        color = scene.colors[i % len(scene.colors)]
        text = make_instruction(color, words)
        results.append(
            run_episode(
                policy,
                scene,
                color,
                text,
                config,
                rng,
                profile,
                episode_seed=config.seed * 100_003 + i,
                delays=delays,
            )
        )
        if progress:
            print(".", end="", flush=True, file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    keys = ("switch_target_dv", "within_target_dv", "switch_cmd_da", "within_cmd_da")
    pool = {k: [v for r in results for v in getattr(r, k)] for k in keys}
    reach = [r.time_to_reach_s for r in results if r.success and r.time_to_reach_s is not None]
    return CellResult(
        label=label or config.strategy,
        strategy=config.strategy,
        latency=config.latency,
        episodes=len(results),
        success_rate=float(np.mean([r.success for r in results])),
        time_to_reach_s=float(np.median(reach)) if reach else None,
        final_distance_m=float(np.median([r.final_distance_m for r in results])),
        switches=int(sum(r.switches for r in results)),
        switch_dv_p50=_pct(pool["switch_target_dv"], 50),
        switch_dv_p99=_pct(pool["switch_target_dv"], 99),
        within_dv_p99=_pct(pool["within_target_dv"], 99),
        switch_cmd_da_p99=_pct(pool["switch_cmd_da"], 99),
        within_cmd_da_p99=_pct(pool["within_cmd_da"], 99),
        jerk_rms=float(np.mean([r.jerk_rms for r in results])),
        safety_interventions=int(sum(r.safety_interventions for r in results)),
        held_ticks=int(sum(r.held_ticks for r in results)),
        violations=int(sum(r.violation_total for r in results)),
        interventions_by_limit={
            k: sum(r.interventions_by_limit.get(k, 0) for r in results)
            for k in sorted({k for r in results for k in r.interventions_by_limit})
        },
        rtc_on_time=int(sum(r.chunking.get("rtc_on_time", 0) for r in results)),
        rtc_late=int(sum(r.chunking.get("rtc_late", 0) for r in results)),
        rtc_anchored=int(sum(r.chunking.get("rtc_anchored", 0) for r in results)),
        delay_over_trained_max=int(sum(r.chunking.get("delay_over_trained_max", 0) for r in results)),
        wall_s=time.process_time() - started,
        rows=[
            {
                "seed": r.seed,
                "instruction": r.instruction,
                "target": r.target,
                "success": r.success,
                "time_to_reach_s": r.time_to_reach_s,
                "final_distance_m": r.final_distance_m,
                "switches": r.switches,
                "violations": r.violations,
            }
            for r in results
        ],
    )


# ------------------------------------------------------------------------------------------------ table


def run_table(
    rows: Mapping[str, tuple[Any, str]],
    latencies: Sequence[str] = DEFAULT_LATENCIES,
    episodes: int = 50,
    seed: int = 0,
    progress: bool = True,
    **config: Any,
) -> list[CellResult]:
    """Every row (label -> (policy, chunk_execution)) at every latency; the same scenes and seeds per cell."""
    cells = []
    for latency in latencies:
        for label, (policy, strategy) in rows.items():
            cfg = EvalConfig(latency=latency, strategy=strategy, episodes=episodes, seed=seed, **config)
            if progress:
                print(f"  {label:>20} @ {latency:<9}", end=" ", flush=True, file=sys.stderr)
            cell = evaluate(policy, cfg, label=label, progress=progress)
            cells.append(cell)
    return cells


def scripted_rows(disagreement: float = 0.01, max_delay: int = 8) -> dict[str, tuple[Any, str]]:
    """The table's rows with the scripted stand-in (no model needed)."""
    base = ScriptedPolicy(disagreement=disagreement)
    return {
        "none": (base, "none"),
        "crossfade": (base, "crossfade"),
        "ensemble": (base, "ensemble"),
        "rtc (training-free)": (ScriptedPolicy(disagreement=disagreement, rtc="hard"), "rtc"),
        "rtc (trained)": (
            ScriptedPolicy(disagreement=disagreement, rtc="trained", max_delay=max_delay),
            "rtc",
        ),
    }


def model_rows(model: Path, trained: Path | None = None) -> dict[str, tuple[Any, str]]:
    """The table's rows with exported models: ``model`` for none / crossfade / ensemble, and for RTC every
    export that takes a prefix, in each mode it supports: training-free (hard prefix) always, trained
    when it was trained for RTC (``rtc_max_delay`` > 0). One RTC-trained export gives both RTC rows."""
    from apt_policy.runtime.load import load_policy

    base = load_policy(model)
    rows: dict[str, tuple[Any, str]] = {s: (base, s) for s in ("none", "crossfade", "ensemble")}
    for path in (model, trained):
        if path is None:
            continue
        policy = base if path == model else load_policy(path)
        if not policy.info.rtc_inputs:
            continue
        rows["rtc (training-free)"] = (load_policy(path, rtc_mode="training_free"), "rtc")
        if policy.info.rtc_max_delay > 0:
            rows["rtc (trained)"] = (load_policy(path, rtc_mode="trained"), "rtc")
    return rows


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(cells: Sequence[CellResult]) -> str:
    """Markdown table of the cells."""
    lines = [
        "| strategy | latency | episodes | success | time to reach s | final dist mm | switches"
        " | switch dv p50 / p99 rad/s | within dv p99 | cmd da p99 at switch / within rad/s^2"
        " | jerk RMS rad/s^3 | interventions | held ticks | violations | RTC on time / late / anchored"
        " | over trained max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c.label} | {c.latency} | {c.episodes} | {c.success_rate * 100:.0f} % |"
            f" {_fmt(c.time_to_reach_s)} | {c.final_distance_m * 1e3:.1f} | {c.switches} |"
            f" {_fmt(c.switch_dv_p50, '.3f')} / {_fmt(c.switch_dv_p99, '.3f')} |"
            f" {_fmt(c.within_dv_p99, '.3f')} |"
            f" {_fmt(c.switch_cmd_da_p99)} / {_fmt(c.within_cmd_da_p99)} | {c.jerk_rms:.1f} |"
            f" {c.safety_interventions} | {c.held_ticks} | {c.violations} |"
            f" {c.rtc_on_time} / {c.rtc_late} / {c.rtc_anchored} |"
            f" {c.delay_over_trained_max} |"
        )
    return "\n".join(lines)


def plot_table(cells: Sequence[CellResult], path: Path) -> Path:
    """Success and p99 switch discontinuity per strategy against latency (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = list(dict.fromkeys(c.latency for c in cells))
    labels = list(dict.fromkeys(c.label for c in cells))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    x = np.arange(len(latencies))
    for label in labels:
        row = {c.latency: c for c in cells if c.label == label}
        get = lambda key, row=row: [getattr(row[lat], key) if lat in row else np.nan for lat in latencies]  # noqa: E731
        axes[0].plot(x, [v * 100 for v in get("success_rate")], marker="o", label=label)
        axes[1].plot(x, get("switch_dv_p99"), marker="o", label=label)
        axes[2].plot(x, get("jerk_rms"), marker="o", label=label)
    for ax, title in zip(
        axes,
        ("success (%)", "switch discontinuity p99 (target dv, rad/s, log)", "command jerk RMS (rad/s^3)"),
        strict=True,
    ):
        ax.set_xticks(x, latencies)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apt_policy.sim.closed_loop",
        description="Closed-loop evaluation on a simulated clock through the node's control core.",
    )
    p.add_argument(
        "--latency", default="none", help="none | fixed:<ms> | orin | thor | rtx4090 (default none)"
    )
    p.add_argument("--strategy", default="crossfade", help="auto | rtc | crossfade | ensemble | none")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time", type=float, default=8.0, help="simulated seconds per episode (8)")
    p.add_argument(
        "--settle",
        type=float,
        default=0.4,
        help="s at rest within the success radius that end an episode (0.4); inf: always run --max-time, "
        "so a drift during a long hold counts (the demo holds up to 12 s)",
    )
    p.add_argument(
        "--cold-delay",
        action="store_true",
        help="every episode starts with no delay measurement (default: carried over, as a running node)",
    )
    p.add_argument(
        "--params",
        type=Path,
        default=None,
        metavar="YAML",
        help="the node's parameters from a ROS 2 parameter file (e.g. config/sim.yaml, as the demo runs); "
        "chunk_execution and simulated_latency come from --strategy / --latency",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a node parameter for every cell (repeatable), e.g. rtc_delay_quantile=0.99",
    )
    p.add_argument(
        "--model", type=Path, default=None, help="exported policy (default: the scripted stand-in)"
    )
    p.add_argument("--model-trained", type=Path, default=None, help="--table: an RTC-trained export")
    p.add_argument(
        "--scripted-rtc",
        choices=("trained", "hard"),
        default="trained",
        help="scripted stand-in with --strategy rtc: trained-like continuation or hard prefix",
    )
    p.add_argument("--disagreement", type=float, default=0.01, help="scripted: chunk disagreement (rad)")
    p.add_argument("--table", action="store_true", help="strategy x latency table")
    p.add_argument("--latencies", nargs="+", default=list(DEFAULT_LATENCIES))
    p.add_argument("--rows", nargs="+", default=None, help="--table: only these strategy rows (labels)")
    p.add_argument("--json", type=Path, default=None, help="write the cells (and episode rows) here")
    p.add_argument("--plot", type=Path, default=None, help="--table: write a PNG here")
    return p


def node_params_from_yaml(path: Path) -> dict[str, Any]:
    """The node parameters of a ROS 2 parameter file (its first ``ros__parameters`` block) that the
    evaluator's controller uses: every node parameter but the model, backend and the two the cell sets."""
    from apt_policy.ros.params import NODE_SPECS, parameters_from_yaml

    block = parameters_from_yaml(path)
    if not block:
        raise SystemExit(f"{path}: no ros__parameters block")
    skip = {"model", "backend", "chunk_execution", "simulated_latency"}
    names = {spec.name for spec in NODE_SPECS} - skip
    return {k: v for k, v in block.items() if k in names}


def _parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> (name, value); the value read as JSON (numbers, true/false) or else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--param expects NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    common: dict[str, Any] = {
        "max_time_s": args.max_time,
        "settle_s": args.settle,
        "warm_delay": not args.cold_delay,
        "node_params": {
            **(node_params_from_yaml(args.params) if args.params is not None else {}),
            **dict(_parse_param(text) for text in args.param),
        },
    }
    if args.table:
        rows = (
            model_rows(args.model, args.model_trained)
            if args.model is not None
            else scripted_rows(args.disagreement)
        )
        if args.rows:
            rows = {label: row for label, row in rows.items() if label in args.rows}
        cells = run_table(rows, args.latencies, args.episodes, args.seed, **common)
    else:
        if args.model is not None:
            from apt_policy.runtime.load import load_policy

            policy: Any = load_policy(args.model)
        else:
            rtc = args.scripted_rtc if args.strategy in ("rtc", "auto") else None
            policy = ScriptedPolicy(disagreement=args.disagreement, rtc=rtc)
        cfg = EvalConfig(
            latency=args.latency,
            strategy=args.strategy,
            episodes=args.episodes,
            seed=args.seed,
            **common,
        )
        cells = [evaluate(policy, cfg, progress=True)]
    print(format_table(cells))
    print(f"({time.monotonic() - started:.1f} s wall)", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1, default=str) + "\n")
    if args.plot is not None:
        plot_table(cells, args.plot)
    bad = sum(c.violations for c in cells)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
