"""``apt-replay``: run a recording's observations through a model offline and compare its chunks with the
recorded ones: a regression check for a new model, export or backend.

For every recorded ``apt_msgs/ActionChunk`` (its ``header.stamp`` is the time of the observation it was
computed from) the replay takes, from the same recording:

* per camera, the newest frame whose header stamp is at or before the chunk's stamp (the recorder keeps
  the camera's stamp), decoded from its JPEG;
* the newest arm joint state (and gripper width when the model has one more state value) at or before it;
* the chunk's own instruction;
* the initial flow noise drawn from ``(seed, chunk_id)`` (times the model's noise scale): the same seed
  gives the same noise for the same chunk on every run, whatever the backend;
* its ``apt_msgs/ChunkInputs`` (same chunk id and stamp; the node publishes one with every chunk since the
  thirteenth session): the state the node gave the policy (used instead of the joint-state lookup above:
  the node may take a joint state newer than the frames' stamp), the real-time chunking prefix, given to a
  model that takes one, and a stateful model's executed-step history. A stateful model replayed without
  it (an older recording) gets an empty history, and the result's ``notes`` say so.

Both chunks start at the same observation, so step ``k`` of each is the action for ``stamp + k * dt``:
the per-step difference is time-aligned. The report gives, per step, the mean and max |difference| over
chunks and action dimensions, and overall figures. ``--out`` writes the recording again with the replayed
chunks in place of the recorded ones: the reference that later replays of the same inputs compare against
(a recorded chunk itself came from a live frame, not its JPEG, and from the node's own noise draw).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.core.start_views import StartViews, live_cameras
from apt_policy.data.bag import BagWriter, read_messages
from apt_policy.data.messages import Messages, decode_jpeg, stamp_ns
from apt_policy.runtime.policy import History, Policy

__all__ = ["ReplayOptions", "ReplayResult", "format_table", "replay", "replay_noise"]

CHUNK_TYPE = "apt_msgs/msg/ActionChunk"


@dataclass(frozen=True)
class ReplayOptions:
    seed: int = 0
    chunk_topic: str = "/apt_policy/action_chunk"
    joint_topic: str = "/franka/joint_states"
    gripper_topic: str = "/franka_gripper/joint_states"
    inputs_topic: str = "/apt_policy/chunk_inputs"
    cameras: Mapping[str, str] | None = None  # model camera -> compressed topic; None: match by order
    max_chunks: int = 0  # 0 = every chunk


@dataclass
class ReplayResult:
    chunks: int
    skipped: list[str]
    horizon: int
    action_dim: int
    dt: float
    per_step_mean: list[float]  # mean |replayed - recorded| over chunks and dims, per step
    per_step_max: list[float]
    per_dim_rms: list[float]
    max_abs: float
    mean_abs: float
    action_names: list[str] = field(default_factory=list)
    replayed: list[tuple[int, Any, np.ndarray]] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)  # what the figures include beyond the model's change

    def to_json(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "skipped": self.skipped,
            "horizon": self.horizon,
            "action_dim": self.action_dim,
            "dt": self.dt,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "per_step": [
                {"step": k, "t_ms": round(k * self.dt * 1e3, 3), "mean_abs": m, "max_abs": x}
                for k, (m, x) in enumerate(zip(self.per_step_mean, self.per_step_max, strict=True))
            ],
            "per_dim_rms": dict(zip(self.action_names, self.per_dim_rms, strict=False)),
            "notes": self.notes,
        }


def replay_noise(seed: int, chunk_id: int, shape: tuple[int, int], scale: float) -> np.ndarray:
    """The initial flow noise of one replayed chunk (see the module docstring)."""
    rng = np.random.default_rng([int(seed), int(chunk_id)])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


class _ByStamp:
    def __init__(self, items: list[tuple[int, Any]]) -> None:
        items.sort(key=lambda item: item[0])
        self.t = np.array([i[0] for i in items], dtype=np.int64)
        self.v = [i[1] for i in items]

    def at(self, t_ns: int) -> Any:
        i = int(np.searchsorted(self.t, t_ns, side="right")) - 1
        return self.v[i] if i >= 0 else None


def _state(names: Sequence[str], js: Any, gripper: Any) -> list[float]:
    """The model's state from a JointState: by name where the names match, else the arm joints in order;
    a last value beyond the arm's joints is the gripper width (sum of the finger positions)."""
    index = {n: i for i, n in enumerate(js.name)}
    if all(n in index for n in names):
        return [float(js.position[index[n]]) for n in names]
    n_arm = min(len(names), len(js.position))
    state = [float(v) for v in js.position[:n_arm]]
    if len(state) < len(names):
        state.append(float(np.sum(gripper.position)) if gripper is not None else 0.0)
    return state


