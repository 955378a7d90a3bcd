"""Benchmark of the control core: cost of a tick and a look-ahead, and real-clock loop timing. Prints figures.

    python -m apt_policy.bench.control [--robot fr3] [--ticks 5000] [--rate 100] [--loop-seconds 2]

Timing goals are judged here (figures measured in one run), never in tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from apt_policy.control.blending import BlendConfig
from apt_policy.control.controller import Controller, ControllerConfig
from apt_policy.control.limits import JointLimits
from apt_policy.control.rate_loop import FixedRateLoop, TickInfo
from apt_policy.control.schedule import Chunk
from apt_policy.control.semantics import ActionLayout
from apt_policy.control.stats import RollingStats
from apt_policy.robots.franka import get_profile


def _controller(
    robot: str, rate: float, blend: str, lookahead: int, interpolation: str, output: str = "trajectory"
) -> Controller:
    profile = get_profile(robot)
    layout = ActionLayout(dof=profile.dof, gripper="absolute")
    config = ControllerConfig(
        control_dt=1.0 / rate,
        chunk_dt=0.1,
        lookahead_points=lookahead,
        blend=BlendConfig(mode=blend),
        interpolation=interpolation,
        output=output,
    )
    return Controller(JointLimits.from_profile(profile), layout, config)


def bench_tick(
    robot: str, ticks: int, rate: float, blend: str, lookahead: int, interpolation: str = "cubic"
) -> dict[str, float]:
    """Simulated clock, perfect tracking, smooth chunks: wall cost of tick and look-ahead, interventions.

    Two controllers in lockstep on the same chunks: one for a position output (the tick alone), one for a
    JTC (the tick returns its look-ahead); the look-ahead's cost is the difference."""
    ctrl = _controller(robot, rate, blend, lookahead, interpolation)
    bare = _controller(robot, rate, blend, lookahead, interpolation, output="position")
    q = get_profile(robot).ready_pose.copy()
    dt = 1.0 / rate
    t = 0.0
    for c in (ctrl, bare):
        c.tick(t, q, state_stamp=t)
        c.set_instruction("bench")
    rng = np.random.default_rng(0)
    home = q.copy()
    phase = rng.uniform(0, 2 * np.pi, q.size)

    def reference(times: np.ndarray) -> np.ndarray:
        """A smooth motion a policy might produce: 0.2 rad sines, 0.5 rad/s peak, plus 1 mrad noise."""
        arm = home + 0.2 * (np.sin(2.5 * times[:, None] + phase) - np.sin(phase))
        return arm + rng.normal(0, 1e-3, arm.shape)

    tick_cost, plan_cost = RollingStats(ticks), RollingStats(ticks)
    plan_len = 0
    for k in range(ticks):
        t = (k + 1) * dt
        if k % int(0.5 * rate) == 0:  # a 16-step chunk every 0.5 s, observed 50 ms ago
            arm = reference(t - 0.05 + 0.1 * np.arange(16))
            for c in (ctrl, bare):
                c.on_chunk(Chunk(np.c_[arm, np.full(16, 0.04)], t - 0.05, c.epoch), t)
        t0 = time.perf_counter()
        bare.tick(t, q, state_stamp=t)
        t1 = time.perf_counter()
        cmd = ctrl.tick(t, q, state_stamp=t)
        t2 = time.perf_counter()
        tick_cost.add(t1 - t0)
        plan_cost.add(max(0.0, (t2 - t1) - (t1 - t0)))
        plan = cmd.trajectory
        plan_len = max(plan_len, 0 if plan is None else len(plan))
        if cmd.positions is not None:
            q = cmd.positions
    status = ctrl.status()
    return {
        "tick_p50_us": tick_cost.p50 * 1e6,
        "tick_p99_us": tick_cost.p99 * 1e6,
        "lookahead_p50_us": plan_cost.p50 * 1e6,
        "lookahead_p99_us": plan_cost.p99 * 1e6,
        "lookahead_max_points": float(plan_len),
        "share_of_period_p99": (tick_cost.p99 + plan_cost.p99) * rate,
        "ticks_with_intervention": float(status.safety_interventions),
        "chunks": float(status.chunks_accepted),
    }


def bench_loop(rate: float, seconds: float) -> dict[str, float]:
    """Real monotonic clock: lateness of each tick and missed ticks of an empty callback."""
    count = [0]

    def callback(info: TickInfo) -> None:
        count[0] += 1

    loop = FixedRateLoop(1.0 / rate, callback)
    loop.start()
    time.sleep(seconds)
    loop.stop()
    return {
        "ticks": float(loop.ticks),
        "expected_ticks": rate * seconds,
        "achieved_rate_hz": loop.rate.rate(),
        "missed_ticks": float(loop.missed_ticks),
        "lateness_p50_us": loop.jitter.p50 * 1e6,
        "lateness_p99_us": loop.jitter.p99 * 1e6,
        "lateness_max_us": loop.jitter.max * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robot", default="fr3", choices=["fr3", "panda"])
    parser.add_argument("--ticks", type=int, default=5000, help="simulated ticks per configuration")
    parser.add_argument("--rate", type=float, default=100.0, help="control rate, Hz")
    parser.add_argument("--lookahead", type=int, default=10, help="look-ahead points")
    parser.add_argument("--interpolation", default="cubic", choices=["cubic", "linear", "hold"])
    parser.add_argument("--loop-seconds", type=float, default=2.0, help="real-clock loop run, s (0: skip)")
    args = parser.parse_args(argv)
    for blend in ("none", "crossfade", "ensemble"):
        res = bench_tick(args.robot, args.ticks, args.rate, blend, args.lookahead, args.interpolation)
        label = f"{args.robot}, {args.rate:.0f} Hz, {args.interpolation}, blend={blend}"
        print(f"tick [{label}]: " + _fmt(res))
    if args.loop_seconds > 0:
        print(
            f"loop [{args.rate:.0f} Hz, {args.loop_seconds:.1f} s, real clock]: "
            + _fmt(bench_loop(args.rate, args.loop_seconds))
        )


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in values.items())


if __name__ == "__main__":
    main()
