"""The per-tick controller: schedule + semantics + watchdog + safety filter behind one state machine.

States match ``apt_msgs/PolicyStatus``:

* IDLE    -- no instruction; the command stays at rest where it is.
* RUNNING -- executing chunks for the current instruction.
* HOLDING -- instruction set but an input is stale, inference failed or was too slow, or the buffer is empty
             (or the first chunk has not arrived yet); back to RUNNING by itself when the cause clears.
* PAUSED  -- paused by the operator until :meth:`Controller.resume`.
* FAULT   -- unrecoverable until :meth:`Controller.clear_fault` (start pose outside the limits, tracking error
             too large, or :meth:`Controller.fault` from the node, e.g. a robot reflex). No command is output
             (the arm may not be where the command is); the last look-ahead sent ends at rest.

In IDLE, HOLDING and PAUSED the command brakes at the acceleration limit from the last safe command and then
stays there: never extrapolated, never a jump to the measured state. The only re-synchronisation to the
measured state is the first tick and the first tick after :meth:`clear_fault` (an operator action).

Thread-safety: every public method takes one lock, so the stream thread (``tick``), the inference worker
(``on_chunk``) and service callbacks (``set_instruction`` ...) may call concurrently.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from apt_policy.control.blending import BlendConfig
from apt_policy.control.chunking import ChunkingConfig, DelayEstimator
from apt_policy.control.limits import JointLimits
from apt_policy.control.lookahead import Target, Trajectory, plan_lookahead
from apt_policy.control.safety import CommandState, Interventions, SafetyConfig, SafetyFilter
from apt_policy.control.schedule import ChunkDecision, ChunkSchedule
from apt_policy.control.semantics import ActionLayout
from apt_policy.control.watchdog import WatchdogConfig, stale_input_reason

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
    """

    control_dt: float = 0.01
    chunk_dt: float = 0.1
    request_when_left: int = 5
    action_lead: float = 0.0
    interpolation: str = "cubic"
    max_tracking_error: float = 0.2
    lookahead_points: int = 10
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
        if not (math.isfinite(self.action_lead) and self.action_lead >= 0):
            raise ValueError(f"action_lead must be finite and >= 0, got {self.action_lead}")
        if not (self.max_tracking_error > 0):
            raise ValueError(f"max_tracking_error must be > 0 (inf disables), got {self.max_tracking_error}")


