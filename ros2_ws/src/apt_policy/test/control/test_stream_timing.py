"""The command stream under timing faults, on a simulated clock: every trajectory the arm's controller accepts
is feasible from its desired state when it arrives.

The stream runs as in the node (``FixedRateLoop`` with ``publish_lead``, ``Controller.tick`` for the deadline,
``Controller.release`` at send time) and its trajectories reach ``sim.arm.SimArm``, which enforces the
joint_trajectory_controller contract (a new trajectory starts from the desired state at arrival; a first
segment or jump faster than the FR3 velocity limit is ``too_fast``). Faults: the stream thread stalled before
it computes (missed ticks), between computing and sending (a late publish), and late delivery by the
transport, 20-200 ms at random times while the arm moves near the velocity limit.
"""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.control.blending import BlendConfig
from apt_policy.control.controller import Command, Controller, ControllerConfig, ControllerState
from apt_policy.control.limits import JointLimits
from apt_policy.control.rate_loop import FixedRateLoop, TickInfo
from apt_policy.control.schedule import Chunk
from apt_policy.control.semantics import ActionLayout
from apt_policy.robots.franka import FR3
from apt_policy.sim.arm import SimArm

DT = 0.01
PHYSICS = 0.001
Q0 = FR3.ready_pose.copy()


class World:
    """Simulated clock, the simulated arm behind its JTC, and the messages in flight to it."""

    def __init__(self, stamped: bool, stalls: list[tuple[float, float]], transport: dict[int, float]) -> None:
        self.t = 0.0
        self.violations: list[str] = []
        self.arm = SimArm(FR3, Q0, on_violation=lambda kind, msg: self.violations.append(f"{kind}: {msg}"))
        self.stamped = stamped
        self.stalls = sorted(stalls)  # (start, duration): the stream thread does not run meanwhile
        self.transport = transport  # message number -> extra delivery delay (s)
        self.in_flight: list[tuple[float, int, Command]] = []
        self.sent = 0
        self.delivered = 0

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(self.t + seconds)

    def stall_point(self) -> None:
        """The stream thread may be descheduled here: a stall that began meanwhile holds it until its end."""
        while self.stalls and self.stalls[0][0] <= self.t:
            start, duration = self.stalls.pop(0)
            self.advance(max(self.t, start + duration))

    def advance(self, until: float) -> None:
        while self.t < until - 1e-12:
            self._deliver()
            step = min(PHYSICS, until - self.t)
            self.arm.step(self.t, step)
            self.t += step
        self.t = max(self.t, until)
        self._deliver()

    def send(self, cmd: Command) -> None:
        self.sent += 1
        arrival = self.t + 0.0003 + self.transport.get(self.sent, 0.0)
        self.in_flight.append((arrival, self.sent, cmd))

    def _deliver(self) -> None:
        """Reliable, in order, keep-last-1: everything due by now; a message that overtook nothing."""
        due = [m for m in self.in_flight if m[0] <= self.t]
        if not due:
            return
        # in order: a message cannot arrive before one sent earlier
        last = max(due, key=lambda m: m[1])
        pending = [m for m in self.in_flight if m[1] < last[1] and m[0] > self.t]
        if pending:
            return
        self.in_flight = [m for m in self.in_flight if m[1] > last[1]]
        arrival, _, cmd = last
        traj = cmd.trajectory
        assert traj is not None
        stamp = cmd.stamp if self.stamped else 0.0
        self.arm.submit_trajectory(
            FR3.joint_names, traj.times, traj.positions, traj.velocities, stamp or 0.0, max(arrival, 0.0)
        )
        self.delivered += 1


def sweep_chunk(t_obs: float, epoch: int, horizon: int = 200, phase: float = 0.0) -> Chunk:
    """Targets sweeping joints 1-4 at up to ~1.5 rad/s (the filter caps them at its v_max, 1.31 rad/s)."""
    k = np.arange(horizon)[:, None] * 0.1
    arm = Q0 + 0.7 * np.sin(2.1 * k + phase) * np.array([1, 0.6, 1, 0.8, 0, 0, 0])
    return Chunk(np.c_[arm, np.full(horizon, 0.04)], t_obs, epoch)


