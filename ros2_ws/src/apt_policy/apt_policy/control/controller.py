"""The per-tick controller: schedule + semantics + watchdog + safety filter behind one state machine.

States match ``apt_msgs/PolicyStatus``:

* IDLE    -- no instruction; the command stays at rest where it is.
* RUNNING -- executing chunks for the current instruction.
* HOLDING -- instruction set but an input is stale, inference failed or was too slow, or the buffer is empty
             (or the first chunk has not arrived yet); back to RUNNING by itself when the cause clears.
* PAUSED  -- paused by the operator until :meth:`Controller.resume`.
* FAULT   -- until :meth:`Controller.reset` (start pose outside the limits, tracking error too large, or
             :meth:`Controller.fault` from the node, e.g. a robot reflex). No command is output (the arm may
             not be where the command is); the last look-ahead sent ends at rest. The reset needs a fresh
             joint state at rest inside the safe range.

In IDLE, HOLDING and PAUSED the command brakes at the acceleration limit from the last safe command and then
stays there: never extrapolated, never a jump to the measured state. When the joint state or the command
subscriber is lost (the arm controller may be restarting), nothing is output and the plan is dropped; the
stream re-synchronises to the measured state once a fresh state shows the arm at rest and the last
trajectory sent has ended. Re-synchronisations: the first tick, after such a loss, after :meth:`reset`.

Every tick plans from where the joint_trajectory_controller will be when its command arrives (the last
released trajectory sampled at that time, :mod:`.plan`), and :meth:`Controller.release` decides at send time
whether the command may still go out (late commands and commands infeasible at their arrival are dropped).

Thread-safety: every public method takes one lock, so the stream thread (``tick``), the inference worker
(``on_chunk``) and service callbacks (``set_instruction`` ...) may call concurrently.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from apt_policy.control.blending import BlendConfig
from apt_policy.control.chunking import ChunkingConfig, DelayEstimator
from apt_policy.control.limits import JointLimits
from apt_policy.control.lookahead import Target, Trajectory, plan_lookahead
from apt_policy.control.plan import JTC_CYCLE, ExecutedPlan, arrival_problem
from apt_policy.control.safety import CommandState, Interventions, SafetyConfig, SafetyFilter
from apt_policy.control.schedule import Chunk, ChunkDecision, ChunkSchedule
from apt_policy.control.semantics import ActionLayout
from apt_policy.control.watchdog import WatchdogConfig, stale_input_reason, state_problem

if TYPE_CHECKING:
    from apt_policy.control.inference_worker import ChunkResult

OUTPUTS = ("trajectory", "position", "none")

WAITING_FOR_CHUNK = "waiting for the first chunk"
WATCHDOG = "watchdog"  # name under which watchdog holds are counted in interventions_by_limit


class ControllerState(IntEnum):
    """Same numbers as the apt_msgs/PolicyStatus constants."""

    IDLE = 0
    RUNNING = 1
    HOLDING = 2
    PAUSED = 3
    FAULT = 4


@dataclass(frozen=True)
class ControllerConfig:
    """Parameters of :class:`Controller` (seconds, rad).

    control_dt          command period of the stream                                   default 0.01 (100 Hz)
    chunk_dt            step between a chunk's actions (the bundle's control_dt)       default 0.1
    request_when_left   request the next chunk when this many actions are left         default 5
    action_lead         the command of a tick targets the action at t_now + lead       default 0.0
    interpolation       target between a chunk's actions: cubic | linear | hold       default "cubic"
    max_tracking_error  |measured - command| above this on any joint -> FAULT (inf: off) default 0.2
                        (keep it above v_max x the arm's tracking lag and below max_deviation, so that an
                        arm that does not follow faults before the target clamp would park the command)
    lookahead_points    planned points per look-ahead trajectory (before braking)      default 10
    chunking            real-time chunking (committed prefixes) and the delay estimate  (off)
    output              what the commands drive: trajectory (a JTC: every tick returns its look-ahead),
                        position (a forward position controller), none (dry run)         default "trajectory"
    stamped             trajectories carry the tick's time as their start (header.stamp) default False
    stamped_min_span    s, a stamped trajectory lasts at least this long (rests at its last point), so a
                        late message still ends in the future                           default 0.25
    commit_points       stamped: the first points of each look-ahead repeat the executing one (a message
                        that much late changes nothing; reactions come that much later) default 0
    max_send_delay      s, a command later than this at send time is dropped (None: one control_dt)
    arrival_allowance   s, feasibility at arrival is checked from the send time to this much later (the
                        transport's share; a constant transport delay cancels out)      default 0.002
    resync_settle_time  s, a re-synchronisation waits for the measured state to stay within
    resync_tolerance    rad of one position for this long (the arm at rest)              0.1 s, 0.005 rad
    """

    control_dt: float = 0.01
    chunk_dt: float = 0.1
    request_when_left: int = 5
    action_lead: float = 0.0
    interpolation: str = "cubic"
    max_tracking_error: float = 0.2
    lookahead_points: int = 10
    output: str = "trajectory"
    stamped: bool = False
    stamped_min_span: float = 0.25
    commit_points: int = 0
    max_send_delay: float | None = None
    arrival_allowance: float = 0.002
    resync_settle_time: float = 0.1
    resync_tolerance: float = 0.005
    blend: BlendConfig = field(default_factory=BlendConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)

    def __post_init__(self) -> None:
        for name in ("control_dt", "chunk_dt"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"ControllerConfig.{name} must be a finite number of seconds > 0, got {value}"
                )
        if self.request_when_left < 0 or self.lookahead_points < 1:
            raise ValueError("request_when_left must be >= 0 and lookahead_points >= 1")
        if not (0 <= self.commit_points < self.lookahead_points):
            raise ValueError(
                f"commit_points must be >= 0 and below lookahead_points ({self.lookahead_points}), "
                f"got {self.commit_points}"
            )
        if not (math.isfinite(self.action_lead) and self.action_lead >= 0):
            raise ValueError(f"action_lead must be finite and >= 0, got {self.action_lead}")
        if not (self.max_tracking_error > 0):
            raise ValueError(f"max_tracking_error must be > 0 (inf disables), got {self.max_tracking_error}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        for name in ("stamped_min_span", "arrival_allowance", "resync_settle_time", "resync_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ControllerConfig.{name} must be finite and >= 0, got {value}")
        if self.max_send_delay is not None and not (self.max_send_delay >= 0):
            raise ValueError(f"max_send_delay must be >= 0 s, got {self.max_send_delay}")

    @property
    def send_delay_limit(self) -> float:
        """The largest send delay (s) a command may have: ``max_send_delay``, default one period."""
        return self.control_dt if self.max_send_delay is None else self.max_send_delay


@dataclass(frozen=True, eq=False)
class Command:
    """The output of one tick, due at ``t``.

    positions/velocities  (dof,) rad, rad/s; None before the first valid joint state, while the joint state
                          or the command subscriber is lost, and in FAULT: send nothing then (the last
                          look-ahead sent already ends at rest)
    trajectory            the JTC look-ahead (output "trajectory"): times (s) from ``stamp`` (None: from
                          receipt), point 0 = this command; None when nothing is to be sent
    stamp                 start of ``trajectory`` on the controller's clock (stamped output), else None
    gripper               width (m) wanted now, None when the gripper is not driven (or not yet)
    reason                why the state is not RUNNING ("" when running)
    epoch                 the instruction epoch it was computed in (a new instruction before it is sent
                          makes it the previous episode's: the node's history does not keep it)
    """

    t: float
    state: ControllerState
    reason: str
    positions: np.ndarray | None
    velocities: np.ndarray | None
    gripper: float | None
    interventions: Interventions
    actions_left: int
    chunk_id: int | None
    trajectory: Trajectory | None = None
    stamp: float | None = None
    epoch: int = 0


@dataclass(frozen=True, eq=False)
class _Released:
    """What the arm's controller executes: ``plan`` (on the tick times' clock) started ``lag`` s later than
    planned (``stamp = 0``: the send's delay), or the position command ``position = (t_send, q)``."""

    plan: ExecutedPlan | None = None
    lag: float = 0.0
    position: tuple[float, np.ndarray] | None = None

    @property
    def executed(self) -> ExecutedPlan | None:
        """The plan on the arm controller's clock."""
        return None if self.plan is None else self.plan.shifted(self.plan.start + self.lag)

    @property
    def end(self) -> float:
        return -math.inf if self.plan is None else self.plan.end + self.lag


@dataclass(frozen=True)
class ControllerStatus:
    """Counters and state for the node's PolicyStatus message."""

    state: ControllerState
    reason: str
    instruction: str
    epoch: int
    actions_left: int
    ticks: int
    chunks_accepted: int
    chunks_refused: int
    safety_interventions: int
    interventions_by_limit: Mapping[str, Mapping[str, int]]
    last_fault: str
    last_refusal: str
    commands_dropped: int = 0
    last_drop: str = ""


class Controller:
    """Turns chunks into safe commands, one :meth:`tick` per control period. See the module docstring."""

    def __init__(
        self, limits: JointLimits, layout: ActionLayout, config: ControllerConfig | None = None
    ) -> None:
        self.config = config or ControllerConfig()
        if layout.dof != limits.dof:
            raise ValueError(f"action layout has {layout.dof} arm joints but the limits have {limits.dof}")
        self.limits = limits
        self.layout = layout
        self.safety = SafetyFilter(limits, self.config.safety, self.config.control_dt)
        self.schedule = ChunkSchedule(
            layout, self.config.chunk_dt, self.config.blend, interpolation=self.config.interpolation
        )
        self.delay = DelayEstimator(self.config.chunk_dt, self.config.chunking)
        self._lock = threading.RLock()
        self._state = ControllerState.IDLE
        self._reason = "no instruction"
        self._instruction = ""
        self._epoch = 0
        self._cmd: CommandState | None = None
        self._gripper: float | None = None
        self._inference_problem: str | None = None
        self._chunk_seen = False  # a chunk was accepted for the current epoch
        self._last_t: float | None = None
        # what the arm's controller executes, and the last tick's command waiting for release (with what was
        # released before it, restored if it is dropped)
        self._released: _Released | None = None
        self._pending: tuple[Command, _Released | None, float] | None = None
        self._plan_end = -math.inf  # when the last released trajectory comes to rest
        self._resync: str | None = None  # why the next start must first wait for the arm at rest
        self._rest_ref: np.ndarray | None = None  # measured state the arm has stayed near ...
        self._rest_since: float | None = None  # ... since then (None: no fresh valid state last tick)
        # counters
        self._ticks = 0
        self._accepted = 0
        self._refused = 0
        self._interventions = 0
        self._by_limit: dict[str, dict[str, int]] = {}
        self._last_fault = ""
        self._last_refusal = ""
        self._dropped = 0
        self._last_drop = ""

    # ------------------------------------------------------------------------------------ operator API

    def reconfigure(self, config: ControllerConfig) -> str | None:
        """Switch to ``config`` at run time; None when applied, else why not (nothing changed then).

        Blending, the request threshold, the tracking-error bound, the watchdog and the safety limits may
        change; the stream's timing (control_dt, chunk_dt, interpolation, look-ahead) may not. New safety
        limits are refused while the last command would violate them (e.g. a lower velocity limit while the
        arm moves faster): the filter's invariant must hold from the very next tick.
        """
        fixed = ("control_dt", "chunk_dt", "interpolation", "lookahead_points", "action_lead")
        changed = [name for name in fixed if getattr(config, name) != getattr(self.config, name)]
        if changed:
            return f"{', '.join(changed)} cannot change at run time"
        with self._lock:
            safety = self.safety
            if config.safety != self.config.safety:
                safety = SafetyFilter(self.limits, config.safety, config.control_dt)
                if self._cmd is not None and not safety.is_safe(self._cmd):
                    return (
                        "the last command is outside the new safety limits (moving too fast or too close to "
                        "a limit for them): change them while holding or paused"
                    )
            self.safety = safety
            self.schedule.blend = config.blend
            self.config = config
        return None

    @property
    def state(self) -> ControllerState:
        return self._state

    @property
    def epoch(self) -> int:
        """Instruction epoch; tag each observation with it, chunks from older epochs are refused."""
        return self._epoch

    @property
    def instruction(self) -> str:
        return self._instruction

    def set_instruction(self, instruction: str) -> int:
        """Follow ``instruction`` from now on; returns the new epoch. ValueError in FAULT or if empty."""
        instruction = str(instruction).strip()
        with self._lock:
            if not instruction:
                raise ValueError("instruction must not be empty (use stop() to clear it)")
            if self._state == ControllerState.FAULT:
                raise ValueError(f"controller is in FAULT ({self._last_fault}); clear the fault first")
            self._new_epoch(instruction)
            if self._state != ControllerState.PAUSED:
                self._set_state(ControllerState.HOLDING, WAITING_FOR_CHUNK)
            return self._epoch

    def stop(self) -> int:
        """Hold and clear the instruction (-> IDLE, or stay in FAULT); returns the new epoch."""
        with self._lock:
            self._new_epoch("")
            if self._state != ControllerState.FAULT:
                self._set_state(ControllerState.IDLE, "no instruction")
            return self._epoch

    def pause(self) -> bool:
        """Hold until :meth:`resume`; the buffered chunks are dropped. False if there is nothing to pause."""
        with self._lock:
            if self._state not in (ControllerState.RUNNING, ControllerState.HOLDING):
                return False
            self.schedule.clear()
            self._chunk_seen = False
            self._set_state(ControllerState.PAUSED, "paused")
            return True

    def resume(self) -> bool:
        """Leave PAUSED (fresh chunks are needed first). False if not paused."""
        with self._lock:
            if self._state != ControllerState.PAUSED:
                return False
            if self._instruction:
                self._set_state(ControllerState.HOLDING, WAITING_FOR_CHUNK)
            else:
                self._set_state(ControllerState.IDLE, "no instruction")
            return True

    def resynchronise(self, reason: str) -> None:
        """Forget the command and the arm controller's plan: the next tick starts again from the measured
        state, once the arm has been at rest ``resync_settle_time`` (the stream stopped and the arm may be
        moved meanwhile, e.g. while the node is inactive). Buffered chunks are dropped; a FAULT stays."""
        with self._lock:
            self._drop_plan(str(reason) or "re-synchronising")

    def fault(self, reason: str) -> None:
        """Enter FAULT (e.g. the robot reported a reflex); holds until :meth:`reset`."""
        with self._lock:
            self._enter_fault(str(reason) or "fault")

    def reset(self) -> tuple[bool, str]:
        """Operator's way out of FAULT: -> IDLE, instruction cleared, and the next tick restarts the command
        from the measured state at rest. Refused (False, why) unless in FAULT with a fresh joint state that
        has stayed at rest for ``resync_settle_time`` inside the safe range, and the last trajectory sent
        has ended."""
        with self._lock:
            if self._state != ControllerState.FAULT:
                return False, f"not in FAULT (state {self._state.name})"
            why = self._not_at_rest(self._last_t)
            if why is None and self._rest_ref is not None:
                why = self.safety.check_start(self._rest_ref)
            if why is not None:
                return False, f"cannot reset: {why}"
            fault = self._last_fault
            self._new_epoch("")
            self._drop_plan(None)
            self._set_state(ControllerState.IDLE, "no instruction")
            return True, f"fault cleared ({fault}); restarting from the measured state"

    # ----------------------------------------------------------------------------- inference side API

    def on_chunk(self, chunk: Chunk | ChunkResult, t_now: float) -> ChunkDecision:
        """Offer a chunk (``schedule.Chunk`` or the worker's ``ChunkResult``) that arrived at ``t_now``.

        Never raises: a malformed chunk is refused with the reason (the caller logs it).
        """
        with self._lock:
            try:
                decision = self._decide(chunk, float(t_now))
            except (AttributeError, TypeError, ValueError) as exc:
                decision = ChunkDecision(False, f"malformed chunk: {type(exc).__name__}: {exc}")
            if decision.accepted:
                self._accepted += 1
                self._chunk_seen = True
                self._inference_problem = None
                self.delay.add(float(chunk.t_obs), float(t_now))
                if decision.rtc == "on_time":
                    self.delay.on_time += 1
                elif decision.rtc == "late":
                    self.delay.count_late(int(getattr(chunk, "prefix_len", 0) or 0))
            else:
                self._refused += 1
                self._last_refusal = decision.reason
            return decision

    def _decide(self, chunk: Chunk | ChunkResult, t_now: float) -> ChunkDecision:
        if self._state in (ControllerState.IDLE, ControllerState.PAUSED, ControllerState.FAULT):
            return ChunkDecision(False, f"not accepting chunks in {self._state.name}")
        latency = t_now - float(chunk.t_obs)
        limit = self.config.watchdog.max_inference_latency
        if latency > limit:
            decision = ChunkDecision(
                False, f"inference too slow ({latency * 1e3:.0f} ms > {limit * 1e3:.0f} ms)"
            )
            if int(chunk.epoch) == self._epoch:
                self._inference_problem = decision.reason
                self.delay.add(float(chunk.t_obs), t_now)
            return decision
        return self.schedule.push(chunk, t_now, self._epoch)

    def on_inference_error(self, reason: str) -> None:
        """Inference failed: HOLD until the next accepted chunk."""
        with self._lock:
            self._inference_problem = f"inference failed: {reason}" if reason else "inference failed"

    def should_request(self, t_now: float) -> bool:
        """True when the worker should compute the next chunk (instruction set, not paused, buffer low)."""
        with self._lock:
            if not self._instruction or self._state not in (ControllerState.RUNNING, ControllerState.HOLDING):
                return False
            if self._inference_problem is not None:
                return True  # holding for want of a good chunk: ask again at once
            threshold = self.delay.request_threshold(self.config.request_when_left, self.schedule.horizon)
            return self.schedule.should_request(t_now + self.config.action_lead, threshold)

    def request_threshold(self) -> int:
        """Actions left at which the next chunk is requested (derived from the delay estimate)."""
        with self._lock:
            return self.delay.request_threshold(self.config.request_when_left, self.schedule.horizon)

    def rtc_prefix(self, t_obs: float, state: np.ndarray | None, action_dim: int) -> np.ndarray | None:
        """The committed prefix for a request observed at ``t_obs`` (real-time chunking), or None.

        Rows ``i`` = what the schedule executes at ``t_obs + i * chunk_dt`` as raw actions in robot units
        (delta semantics relative to ``state``, the observation's joints), as many rows as the delay estimate
        (:meth:`DelayEstimator.prefix_length`). None when RTC is off, nothing executes (not RUNNING), or no
        delay has been measured yet. Send it with the request; the chunk carries ``prefix_len = len(rows)``.
        """
        with self._lock:
            if not self.config.chunking.rtc or self._state != ControllerState.RUNNING:
                return None
            horizon = self.schedule.horizon
            if horizon is None:
                return None
            rows = self.delay.prefix_length(horizon)
            if rows <= 0 or (self.layout.arm == "delta" and state is None):
                return None
            prefix = self.schedule.committed(float(t_obs), rows, int(action_dim), state)
            return prefix if len(prefix) else None

    def chunking_status(self) -> dict[str, int]:
        """Delay estimate and real-time-chunking counters (see :class:`DelayEstimator`)."""
        with self._lock:
            snap = self.delay.snapshot()
            snap["request_threshold"] = self.delay.request_threshold(
                self.config.request_when_left, self.schedule.horizon
            )
            return snap

    # -------------------------------------------------------------------------------------------- tick

    def tick(
        self,
        t_now: float,
        measured: np.ndarray | None,
        state_stamp: float | None = None,
        camera_stamps: Mapping[str, float | None] | None = None,
        gripper_stamp: float | None = None,
        inference_started: float | None = None,
        inference_waiting: str | None = None,
        input_problem: str | None = None,
        output_ready: bool = True,
    ) -> Command:
        """One control period: the command due at ``t_now`` (its send time), with its look-ahead.

        ``measured`` joint positions (rad); ``state_stamp``/``camera_stamps``/``gripper_stamp`` receive times
        of the latest samples and ``inference_started`` when the running inference began, all judged by the
        watchdog (see :func:`.watchdog.stale_input_reason`); ``inference_waiting`` why the inference worker
        cannot form an observation set (reported when the buffer runs dry); ``input_problem`` any other
        reason to hold; ``output_ready`` False when nobody subscribes to the commands. Never raises on bad
        input. Send the command only if :meth:`release` says so at send time.
        """
        with self._lock:
            self._ticks += 1
            self._last_t = t_now
            self._pending = None
            wd = self.config.watchdog
            q = _as_joints(measured, self.limits.dof)
            lost = state_problem(wd, t_now, state_stamp)
            if lost is None and q is None:
                lost = "joint state missing or not finite"
            self._note_rest(t_now, None if lost is not None else q)
            if lost is None and not output_ready:
                lost = "no subscriber for the arm commands"
            stale = input_problem or stale_input_reason(
                wd, t_now, None, camera_stamps, gripper_stamp, inference_started
            )

            if self._cmd is not None and lost is not None and self._state != ControllerState.FAULT:
                # The arm's controller may be gone or restarting: whatever it holds when it is back need not
                # be our plan. Send nothing (the last look-ahead ends at rest) and re-synchronise later.
                self._drop_plan(lost)
            if self._cmd is None and self._state == ControllerState.FAULT and self._resync is not None:
                return self._output(t_now, None, Interventions(), self._reason)  # until reset()
            if self._cmd is None:
                why = lost or stale
                if why is None and self._resync is not None:
                    why = self._not_at_rest(t_now)
                    why = None if why is None else f"re-synchronising after '{self._resync}': {why}"
                if why is not None:
                    if self._state in (ControllerState.RUNNING, ControllerState.HOLDING):
                        self._hold(why)
                    why = f"waiting for a valid joint state: {why}"
                    return self._output(t_now, None, Interventions(), why)
                assert q is not None
                start_problem = self.safety.check_start(q)
                if start_problem is not None:
                    if self._state != ControllerState.FAULT:
                        self._enter_fault(start_problem)
                    return self._output(t_now, None, Interventions(), self._reason)
                self._cmd = self.safety.start_state(q)
                # the arm's controller holds there
                self._released = _Released(plan=ExecutedPlan.resting(t_now, self._cmd))
                self._resync = None
            if self.config.output == "trajectory" and self._released and self._released.plan is not None:
                # where the JTC is when this command arrives (the sends' delays are checked at release)
                start = self._released.plan.state_at(t_now)
            else:
                start = self._cmd
            # Stamped output commits the next commit_points points: they repeat what the arm's controller
            # already executes, so a message delivered that much later changes nothing; the new plan
            # branches off at t_branch.
            committed: list[CommandState] = []
            if self.config.output == "trajectory" and self.config.stamped and self._released is not None:
                plan_now = self._released.plan
                dt = self.config.control_dt
                if plan_now is not None:
                    committed = [
                        plan_now.state_at(t_now + i * dt) for i in range(1, self.config.commit_points + 1)
                    ]
            branch = committed[-1] if committed else start
            t_branch = t_now + len(committed) * self.config.control_dt

            notes = Interventions()
            action = None
            if self._state in (ControllerState.RUNNING, ControllerState.HOLDING):
                hold = stale or self._inference_problem
                if hold is None:
                    action = self.schedule.sample(t_branch + self.config.action_lead)
                    if action is None:
                        if inference_waiting:
                            hold = f"inference waiting for inputs: {inference_waiting}"
                        else:
                            hold = "action buffer exhausted" if self._chunk_seen else WAITING_FOR_CHUNK
                if hold is not None:
                    self._hold(hold)
                else:
                    self._set_state(ControllerState.RUNNING, "")

            if action is None:
                step = self.safety.brake(branch)
            else:
                if self.layout.arm == "velocity":
                    step, notes = self.safety.follow_velocity(branch, action.arm, q)
                else:
                    step, notes = self.safety.track(branch, action.arm, q, action.arm_velocity)
                if action.gripper is not None:
                    width = self.layout.gripper_width(action.gripper)
                    if width is not None:
                        self._gripper = float(width)
                if notes:
                    self._count(
                        {k: tuple(self.limits.names[j] for j in v) for k, v in notes.by_limit.items()}
                    )
            cmd = committed[0] if committed else step  # the command due one period from now
            self._cmd = cmd
            if notes and self._state == ControllerState.RUNNING:
                self._interventions += 1
            if self._state != ControllerState.FAULT and q is not None and stale is None:
                err = np.abs(q - cmd.positions)
                if float(err.max()) > self.config.max_tracking_error:  # checked on the command to send
                    j = int(err.argmax())
                    self._enter_fault(
                        f"tracking error {err[j]:.3f} rad on {self.limits.names[j]} "
                        f"> {self.config.max_tracking_error:.3f} rad"
                    )
            if self._state == ControllerState.FAULT:
                # The arm may not be where the command is (reflex, pushed away): sending the held command
                # could yank it back once it recovers. Send nothing; the last look-ahead sent ends at rest.
                return self._output(t_now, None, notes, self._reason)
            trajectory = None
            before = (self._released, self._plan_end)
            if self.config.output == "trajectory":
                trajectory = self._lookahead(t_branch, step, committed)
                plan = ExecutedPlan.from_states(
                    t_now, start, trajectory.times, trajectory.positions, trajectory.velocities
                )
                self._released = _Released(plan=plan)
                self._plan_end = plan.end
            elif self.config.output == "position":
                self._released = _Released(position=(t_now, cmd.positions.copy()))
            out = self._output(t_now, cmd, notes, self._reason, trajectory)
            # Taken as sent at t_now until release() says otherwise: the next tick plans from it.
            self._pending = (out, *before)
            return out

    def release(self, command: Command, t_send: float) -> bool:
        """Whether ``command`` (the last tick's) may be sent at ``t_send``. Until called, the command counts
        as sent at its time ``t``; if allowed, it counts as sent at ``t_send`` (``stamp = 0``: the arm's
        controller starts it on arrival; the next tick still plans on the grid of tick times, the delay
        between them is what release checks).

        Dropped (False, counted in ``commands_dropped`` / ``last_drop``; the next tick plans from the
        previous command again): a command without positions or not the last tick's, one more than
        ``send_delay_limit`` late, and one the arm could not follow from where the previously sent one puts
        it at arrival (anywhere from ``t_send`` to ``arrival_allowance`` later): a trajectory's first segment
        or jump above the hardware velocity limit (:func:`.plan.arrival_problem`), a position command
        implying more than it since the last one. The arm keeps executing the previous trajectory, which
        ends at rest.
        """
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None or pending[0] is not command or command.positions is None:
                return False
            _, before, plan_end = pending
            problem = self._send_problem(command, t_send, before)
            if problem is not None:
                self._released, self._plan_end = before, plan_end
                self._dropped += 1
                self._last_drop = problem
                return False
            released = self._released
            if released is not None and released.plan is not None and not self.config.stamped:
                self._released = _Released(plan=released.plan, lag=t_send - command.t)
                self._plan_end = self._released.end
            elif released is not None and released.position is not None:
                self._released = _Released(position=(t_send, released.position[1]))
            return True

    def _send_problem(self, command: Command, t_send: float, before: _Released | None) -> str | None:
        late = t_send - command.t
        if late > self.config.send_delay_limit:
            return (
                f"{late * 1e3:.1f} ms late at send time (limit {self.config.send_delay_limit * 1e3:.1f} ms)"
            )
        limit = self.limits.velocity
        plan = None if self._released is None else self._released.plan
        previous = None if before is None else before.executed
        if plan is not None and previous is not None:
            stamped = self.config.stamped
            for arrival in self._arrivals(plan, t_send):
                executed = plan if stamped else plan.shifted(arrival)
                problem = arrival_problem(previous, executed, arrival, limit, stamped, self.limits.names)
                if problem is not None:
                    return problem
        if before is not None and before.position is not None and command.positions is not None:
            t0, q0 = before.position
            speed = np.abs(command.positions - q0) / max(t_send - t0, 1e-3)
            if np.any(speed > limit):
                j = int(np.argmax(speed / limit))
                return (
                    f"position command would need {speed[j]:.2f} rad/s on {self.limits.names[j]} "
                    f"(limit {limit[j]:.2f})"
                )
        return None

    def _arrivals(self, plan: ExecutedPlan, t_send: float) -> tuple[float, ...]:
        """The arrival times to check a send at ``t_send`` against: the earliest and the latest allowed,
        and for a stamped plan whose first point falls due between them, one JTC cycle before it (a first
        segment is steepest then: it has a cycle left to reach the point)."""
        latest = t_send + self.config.arrival_allowance
        arrivals = [t_send, latest]
        if self.config.stamped and len(plan.times) > 1:
            before_first = plan.start + float(plan.times[1]) - JTC_CYCLE
            if t_send < before_first < latest:
                arrivals.append(before_first)
        return tuple(arrivals)

    def _lookahead(
        self, t: float, cmd: CommandState, committed: list[CommandState] | None = None
    ) -> Trajectory:
        """The ``committed`` points, then the look-ahead from ``cmd`` (the step after them, due at ``t`` +
        one period) over the schedule, then braking to rest (see :mod:`.lookahead`); stamped output rests
        at its last point until ``stamped_min_span``."""
        committed = committed or []
        n = self.config.lookahead_points - len(committed)
        targets: list[Target | None] = []
        running = self._state == ControllerState.RUNNING
        t0 = t + self.config.action_lead
        for k in range(1, max(n, 1)):
            action = self.schedule.sample(t0 + k * self.config.control_dt, prune=False) if running else None
            if action is None:
                targets.append(None)
                running = False  # after a gap the real controller would hold: plan braking from here
            elif self.layout.arm == "velocity":
                targets.append(Target("velocity", action.arm))
            else:
                targets.append(Target("position", action.arm, action.arm_velocity))
        traj = plan_lookahead(self.safety, cmd, targets)
        if committed:
            dt = self.config.control_dt
            m = len(committed)
            traj = Trajectory(
                times=np.concatenate([dt * np.arange(1, m + 1), traj.times + m * dt]),
                positions=np.vstack([np.stack([c.positions for c in committed]), traj.positions]),
                velocities=np.vstack([np.stack([c.velocities for c in committed]), traj.velocities]),
            )
        span = self.config.stamped_min_span
        if self.config.stamped and traj.times[-1] < span:  # a late message still ends in the future
            traj = Trajectory(
                times=np.append(traj.times, span),
                positions=np.vstack([traj.positions, traj.positions[-1]]),
                velocities=np.vstack([traj.velocities, np.zeros_like(traj.velocities[-1])]),
            )
        return traj

    def status(self, t_now: float | None = None) -> ControllerStatus:
        with self._lock:
            t = self._last_t if t_now is None else t_now
            left = 0 if t is None else self.schedule.actions_left(t + self.config.action_lead)
            return ControllerStatus(
                state=self._state,
                reason=self._reason,
                instruction=self._instruction,
                epoch=self._epoch,
                actions_left=left,
                ticks=self._ticks,
                chunks_accepted=self._accepted,
                chunks_refused=self._refused,
                safety_interventions=self._interventions,
                interventions_by_limit={k: dict(v) for k, v in self._by_limit.items()},
                last_fault=self._last_fault,
                last_refusal=self._last_refusal,
                commands_dropped=self._dropped,
                last_drop=self._last_drop,
            )

    # ------------------------------------------------------------------------------------------ helpers

    def _new_epoch(self, instruction: str) -> None:
        self._epoch += 1
        self._instruction = instruction
        self.schedule.clear()
        self._chunk_seen = False
        self._inference_problem = None

    def _set_state(self, state: ControllerState, reason: str) -> None:
        self._state = state
        self._reason = reason

    def _enter_fault(self, reason: str) -> None:
        self.schedule.clear()
        self._chunk_seen = False
        self._last_fault = reason
        self._set_state(ControllerState.FAULT, reason)
        self._drop_plan("a fault")

    def _hold(self, reason: str) -> None:
        self._set_state(ControllerState.HOLDING, reason)
        if reason != WAITING_FOR_CHUNK:
            self._last_fault = reason
            self._count({WATCHDOG: ("all",)})
            self._interventions += 1

    def _drop_plan(self, resync: str | None) -> None:
        """Forget the command and what the arm's controller executes; the next start is from the measured
        state (``resync``: why it must first wait for the arm at rest; None: it need not)."""
        self._cmd = None
        self._released = None
        self._pending = None
        self._resync = resync
        if resync is not None:  # chunks planned before the loss are not resumed
            self.schedule.clear()
            self._chunk_seen = False

    def _note_rest(self, t: float, q: np.ndarray | None) -> None:
        """Track how long the measured state (``q``; None: no fresh valid one) has stayed in one place."""
        if q is None:
            self._rest_ref = None
            self._rest_since = None
        elif self._rest_ref is None or np.max(np.abs(q - self._rest_ref)) > self.config.resync_tolerance:
            self._rest_ref = q.copy()
            self._rest_since = t

    def _not_at_rest(self, t: float | None) -> str | None:
        """Why the stream may not (re)start from the measured state now (None: it may)."""
        if t is None or self._rest_since is None:
            return "no fresh joint state"
        if t < self._plan_end:
            return f"the last trajectory sent ends in {(self._plan_end - t) * 1e3:.0f} ms"
        settle = self.config.resync_settle_time
        if t - self._rest_since < settle:
            return f"the arm has been at rest for {(t - self._rest_since) * 1e3:.0f} of {settle * 1e3:.0f} ms"
        return None

    def _count(self, by_limit: Mapping[str, tuple[str, ...]]) -> None:
        for limit, joints in by_limit.items():
            per_joint = self._by_limit.setdefault(limit, {})
            for name in joints:
                per_joint[name] = per_joint.get(name, 0) + 1

    def _output(
        self,
        t: float,
        cmd: CommandState | None,
        notes: Interventions,
        reason: str,
        trajectory: Trajectory | None = None,
    ) -> Command:
        left = self.schedule.actions_left(t + self.config.action_lead)
        return Command(
            t=t,
            state=self._state,
            reason=reason if self._state != ControllerState.RUNNING else "",
            positions=None if cmd is None else cmd.positions.copy(),
            velocities=None if cmd is None else cmd.velocities.copy(),
            gripper=self._gripper,
            interventions=notes,
            actions_left=left,
            chunk_id=self.schedule.current_chunk_id,
            trajectory=trajectory,
            stamp=t if trajectory is not None and self.config.stamped else None,
            epoch=self._epoch,
        )


def _as_joints(values: np.ndarray | None, dof: int) -> np.ndarray | None:
    """Finite float64 (dof,) array, or None."""
    if values is None:
        return None
    try:
        q = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if q.shape != (dof,) or not np.all(np.isfinite(q)):
        return None
    return q
