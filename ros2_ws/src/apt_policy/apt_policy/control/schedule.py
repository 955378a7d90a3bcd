"""The chunk schedule: which action applies at time ``t``, how many are left, when to ask for the next chunk.

A chunk computed from an observation taken at ``t_obs`` with step ``dt`` applies action
``i = floor((t - t_obs) / dt)`` at time ``t``: the actions whose time passed while the policy was
inferring are skipped (latency compensation). Between two actions a position target is shaped by
``interpolation`` and its velocity is fed forward to the safety filter:

* ``cubic`` (default) -- Catmull-Rom through the actions (action ``i`` reached at ``t_obs + i dt``):
  continuous velocity, so a smooth chunk asks for a bounded acceleration;
* ``linear`` -- straight segments: the velocity jumps at every action;
* ``hold`` -- each action held for ``dt`` (zero-order hold, no feed-forward: the arm moves in steps).

Velocity actions and the gripper are always held.

A chunk with a committed prefix (``prefix_len = d > 0``: its rows ``0..d-1`` were asked to equal what this
schedule executes at ``t_obs + i dt``, real-time chunking, see :mod:`.chunking`) takes over at
``t_obs + (d-1) dt``, from its last committed action toward its first non-committed one, without blending;
until then the executing chunk continues. One that arrives after that instant is blended in from its arrival
like any other chunk.
A chunk is refused when it belongs to an older instruction epoch (the
instruction changed after its observation was taken), is malformed or non-finite, is older than the executing
chunk, or has no action left. Overlapping chunks are combined as configured in :mod:`.blending`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from apt_policy.control.blending import BlendConfig, crossfade_alpha, ensemble_weights
from apt_policy.control.semantics import ActionLayout

INTERPOLATIONS = ("cubic", "linear", "hold")
_EPS = 1e-9  # tolerance on (t - t_obs) / dt so that t = t_obs + k * dt maps to step k despite rounding


if TYPE_CHECKING:
    from apt_policy.control.inference_worker import ChunkResult


@dataclass(frozen=True, eq=False)
class Chunk:
    """A raw chunk: actions (horizon, action_dim) in robot units, from an observation at ``t_obs`` (s).

    ``epoch`` is the instruction epoch the observation was taken under; ``state`` the measured joint state in
    that observation (needed for delta semantics); ``dt`` None means the schedule's default step.
    The node's ``inference_worker.ChunkResult`` has the same field names and can be pushed directly.
    """

    actions: np.ndarray
    t_obs: float
    epoch: int
    state: np.ndarray | None = None
    chunk_id: int = 0
    dt: float | None = None
    inference_s: float = math.nan
    prefix_len: int = 0


@dataclass(frozen=True)
class ChunkDecision:
    """Outcome of :meth:`ChunkSchedule.push`: accepted, or refused with a reason."""

    accepted: bool
    reason: str = ""
    rtc: str = ""  # a chunk with a committed prefix: "on_time" (takes over at its prefix end) or "late"


@dataclass(frozen=True, eq=False)
class ScheduledAction:
    """The (blended) action for one instant.

    arm           positions (rad) for absolute/delta semantics, velocities (rad/s) for velocity semantics
    arm_velocity  velocity of the position target (rad/s), for feed-forward; zeros for "hold" and for
                  velocity semantics
    gripper       raw (blended) gripper value, None when unused
    index         step of the executing chunk; actions_left counts that step and the rest
    """

    arm: np.ndarray
    arm_velocity: np.ndarray
    gripper: float | None
    index: int
    actions_left: int
    chunk_id: int
    contributors: int


@dataclass(eq=False)
class _Resolved:
    arm: np.ndarray
    tangents: np.ndarray  # Catmull-Rom velocities at the actions (one-sided at the ends), rad/s
    gripper: np.ndarray | None
    t_obs: float
    dt: float
    chunk_id: int
    t_accepted: float
    t_start: float  # when it starts to execute (arrival, or the end of its committed prefix)
    blend_in: bool  # blended with the chunk(s) before it from t_start (False: takes over exactly)
    raw: np.ndarray  # the raw actions (robot units), for building prefixes
    horizon: int = field(init=False)

    def __post_init__(self) -> None:
        self.horizon = self.arm.shape[0]

    def index(self, t: float) -> int:
        return max(0, math.floor((t - self.t_obs) / self.dt + _EPS))

    def at(self, t: float, i: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
        """Target and its velocity at ``t`` within step ``i``."""
        if interpolation == "hold" or i >= self.horizon - 1:
            return self.arm[i], np.zeros_like(self.arm[i])
        s = min(max((t - (self.t_obs + i * self.dt)) / self.dt, 0.0), 1.0)
        p0, p1 = self.arm[i], self.arm[i + 1]
        if interpolation == "linear":
            slope = (p1 - p0) / self.dt
            return p0 + s * (p1 - p0), slope
        m0, m1 = self.tangents[i] * self.dt, self.tangents[i + 1] * self.dt
        s2, s3 = s * s, s * s * s
        value = (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (3 * s2 - 2 * s3) * p1 + (s3 - s2) * m1
        velocity = (
            (6 * s2 - 6 * s) * (p0 - p1) + (3 * s2 - 4 * s + 1) * m0 + (3 * s2 - 2 * s) * m1
        ) / self.dt
        return value, velocity

    def end(self) -> float:
        return self.t_obs + self.horizon * self.dt


class ChunkSchedule:
    """Holds the executing chunk (and, for blending, the ones it overlaps). Not thread-safe on its own."""

    def __init__(
        self,
        layout: ActionLayout,
        dt: float,
        blend: BlendConfig | None = None,
        interpolation: str = "cubic",
    ) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"chunk dt must be a finite number of seconds > 0, got {dt}")
        self.layout = layout
        self.dt = float(dt)
        self.blend = blend or BlendConfig()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = "hold" if layout.arm == "velocity" else interpolation
        self._chunks: list[_Resolved] = []  # oldest first; the last one is the executing chunk

    @property
    def current_chunk_id(self) -> int | None:
        return self._chunks[-1].chunk_id if self._chunks else None

    def clear(self) -> None:
        self._chunks.clear()

    def push(self, chunk: Chunk | ChunkResult, t_now: float, epoch: int) -> ChunkDecision:
        """Offer a chunk at time ``t_now`` while instruction ``epoch`` is current."""
        if int(chunk.epoch) != int(epoch):
            return ChunkDecision(False, f"stale instruction epoch {chunk.epoch} (current {epoch})")
        dt = getattr(chunk, "dt", None)
        dt = self.dt if dt is None else float(dt)
        if not (math.isfinite(dt) and dt > 0):
            return ChunkDecision(False, f"chunk dt must be > 0, got {dt}")
        t_obs = float(chunk.t_obs)
        if not math.isfinite(t_obs):
            return ChunkDecision(False, "chunk observation time is not finite")
        if t_obs > t_now + 1e-6:
            return ChunkDecision(False, f"chunk observation time is {t_obs - t_now:.3f} s in the future")
        actions = np.asarray(chunk.actions, dtype=np.float64)
        state = getattr(chunk, "state", None)
        problem = self.layout.check(actions, state)
        if problem is not None:
            return ChunkDecision(False, problem)
        if self._chunks and t_obs < self._chunks[-1].t_obs:
            return ChunkDecision(False, "chunk is older than the executing chunk")
        horizon = actions.shape[0]
        if t_now >= t_obs + horizon * dt - _EPS * dt:
            return ChunkDecision(
                False, f"all {horizon} actions already in the past ({(t_now - t_obs) * 1e3:.0f} ms late)"
            )
        arm = self.layout.resolve_arm(actions, state)
        tangents = np.gradient(arm, dt, axis=0) if horizon > 1 else np.zeros_like(arm)
        prefix_len = int(getattr(chunk, "prefix_len", 0) or 0)
        t_start, blend_in, rtc = float(t_now), True, ""
        if prefix_len > 0 and self._chunks:
            t_take = t_obs + (min(prefix_len, horizon) - 1) * dt
            if t_take >= t_now - _EPS * dt:  # in time: the executing chunk continues until then
                t_start, rtc = t_take, "on_time"
                blend_in = self.blend.rtc_takeover and self.blend.mode == "crossfade"
            else:
                rtc = "late"
        resolved = _Resolved(
            arm=arm,
            tangents=tangents,
            gripper=self.layout.raw_gripper(actions),
            t_obs=t_obs,
            dt=dt,
            chunk_id=int(getattr(chunk, "chunk_id", 0)),
            t_accepted=float(t_now),
            t_start=t_start,
            blend_in=blend_in,
            raw=actions.copy(),
        )
        self._chunks.append(resolved)
        self._prune(t_now)
        return ChunkDecision(True, rtc=rtc)

    @property
    def horizon(self) -> int | None:
        """Horizon of the newest chunk (None when there is none)."""
        return self._chunks[-1].horizon if self._chunks else None

    def executing_chunk_id(self, t: float) -> int | None:
        """Id of the chunk that executes at ``t`` (an accepted chunk may wait for its prefix to end)."""
        if not self._chunks:
            return None
        return self._chunks[self._executing(t)].chunk_id

    def committed(self, t_obs: float, rows: int, action_dim: int, state: np.ndarray | None) -> np.ndarray:
        """What this schedule executes at ``t_obs + i dt``, ``i < rows``, as raw actions (robot units).

        Stops early where the schedule has no action (fewer rows). Arm columns hold the (blended) targets in
        the layout's semantics relative to ``state`` (delta), the gripper column the (blended) raw value,
        other columns the executing chunk's raw value at that step.
        """
        out: list[np.ndarray] = []
        for i in range(max(0, int(rows))):
            t = t_obs + i * self.dt
            action = self.sample(t, prune=False)
            if action is None:
                break
            cur = self._chunks[self._executing(t)]
            row = np.zeros(action_dim)
            width = min(action_dim, cur.raw.shape[1])
            row[:width] = cur.raw[min(action.index, cur.horizon - 1), :width]
            row[: self.layout.dof] = self.layout.unresolve_arm(action.arm, state)
            if action.gripper is not None and self.layout.gripper_column < action_dim:
                row[self.layout.gripper_column] = action.gripper
            out.append(row)
        return np.array(out, dtype=np.float64).reshape(len(out), action_dim)

    def _executing(self, t: float) -> int:
        """Index of the newest chunk that has started at ``t`` (0 when none has)."""
        for k in range(len(self._chunks) - 1, -1, -1):
            if self._chunks[k].t_start <= t + _EPS * self.dt:
                return k
        return 0

    def actions_left(self, t: float) -> int:
        """Actions of the executing chunk at or after time ``t`` (0 when none)."""
        if not self._chunks:
            return 0
        cur = self._chunks[-1]
        return max(0, cur.horizon - cur.index(t))

    def should_request(self, t: float, when_left: int) -> bool:
        """True when the executing chunk has ``when_left`` or fewer actions left at ``t`` (or none)."""
        return self.actions_left(t) <= when_left

    def sample(self, t: float, prune: bool = True) -> ScheduledAction | None:
        """The action for time ``t``, or None when the executing chunk is exhausted (or there is none).

        ``prune=False`` leaves finished chunks in place (for looking ahead without changing the schedule).
        """
        if prune:
            self._prune(t)
        if not self._chunks:
            return None
        ex = self._executing(t)
        cur = self._chunks[ex]
        idx = cur.index(t)
        if idx >= cur.horizon:
            return None
        live = [c for c in self._chunks[: ex + 1] if c.index(t) < c.horizon]
        mode = self.blend.mode
        if mode == "crossfade" and len(live) >= 2 and cur.blend_in:
            prev = live[-2]
            # the blend ends by the old chunk's last action: after it the old chunk only holds, then drops out
            span = min(
                self.blend.crossfade_steps * cur.dt, prev.t_obs + (prev.horizon - 1) * prev.dt - cur.t_start
            )
            alpha = (
                1.0
                if span <= _EPS * cur.dt
                else crossfade_alpha(t, cur.t_start, span / cur.dt, cur.dt, self.blend.crossfade_shape)
            )
            parts, weights = [prev, cur], np.array([1.0 - alpha, alpha])
        elif mode == "ensemble" and len(live) >= 2 and cur.blend_in:
            parts, weights = live, ensemble_weights(len(live), self.blend.ensemble_decay)
        else:
            parts, weights = [cur], np.ones(1)
        arm = np.zeros(self.layout.dof)
        arm_velocity = np.zeros(self.layout.dof)
        gripper = 0.0 if cur.gripper is not None else None
        for c, w in zip(parts, weights, strict=True):
            i = c.index(t)
            value, velocity = c.at(t, i, self.interpolation)
            arm += w * value
            arm_velocity += w * velocity
            if gripper is not None and c.gripper is not None:
                gripper += w * float(c.gripper[i])
        return ScheduledAction(
            arm=arm,
            arm_velocity=arm_velocity,
            gripper=gripper,
            index=idx,
            actions_left=cur.horizon - idx,
            chunk_id=cur.chunk_id,
            contributors=int(np.count_nonzero(weights)),
        )

    def _prune(self, t: float) -> None:
        """Drop chunks that are finished at ``t`` or no longer needed by the blend mode."""
        if not self._chunks:
            return
        ex = self._executing(t)
        cur, pending = self._chunks[ex], self._chunks[ex + 1 :]
        older = [c for c in self._chunks[:ex] if c.index(t) < c.horizon]
        keep = {"none": 0, "crossfade": 1, "ensemble": self.blend.max_chunks - 1}[self.blend.mode]
        older = older[-keep:] if keep > 0 and cur.blend_in else []
        self._chunks = [*older, cur, *pending]