def run_stream(
    stamped: bool,
    stalls,
    transport=None,
    seconds: float = 4.0,
    commit: int = 0,
    turns: bool = False,
    late_writes=None,
):
    """``turns``: every 0.3 s a chunk that reverses the sweep (each plan turns at full acceleration);
    ``late_writes``: message number -> stall (s) of the stream thread after release() said yes, before the
    write (the node cannot see it)."""
    late_writes = late_writes or {}
    limits = JointLimits.from_profile(FR3)
    ctrl = Controller(
        limits,
        ActionLayout(dof=7, arm="absolute", gripper="absolute"),
        ControllerConfig(
            control_dt=DT,
            lookahead_points=5,
            stamped=stamped,
            commit_points=commit,
            blend=BlendConfig(mode="none"),
        ),
    )
    world = World(stamped, stalls, transport or {})

    def tick(info: TickInfo):
        world.stall_point()
        now = world.clock()
        t = max(now, info.deadline)  # as the node: the command is for its send time
        q, _, _ = world.arm.state()
        cmd = ctrl.tick(t, q, state_stamp=now)
        if ctrl.state == ControllerState.HOLDING and not ctrl.status().chunks_accepted:
            ctrl.on_chunk(sweep_chunk(t, ctrl.epoch), t)
        elif turns and info.index % 30 == 0:
            ctrl.on_chunk(sweep_chunk(t, ctrl.epoch, phase=np.pi * (info.index // 30 % 2)), t)
        world.stall_point()  # a late publish: descheduled between computing and sending

        def send() -> None:
            world.stall_point()
            if cmd.positions is not None and ctrl.release(cmd, world.clock()):
                world.advance(world.t + late_writes.get(world.sent + 1, 0.0))
                world.send(cmd)

        return send

    loop = FixedRateLoop(DT, tick, clock=world.clock, sleep=world.sleep, lead=0.8 * DT)
    ctrl.tick(0.0, Q0, state_stamp=0.0)
    ctrl.set_instruction("sweep")
    loop.run(max_ticks=int(seconds / DT))
    return ctrl, world, loop


def random_stalls(seed: int, count: int = 18, seconds: float = 4.0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0.5, seconds - 0.5, count))
    return [(float(s), float(rng.choice([0.02, 0.035, 0.05, 0.1, 0.2]))) for s in starts]


@pytest.mark.parametrize("stamped", [False, True], ids=["stamp0", "stamped"])
@pytest.mark.parametrize("seed", [0, 1])
def test_stalls_and_late_publishes_never_reach_the_arm_as_too_fast(stamped: bool, seed: int) -> None:
    ctrl, world, loop = run_stream(stamped, random_stalls(seed))
    status = ctrl.status()
    assert loop.missed_ticks > 15  # the stalls really cost ticks ...
    assert world.delivered > 200 and status.state == ControllerState.RUNNING  # ... and it kept streaming
    moved = np.abs(world.arm.q - Q0).max()
    assert moved > 0.2
    assert world.violations == []
    assert sum(world.arm.violations.values()) == 0


@pytest.mark.parametrize("stall", [0.02, 0.05, 0.1, 0.2])
def test_a_publish_later_than_a_period_is_dropped_and_the_next_plans_from_the_arm(stall: float) -> None:
    # every 0.5 s, a stall that starts 3 ms before a deadline: the command computed 8 ms before it is late
    stalls = [(0.4 * k + 0.007 - 0.003, stall) for k in range(2, 10)]
    ctrl, world, _ = run_stream(False, stalls)
    status = ctrl.status()
    assert status.commands_dropped >= 8 and "late at send time" in status.last_drop
    assert world.violations == []


@pytest.mark.parametrize("delay", [0.02, 0.04])
def test_transport_delays_within_the_documented_bound_stay_feasible(delay: float) -> None:
    """Delivery the node cannot see (in transport, or the arm's controller busy): tolerated up to the bound
    docs/CONTROL.md derives (~47 ms at the FR3 defaults), for stamp 0 and stamped trajectories."""
    transport = {n: delay for n in range(60, 400, 37)}
    for stamped in (False, True):
        _, world, _ = run_stream(stamped, [], transport)
        assert world.violations == [], (stamped, world.violations[:3])
        assert world.delivered > 200


def test_stamped_committed_points_absorb_a_write_stalled_after_release() -> None:
    """Stamped, plans turning at full acceleration every 0.3 s, the stream thread stalled for 40 ms between
    release() and the write (a stall the node cannot see): beyond the ~25 ms bound without committed
    points, inside it with two (20 ms + ~25 ms)."""
    late = {n: 0.04 for n in range(40, 360)}  # every message from the 40th on
    _, world, _ = run_stream(True, [], commit=0, turns=True, late_writes=late)
    assert len(world.violations) > 10, "the scenario must exceed the bound without them"
    ctrl, world, _ = run_stream(True, [], commit=2, turns=True, late_writes=late)
    assert world.violations == [], world.violations[:3]
    assert world.delivered > 200 and ctrl.status().chunks_accepted >= 4  # it turned, again and again


def test_release_checks_the_arrival_just_before_a_stamped_plans_first_point() -> None:
    """Sent 8.5 ms late (inside the one-period limit), a stamped plan may land anywhere in [send, send+2ms],
    which contains the instant its first point falls due: its first segment is steepest one JTC cycle
    before that point (the JTC has one cycle left to cover the step), so that arrival is checked as well as
    the window's ends."""
    from apt_policy.control.plan import JTC_CYCLE

    ctrl, _, _ = run_stream(True, [], seconds=0.5)
    released = ctrl._released
    assert released is not None and released.plan is not None
    plan = released.plan
    first_due = plan.start + float(plan.times[1])
    late = first_due - 0.0015  # sent 1.5 ms before the first point is due
    arrivals = ctrl._arrivals(plan, late)
    assert arrivals[:2] == (late, late + ctrl.config.arrival_allowance)
    assert arrivals[2] == pytest.approx(first_due - JTC_CYCLE)
    assert len(ctrl._arrivals(plan, first_due + 0.001)) == 2  # the point is already due: the ends suffice


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stamped_sends_late_inside_the_send_limit_never_reach_the_arm_as_too_fast(seed: int) -> None:
    """Stamped plans turning at full acceleration, the stream thread stalled 7.5-9.7 ms at random ticks
    (inside the one-period send limit), so some land just before their first point falls due: no command
    the arm receives is infeasible. (A regression guard: this scenario did not reproduce a violation on the
    code before the arrival check just before the first point was added; that check is tested above.)"""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.uniform(0.5, 3.5, 60))
    # a stall that begins at the tick's send point and ends 7.5-9.7 ms after the deadline
    stalls = [(float(s), float(rng.uniform(0.0075, 0.0097))) for s in starts]
    ctrl, world, _ = run_stream(True, stalls, turns=True)
    assert world.delivered > 150 and ctrl.status().chunks_accepted >= 4
    assert world.violations == [], world.violations[:3]