def replay(bag: str | Path, policy: Policy, options: ReplayOptions | None = None) -> ReplayResult:
    """Replay every recorded chunk of ``bag`` through ``policy`` (see the module docstring)."""
    opts = options or ReplayOptions()
    info = policy.info
    messages = list(read_messages(bag))
    camera_topics = sorted({m.topic for m in messages if m.type == "sensor_msgs/msg/CompressedImage"})
    live = live_cameras(info.cameras)  # recorded topics; the start views are taken from them (as the node)
    cameras = dict(opts.cameras) if opts.cameras is not None else dict(zip(live, camera_topics, strict=False))
    missing = [c for c in live if c not in cameras]
    if missing:
        raise ValueError(f"model cameras {missing} have no recorded topic (recorded: {camera_topics})")
    frames = {
        cam: _ByStamp([(stamp_ns(m.msg.header.stamp), m.msg) for m in messages if m.topic == topic])
        for cam, topic in cameras.items()
    }
    joints = _ByStamp(
        [(stamp_ns(m.msg.header.stamp), m.msg) for m in messages if m.topic == opts.joint_topic]
    )
    gripper = _ByStamp(
        [(stamp_ns(m.msg.header.stamp), m.msg) for m in messages if m.topic == opts.gripper_topic]
    )
    inputs = {
        (int(m.msg.chunk_id), stamp_ns(m.msg.header.stamp)): m.msg
        for m in messages
        if m.topic == opts.inputs_topic
    }
    chunks = [m for m in messages if m.topic == opts.chunk_topic]
    if opts.max_chunks:
        chunks = chunks[: opts.max_chunks]
    h, a = info.horizon, info.action_dim
    diffs: list[np.ndarray] = []
    skipped: list[str] = []
    replayed: list[tuple[int, Any, np.ndarray]] = []
    without_history = 0
    start_views = StartViews(info.cameras)
    episode, previous = 0, None  # (instruction, valid history steps) of the chunk before
    for m in chunks:
        c = m.msg
        t = stamp_ns(c.header.stamp)
        images = {cam: frames[cam].at(t) for cam in live}
        js = joints.at(t)
        if js is None or any(v is None for v in images.values()):
            skipped.append(
                f"chunk {c.chunk_id}: no {'joint state' if js is None else 'frame'} before its stamp"
            )
            continue
        state = _state(info.state_names, js, gripper.at(t))
        noise = replay_noise(opts.seed, int(c.chunk_id), (h, a), info.noise_scale)
        recorded_inputs = inputs.get((int(c.chunk_id), t))
        prefix, history = (None, None) if recorded_inputs is None else _chunk_inputs(recorded_inputs)
        if recorded_inputs is not None and len(recorded_inputs.state) == len(info.state_names):
            state = [float(v) for v in recorded_inputs.state]
        if info.history_steps > 0 and history is None:
            without_history += 1
        now = (str(c.instruction), None if history is None else int(history.valid.sum()))
        if previous is not None and _new_episode(previous, now):
            episode += 1
        previous = now
        decoded = {cam: decode_jpeg(img.data) for cam, img in images.items()}
        out = np.asarray(
            policy.predict(
                start_views.add(decoded, episode),
                np.asarray(state, dtype=np.float32),
                str(c.instruction),
                noise,
                prefix=prefix if info.rtc_inputs else None,
                history=history if info.history_steps > 0 else None,
            ),
            dtype=np.float32,
        ).reshape(h, a)
        replayed.append((m.t_ns, c, out))
        recorded = np.asarray(c.actions, dtype=np.float32).reshape(int(c.horizon), int(c.action_dim))
        if recorded.shape[1] != a:
            skipped.append(f"chunk {c.chunk_id}: {recorded.shape[1]} action values, the model has {a}")
            continue
        k = min(h, recorded.shape[0])
        d = np.full((h, a), np.nan, dtype=np.float64)
        d[:k] = np.abs(out[:k].astype(np.float64) - recorded[:k])
        diffs.append(d)
    if not diffs:
        raise ValueError(
            f"{bag}: no chunk could be replayed ({'; '.join(skipped[:3]) or 'no chunks recorded'})"
        )
    D = np.stack(diffs)  # (chunks, horizon, action_dim)
    return ReplayResult(
        chunks=len(diffs),
        skipped=skipped,
        horizon=h,
        action_dim=a,
        dt=float(info.dt),
        per_step_mean=[float(v) for v in np.nanmean(D, axis=(0, 2))],
        per_step_max=[float(v) for v in np.nanmax(D, axis=(0, 2))],
        per_dim_rms=[float(v) for v in np.sqrt(np.nanmean(D**2, axis=(0, 1)))],
        max_abs=float(np.nanmax(D)),
        mean_abs=float(np.nanmean(D)),
        action_names=list(info.action_names),
        replayed=replayed,
        notes=_missing_history_notes(info.history_steps, without_history, len(chunks)),
    )


