"""The executed-step history a stateful policy reads (``runtime.policy.History``), kept at the policy's dt.

The node records what was actually COMMANDED (after the safety filter, the command that went to the arm),
with the measured state at that moment, never what a policy proposed. The command stream runs faster than
the policy's ``dt`` (e.g. 100 Hz vs 10 Hz): ``record`` keeps one step per ``dt``, the first command at or
after each point of a dt grid started by the first kept step (a gap longer than dt restarts the grid).
``reset`` (new instruction, hold, fault) forgets everything: the next prediction sees an episode start
(every step invalid). ``episode`` counts those starts: a reset after at least one kept step begins a new
one (resets while nothing was executed, e.g. every tick before the first chunk, do not), which is when the
start views (``core.start_views``) are taken again. Plain numpy, no ROS, no runtime.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# a command arriving this fraction of dt before the next step's time still counts as it (loop jitter)
DT_TOLERANCE = 0.05


@dataclass(frozen=True)
class HistorySnapshot:
    """The last ``steps`` kept steps, oldest first: states (K, state_dim), actions (K, action_dim) float32,
    valid (K,) bool (False at the front until K steps were kept since the last reset)."""

    states: np.ndarray
    actions: np.ndarray
    valid: np.ndarray


class HistoryBuffer:
    """Ring buffer of (state, executed command) pairs at the policy's dt; thread-safe (the control loop
    records, the inference worker snapshots)."""

    def __init__(self, steps: int, state_dim: int, action_dim: int, dt: float) -> None:
        if steps < 0 or state_dim < 1 or action_dim < 1 or not dt > 0:
            raise ValueError("HistoryBuffer needs steps >= 0, positive dims and dt > 0")
        self.steps, self.dt = int(steps), float(dt)
        self._states = np.zeros((self.steps, state_dim), np.float32)
        self._actions = np.zeros((self.steps, action_dim), np.float32)
        self._count = 0  # steps kept since the last reset (capped at ``steps``)
        self._due: float | None = None  # when the next step is due
        self._since_reset = False  # a step was kept since the last reset
        self.episode = 0  # episode starts so far (see the module docstring)
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget every step (new instruction, hold, fault): the next snapshot is an episode start."""
        with self._lock:
            self._count = 0
            self._due = None
            if self._since_reset:
                self.episode += 1
                self._since_reset = False

    def record(self, t: float, state: np.ndarray, action: np.ndarray) -> bool:
        """A command sent at time ``t`` (s) with the state measured then; kept if a dt has passed since the
        last kept step (True). Non-finite values are refused (ValueError): they never reached the arm."""
        state = np.asarray(state, np.float32).reshape(-1)
        action = np.asarray(action, np.float32).reshape(-1)
        if state.shape != self._states.shape[1:] or action.shape != self._actions.shape[1:]:
            raise ValueError(
                f"history step of state {state.shape} / action {action.shape}; expected "
                f"{self._states.shape[1:]} / {self._actions.shape[1:]}"
            )
        if not (np.all(np.isfinite(state)) and np.all(np.isfinite(action))):
            raise ValueError("history step with non-finite values")
        with self._lock:
            if self._due is not None and t < self._due - self.dt * DT_TOLERANCE:
                return False
            if self._due is None or t - self._due > self.dt:  # first step, or a gap: a new grid
                self._due = float(t) + self.dt
            else:
                self._due += self.dt
            self._since_reset = True
            if self.steps == 0:
                return True
            self._states[:-1] = self._states[1:]
            self._actions[:-1] = self._actions[1:]
            self._states[-1] = state
            self._actions[-1] = action
            self._count = min(self._count + 1, self.steps)
            return True

    def on_command(
        self,
        t: float,
        running: bool,
        sent: bool,
        joints: np.ndarray | None,
        gripper_width: float | np.ndarray | None,
        positions: np.ndarray | None,
        velocities: np.ndarray | None,
        gripper_command: float | None,
        arm: str = "absolute",
        arm_scale: float = 1.0,
    ) -> None:
        """The history rule of the node (and of the evaluator that stands in for it) for one command tick:
        any state but RUNNING, or no joints / no command, starts the history again; a command that was sent
        is kept (:func:`executed_step` in the policy's units, one per dt); one not sent is not."""
        if not running or joints is None or positions is None:
            self.reset()
            return
        if not sent:
            return
        step = executed_step(
            joints,
            gripper_width,
            positions,
            velocities,
            gripper_command,
            self._states.shape[1],
            self._actions.shape[1],
            arm,
            arm_scale,
        )
        if step is not None:
            self.record(t, *step)

    def snapshot(self) -> HistorySnapshot:
        """A copy of the last ``steps`` steps (invalid ones zero)."""
        with self._lock:
            valid = np.zeros(self.steps, bool)
            if self._count:
                valid[-self._count :] = True
            return HistorySnapshot(
                np.where(valid[:, None], self._states, 0.0).astype(np.float32),
                np.where(valid[:, None], self._actions, 0.0).astype(np.float32),
                valid,
            )


def executed_step(
    joints: np.ndarray,
    gripper_width: float | np.ndarray | None,
    positions: np.ndarray,
    velocities: np.ndarray | None,
    gripper_command: float | None,
    state_dim: int,
    action_dim: int,
    arm: str = "absolute",
    arm_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(state, action) of one sent command in the policy's units: the measured joints (+ gripper width when
    the state has one more value) and the command after the safety filter read back into the action
    semantics (absolute positions, delta = (position - measured) / scale, velocity / scale), + the gripper
    width commanded (or measured when none was). None when a needed value is missing."""
    joints = np.asarray(joints, np.float64).reshape(-1)
    dof = joints.shape[0]
    if gripper_width is not None:  # a float or a one-value array (ObservationBuffer's sample)
        gripper_width = float(np.asarray(gripper_width, np.float64).reshape(-1)[0])
    state = (
        joints if state_dim == dof else np.append(joints, np.nan if gripper_width is None else gripper_width)
    )
    if arm == "absolute":
        arm_action = np.asarray(positions, np.float64)
    elif arm == "delta":
        arm_action = (np.asarray(positions, np.float64) - joints) / arm_scale
    elif arm == "velocity" and velocities is not None:
        arm_action = np.asarray(velocities, np.float64) / arm_scale
    else:
        return None
    if action_dim == dof:
        action = arm_action
    else:
        width = gripper_command if gripper_command is not None else gripper_width
        action = np.append(arm_action, np.nan if width is None else width)
    if state.shape != (state_dim,) or action.shape != (action_dim,):
        return None
    if not (np.all(np.isfinite(state)) and np.all(np.isfinite(action))):
        return None
    return state, action