@dataclass(frozen=True, eq=False)
class Command:
    """The output of one tick.

    positions/velocities  (dof,) rad, rad/s; None before the first valid joint state and in FAULT: send
                          nothing then (the last look-ahead sent already ends at rest)
    gripper               width (m) wanted now, None when the gripper is not driven (or not yet)
    reason                why the state is not RUNNING ("" when running)
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


@dataclass(frozen=True)
class ControllerStatus:
    """Counters and state for the node's PolicyStatus message."""

    state: ControllerState
    reason: str
    instruction: str
    epoch: int
    actions_left: int
    ticks: int
    missed_ticks: int
    chunks_accepted: int
    chunks_refused: int
    safety_interventions: int
    interventions_by_limit: Mapping[str, Mapping[str, int]]
    last_fault: str
    last_refusal: str


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
        # counters
        self._ticks = 0
        self._missed = 0
        self._accepted = 0
        self._refused = 0
        self._interventions = 0
        self._by_limit: dict[str, dict[str, int]] = {}
        self._last_fault = ""
        self._last_refusal = ""

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

    def fault(self, reason: str) -> None:
        """Enter FAULT (e.g. the robot reported a reflex); holds until :meth:`clear_fault`."""
        with self._lock:
            self._enter_fault(str(reason) or "fault")

    def clear_fault(self) -> bool:
        """Operator acknowledgement: FAULT -> IDLE, instruction cleared, and the next tick restarts the
        command from the measured state at rest. False if not in FAULT."""
        with self._lock:
            if self._state != ControllerState.FAULT:
                return False
            self._new_epoch("")
            self._cmd = None
            self._set_state(ControllerState.IDLE, "no instruction")
            return True

    # ----------------------------------------------------------------------------- inference side API

    def on_chunk(self, chunk: Any, t_now: float) -> ChunkDecision:
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
                    self.delay.late += 1
            else:
                self._refused += 1
                self._last_refusal = decision.reason
            return decision

    def _decide(self, chunk: Any, t_now: float) -> ChunkDecision:
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

    def note_missed_ticks(self, count: int) -> None:
        """Add ticks the rate loop missed (for the status counters)."""
        with self._lock:
            self._missed += int(count)

    # -------------------------------------------------------------------------------------------- tick

    def tick(
        self,
        t_now: float,
        measured: np.ndarray | None,
        state_stamp: float | None = None,
        camera_stamps: Mapping[str, float | None] | None = None,
        input_problem: str | None = None,
    ) -> Command:
        """One control period at ``t_now``.

        ``measured`` joint positions (rad); ``state_stamp``/``camera_stamps`` receive times of the latest
        samples (checked against the watchdog ages); ``input_problem`` an extra stale-input reason from the
        node (e.g. ``ObservationBuffer.stale_reason``). Never raises on bad input.
        """
        with self._lock:
            self._ticks += 1
            self._last_t = t_now
            q = _as_joints(measured, self.limits.dof)
            stale = input_problem or stale_input_reason(
                self.config.watchdog, t_now, state_stamp, camera_stamps
            )
            if q is None:
                stale = stale or "joint state missing or not finite"

            if self._cmd is None:
                if stale is not None or q is None:
                    return self._output(
                        t_now, None, Interventions(), f"waiting for a valid joint state: {stale}"
                    )
                start_problem = self.safety.check_start(q)
                if start_problem is not None:
                    if self._state != ControllerState.FAULT:
                        self._enter_fault(start_problem)
                    return self._output(t_now, None, Interventions(), self._reason)
                self._cmd = self.safety.start_state(q)

            notes = Interventions()
            action = None
            if self._state in (ControllerState.RUNNING, ControllerState.HOLDING):
                hold = stale or self._inference_problem
                if hold is None:
                    action = self.schedule.sample(t_now + self.config.action_lead)
                    if action is None:
                        hold = "action buffer exhausted" if self._chunk_seen else WAITING_FOR_CHUNK
                if hold is not None:
                    self._set_state(ControllerState.HOLDING, hold)
                    if hold != WAITING_FOR_CHUNK:
                        self._last_fault = hold
                        self._count({WATCHDOG: ("all",)})
                else:
                    self._set_state(ControllerState.RUNNING, "")

            if action is None:
                self._cmd = self.safety.brake(self._cmd)
            else:
                if self.layout.arm == "velocity":
                    self._cmd, notes = self.safety.follow_velocity(self._cmd, action.arm, q)
                else:
                    self._cmd, notes = self.safety.track(self._cmd, action.arm, q, action.arm_velocity)
                if action.gripper is not None:
                    width = self.layout.gripper_width(action.gripper)
                    if width is not None:
                        self._gripper = float(width)
                if notes:
                    self._count(
                        {k: tuple(self.limits.names[j] for j in v) for k, v in notes.by_limit.items()}
                    )
            watchdog_hold = self._state == ControllerState.HOLDING and self._reason != WAITING_FOR_CHUNK
            if watchdog_hold or (notes and self._state == ControllerState.RUNNING):
                self._interventions += 1
            if self._state != ControllerState.FAULT and q is not None and stale is None:
                err = np.abs(q - self._cmd.positions)
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
            return self._output(t_now, self._cmd, notes, self._reason)

    def lookahead(self, points: int | None = None) -> Trajectory | None:
        """Trajectory from the last tick's command over the next ``points`` periods (default from config),
        then braking to rest. None before the first command and in FAULT. See :mod:`.lookahead`."""
        with self._lock:
            if self._cmd is None or self._last_t is None or self._state == ControllerState.FAULT:
                return None
            n = self.config.lookahead_points if points is None else int(points)
            targets: list[Target | None] = []
            running = self._state == ControllerState.RUNNING
            t0 = self._last_t + self.config.action_lead
            for k in range(1, max(n, 1)):
                action = (
                    self.schedule.sample(t0 + k * self.config.control_dt, prune=False) if running else None
                )
                if action is None:
                    targets.append(None)
                    running = False  # after a gap the real controller would hold: plan braking from here
                elif self.layout.arm == "velocity":
                    targets.append(Target("velocity", action.arm))
                else:
                    targets.append(Target("position", action.arm, action.arm_velocity))
            return plan_lookahead(self.safety, self._cmd, targets)

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
                missed_ticks=self._missed,
                chunks_accepted=self._accepted,
                chunks_refused=self._refused,
                safety_interventions=self._interventions,
                interventions_by_limit={k: dict(v) for k, v in self._by_limit.items()},
                last_fault=self._last_fault,
                last_refusal=self._last_refusal,
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

    def _count(self, by_limit: Mapping[str, tuple[str, ...]]) -> None:
        for limit, joints in by_limit.items():
            per_joint = self._by_limit.setdefault(limit, {})
            for name in joints:
                per_joint[name] = per_joint.get(name, 0) + 1

    def _output(self, t: float, cmd: CommandState | None, notes: Interventions, reason: str) -> Command:
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