def _new_episode(before: tuple[str, int | None], now: tuple[str, int | None]) -> bool:
    """Whether a chunk began a new episode of the node (its start views taken again): another instruction,
    or fewer valid history steps than the chunk before (the history started again: a hold, a new
    activation). Without recorded histories only instruction changes are seen."""
    if before[0] != now[0]:
        return True
    return before[1] is not None and now[1] is not None and now[1] < before[1]


def _chunk_inputs(msg: Any) -> tuple[np.ndarray | None, History | None]:
    """(RTC prefix rows or None, executed-step history or None) of a recorded apt_msgs/ChunkInputs;
    ValueError when its arrays do not match its dimensions."""
    a, n, k, rows = int(msg.action_dim), int(msg.state_dim), int(msg.history_steps), int(msg.prefix_rows)
    prefix = np.asarray(msg.prefix, np.float32)
    states, actions = np.asarray(msg.history_states, np.float32), np.asarray(msg.history_actions, np.float32)
    valid = np.asarray(msg.history_valid, bool)
    if prefix.size != rows * a or states.size != k * n or actions.size != k * a or valid.size != k:
        raise ValueError(f"chunk {msg.chunk_id}: ChunkInputs arrays do not match its dimensions")
    history = History(states.reshape(k, n), actions.reshape(k, a), valid) if k else None
    return (prefix.reshape(rows, a) if rows else None), history


def _missing_history_notes(history_steps: int, without: int, chunks: int) -> list[str]:
    """A stateful model replayed without an executed-step history for some chunks (recorded before
    ChunkInputs, or from a stateless model: each such chunk as at an episode start): say so next to the
    figures."""
    if history_steps <= 0 or without == 0:
        return []
    return [
        f"stateful model ({history_steps} history steps) replayed WITHOUT its history for {without} of"
        f" {chunks} chunks (none recorded with them: no ChunkInputs, or a stateless model's): those as at an"
        " episode start; the differences include that"
    ]


def write_replayed(bag: str | Path, out: str | Path, result: ReplayResult, chunk_topic: str) -> Path:
    """``bag`` copied to ``out`` with the replayed chunks in place of the recorded ones."""
    from rosbags.highlevel import AnyReader

    m = Messages([CHUNK_TYPE])
    by_time = {t: (c, actions) for t, c, actions in result.replayed}
    with AnyReader([Path(bag)]) as reader, BagWriter(out) as writer:
        for conn in reader.connections:
            writer.add_topic(conn.topic, conn.msgtype, msgdef=conn.msgdef.data or None)
        for conn, t_ns, raw in reader.messages():
            if conn.topic == chunk_topic:
                if t_ns not in by_time:
                    continue
                c, actions = by_time[t_ns]
                c.actions = actions.reshape(-1).astype(np.float32)
                c.horizon, c.action_dim = actions.shape
                writer.write(conn.topic, t_ns, bytes(m.store.serialize_cdr(c, CHUNK_TYPE)))
                continue
            writer.write(conn.topic, t_ns, bytes(raw))
    return Path(out)


def format_table(result: ReplayResult, steps: Sequence[int] | None = None) -> str:
    """The per-step difference table printed by apt-replay."""
    lines = [
        f"{result.chunks} chunks replayed ({len(result.skipped)} skipped), horizon {result.horizon},"
        f" {result.action_dim} action values, dt {result.dt * 1e3:.0f} ms",
        f"{'step':>4}  {'t (ms)':>7}  {'mean |d|':>10}  {'max |d|':>10}",
    ]
    for k in steps if steps is not None else range(result.horizon):
        mean, top = result.per_step_mean[k], result.per_step_max[k]
        lines.append(f"{k:>4}  {k * result.dt * 1e3:>7.0f}  {mean:>10.3g}  {top:>10.3g}")
    lines.append(f"all   mean |d| {result.mean_abs:.3g}, max |d| {result.max_abs:.3g}")
    worst = int(np.argmax(result.per_dim_rms))
    name = result.action_names[worst] if worst < len(result.action_names) else str(worst)
    lines.append(f"      largest per-dimension RMS: {name} {result.per_dim_rms[worst]:.3g}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def result_json(result: ReplayResult) -> str:
    return json.dumps(result.to_json(), indent=2)
