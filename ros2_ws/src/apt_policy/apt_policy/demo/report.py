"""The demo report from episode recordings: metrics (report.json), a summary table, a figure and a video.

Metrics (all computed here from :class:`~apt_policy.demo.recording.EpisodeRecording`):

* success         the TCP (forward kinematics of the last joint state) ends within ``SUCCESS_RADIUS`` of
                  the reach point of the block the final instruction names (the task's metric)
* control rate    arm commands received by the simulated robot per second while the node ran, and the
                  tick jitter: |interval between commands - nominal period|, p50 / p99
* inference       ``inference_time_ms`` of every action chunk (observation -> chunk), p50 / p99
* safety          commands changed by the node's safety filter or watchdog, and contract violations the
                  simulated robot counted (limits, jumps); both must be 0 for a clean run
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from apt_policy.demo.recording import EpisodeRecording
from apt_policy.robots.franka import FR3, tcp_pose
from apt_policy.tasks.camera import make_camera
from apt_policy.tasks.instructions import target_color
from apt_policy.tasks.scene import BLOCK_SIZE, COLORS, SUCCESS_RADIUS, Scene, distance_to_block

__all__ = [
    "build_report",
    "episode_metrics",
    "format_summary",
    "plot_report",
    "tcp_positions",
    "write_video",
]


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def tcp_positions(joint_q: np.ndarray) -> np.ndarray:
    """(N, 3) TCP positions of (N, 7) joint positions."""
    q = np.asarray(joint_q, dtype=np.float64).reshape(-1, 7)
    return tcp_pose(q)[:, :3, 3] if len(q) else np.zeros((0, 3))


def _command_intervals(rec: EpisodeRecording) -> np.ndarray:
    t = np.sort(np.asarray(rec.command_t, dtype=np.float64))
    t = t[(t >= 0.0) & (t <= rec.duration_s)]
    return np.diff(t)


def episode_metrics(rec: EpisodeRecording, nominal_rate_hz: float) -> dict[str, Any]:
    """Outcome, timing and safety figures of one episode (see the module docstring)."""
    scene = Scene.from_dict(rec.scene)
    target = scene.block(rec.plan.target)
    tcp = tcp_positions(rec.joint_q)
    if len(tcp) == 0:
        raise ValueError(f"episode {rec.plan.name!r}: no joint states were recorded")
    final = tcp[-1]
    distances = {b.color: distance_to_block(final, b) for b in scene.blocks}
    nearest = min(distances, key=distances.__getitem__)
    last_instruction_t = max(t for t, _ in rec.plan.instructions)
    dist_t = np.linalg.norm(tcp - target.reach_point, axis=1)
    inside = np.flatnonzero((dist_t < SUCCESS_RADIUS) & (np.asarray(rec.joint_t) >= last_instruction_t))
    intervals = _command_intervals(rec)
    period = 1.0 / nominal_rate_hz
    t_cmd = np.sort(np.asarray(rec.command_t, dtype=np.float64))
    t_cmd = t_cmd[(t_cmd >= 0.0) & (t_cmd <= rec.duration_s)]
    rate = (len(t_cmd) - 1) / (t_cmd[-1] - t_cmd[0]) if len(t_cmd) >= 2 and t_cmd[-1] > t_cmd[0] else None
    interventions = int(rec.status_interventions[-1]) if len(rec.status_interventions) else 0
    missed = int(rec.status_missed_ticks[-1]) if len(rec.status_missed_ticks) else 0
    violations = int(rec.robot_report.get("total_violations", 0))
    return {
        "name": rec.plan.name,
        "instruction": rec.plan.label,
        "instructions": [{"t_s": t, "text": text} for t, text in rec.plan.instructions],
        "target": rec.plan.target,
        "scene_seed": rec.plan.scene_seed,
        "success": bool(distances[rec.plan.target] < SUCCESS_RADIUS),
        "final_distance_m": float(distances[rec.plan.target]),
        "reached": nearest if distances[nearest] < SUCCESS_RADIUS else None,
        "time_to_reach_s": float(rec.joint_t[inside[0]] - last_instruction_t) if inside.size else None,
        "duration_s": float(rec.duration_s),
        "chunks": len(rec.chunk_t),
        "inference_ms_p50": _pct(rec.chunk_ms, 50),
        "inference_ms_p99": _pct(rec.chunk_ms, 99),
        "commands": len(t_cmd),
        "control_rate_hz": float(rate) if rate is not None else None,
        "command_interval_ms_p50": _pct(intervals * 1e3, 50),
        "command_interval_ms_p99": _pct(intervals * 1e3, 99),
        "tick_jitter_ms_p50": _pct(np.abs(intervals - period) * 1e3, 50),
        "tick_jitter_ms_p99": _pct(np.abs(intervals - period) * 1e3, 99),
        "missed_ticks": missed,
        "safety_interventions": interventions,
        "robot_violations": violations,
        "robot_violations_by_kind": {
            k: int(v) for k, v in dict(rec.robot_report.get("violations", {})).items() if int(v)
        },
        "node_tick_lateness_p99_ms": rec.node_stats.get("tick_lateness_p99_ms"),
    }


def build_report(
    recordings: Sequence[EpisodeRecording], nominal_rate_hz: float, context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """report.json: per-episode metrics, totals pooled over every episode, and ``context`` as given."""
    if not recordings:
        raise ValueError("no episodes were recorded")
    episodes = [episode_metrics(rec, nominal_rate_hz) for rec in recordings]
    period = 1.0 / nominal_rate_hz
    intervals = np.concatenate([_command_intervals(rec) for rec in recordings])
    latencies = np.concatenate([np.asarray(rec.chunk_ms, dtype=np.float64) for rec in recordings])
    commands = sum(e["commands"] for e in episodes)
    active = sum(
        (e["commands"] - 1) / e["control_rate_hz"] for e in episodes if e["control_rate_hz"] is not None
    )
    successes = sum(e["success"] for e in episodes)
    totals = {
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": successes / len(episodes),
        "nominal_rate_hz": nominal_rate_hz,
        "control_rate_hz": (commands - sum(1 for e in episodes if e["commands"])) / active
        if active
        else None,
        "tick_jitter_ms_p50": _pct(np.abs(intervals - period) * 1e3, 50),
        "tick_jitter_ms_p99": _pct(np.abs(intervals - period) * 1e3, 99),
        "command_interval_ms_max": float(intervals.max() * 1e3) if intervals.size else None,
        "inference_ms_p50": _pct(latencies, 50),
        "inference_ms_p99": _pct(latencies, 99),
        "chunks": int(latencies.size),
        "commands": int(commands),
        "missed_ticks": sum(e["missed_ticks"] for e in episodes),
        "safety_interventions": sum(e["safety_interventions"] for e in episodes),
        "robot_violations": sum(e["robot_violations"] for e in episodes),
    }
    return {"summary": totals, "episodes": episodes, "context": dict(context or {})}


def _fmt(value: Any, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_summary(report: Mapping[str, Any]) -> str:
    """The summary table printed at the end of the demo (plain text, also used in docs/DEMO.md)."""
    rows = [
        ("episode", "instruction", "target", "result", "final dist", "reach time", "chunks", "infer p50/p99")
    ]
    for e in report["episodes"]:
        rows.append(
            (
                e["name"],
                e["instruction"] if len(e["instruction"]) <= 60 else e["instruction"][:57] + "...",
                e["target"],
                "success" if e["success"] else f"FAIL ({e['reached'] or 'no block'})",
                f"{e['final_distance_m'] * 100:.1f} cm",
                _fmt(e["time_to_reach_s"], ".1f") + (" s" if e["time_to_reach_s"] is not None else ""),
                str(e["chunks"]),
                f"{_fmt(e['inference_ms_p50'], '.0f')}/{_fmt(e['inference_ms_p99'], '.0f')} ms",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = report["summary"]
    rate, nominal = _fmt(s["control_rate_hz"], ".1f"), s["nominal_rate_hz"]
    jit50, jit99 = _fmt(s["tick_jitter_ms_p50"], ".2f"), _fmt(s["tick_jitter_ms_p99"], ".2f")
    lat50, lat99 = _fmt(s["inference_ms_p50"], ".1f"), _fmt(s["inference_ms_p99"], ".1f")
    lines += [
        "",
        f"success            {s['successes']}/{s['episodes']} ({s['success_rate']:.0%})",
        f"control rate       {rate} Hz achieved (nominal {nominal:.0f} Hz), {s['commands']} commands,"
        f" {s['missed_ticks']} missed ticks",
        f"tick jitter        p50 {jit50} ms, p99 {jit99} ms (|command interval - period| at the robot),"
        f" max interval {_fmt(s['command_interval_ms_max'], '.1f')} ms",
        f"inference latency  p50 {lat50} ms, p99 {lat99} ms over {s['chunks']} chunks",
        f"safety             {s['safety_interventions']} safety-filter/watchdog interventions,"
        f" {s['robot_violations']} contract violations at the robot",
    ]
    ctx = report.get("context", {})
    if "latency_profile" in ctx:
        used = ctx.get("chunk_execution", {}).get("used") or ctx.get("chunk_execution", {}).get("requested")
        lines.append(
            f"chunk execution    {used}; simulated inference latency {ctx['latency_profile']['description']}"
        )
    if ctx.get("scheduling"):
        lines.append("scheduling         " + ", ".join(f"{k} {v}" for k, v in ctx["scheduling"].items()))
    steal = {k: v for k, v in (ctx.get("hypervisor_steal_s") or {}).items() if v is not None}
    if steal:
        worst = max(steal, key=lambda k: steal[k])
        lines.append(
            f"machine            hypervisor steal {sum(steal.values()) * 1e3:.0f} ms over the episodes"
            f" (all CPUs; most {steal[worst] * 1e3:.0f} ms in {worst}): CPU time the VM did not get"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figure


def _rgb(color: str) -> tuple[float, float, float]:
    r, g, b = COLORS[color]
    return (r / 255, g / 255, b / 255)


def _draw_top_view(ax: Any, rec: EpisodeRecording, metrics: Mapping[str, Any]) -> None:
    """Looking down on the table with the robot base below the plot: +x (forward) up, +y (left) left."""
    from matplotlib.patches import Circle, Polygon

    scene = Scene.from_dict(rec.scene)
    first = target_color(rec.plan.instructions[0][1])
    for block in scene.blocks:
        corners = block.corners()[:4, :2][[0, 1, 3, 2]][:, ::-1]  # bottom face as (y, x), drawing order
        ax.add_patch(Polygon(corners, closed=True, color=_rgb(block.color), alpha=0.85))
        if block.color == rec.plan.target:
            ax.add_patch(Circle((block.y, block.x), SUCCESS_RADIUS, fill=False, ls="--", lw=1.2, color="k"))
        elif len(rec.plan.instructions) > 1 and block.color == first:
            ax.add_patch(
                Circle((block.y, block.x), SUCCESS_RADIUS, fill=False, ls=":", lw=1.2, color="orange")
            )
    tcp = tcp_positions(rec.joint_q)
    ax.plot(tcp[:, 1], tcp[:, 0], color="0.15", lw=1.5, label="TCP path")
    ax.plot(tcp[0, 1], tcp[0, 0], "o", color="0.15", ms=5, label="start")
    ax.plot(tcp[-1, 1], tcp[-1, 0], "x", color="0.15", ms=8, mew=2, label="end")
    for t, _ in rec.plan.instructions[1:]:  # where the instruction was switched
        i = int(np.searchsorted(rec.joint_t, t))
        if i < len(tcp):
            ax.plot(tcp[i, 1], tcp[i, 0], "D", color="orange", ms=6, label="switch")
    ax.set_aspect("equal")
    pad = 1.5 * BLOCK_SIZE
    xs = np.concatenate([tcp[:, 0], [b.x for b in scene.blocks]])
    ys = np.concatenate([tcp[:, 1], [b.y for b in scene.blocks]])
    ax.set_xlim(ys.max() + pad, ys.min() - pad)  # +y to the left, as seen from behind the robot
    ax.set_ylim(xs.min() - pad, xs.max() + pad)
    ax.set_xlabel("y (m)")
    ax.set_ylabel("x (m)")
    verdict = "success" if metrics["success"] else "FAIL"
    title = f"{rec.plan.name}: {rec.plan.target} — {verdict}, {metrics['final_distance_m'] * 100:.1f} cm"
    ax.set_title(f"{title}\n{_wrap(rec.plan.label, 38)}", fontsize=8.5)
    ax.grid(alpha=0.3)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2])


def plot_report(recordings: Sequence[EpisodeRecording], report: Mapping[str, Any], path: Path) -> Path:
    """demo_out/report.png: joint trajectories with chunk arrivals, top views of the TCP path over each
    scene, distance to the target over time, and the inference latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(recordings)
    fig = plt.figure(figsize=(max(14, 3.2 * n), 12), constrained_layout=True)
    grid = fig.add_gridspec(3, n, height_ratios=[1.1, 1.0, 0.9])
    ax_joint = fig.add_subplot(grid[0, :])
    cmap = plt.get_cmap("tab10")
    offset, gap = 0.0, 0.6
    for k, rec in enumerate(recordings):
        t = np.asarray(rec.joint_t) + offset
        span = (
            offset + min(0.0, float(rec.joint_t[0]) if len(rec.joint_t) else 0.0),
            offset + rec.duration_s,
        )
        ax_joint.axvspan(*span, color="0.93" if k % 2 == 0 else "0.97", zorder=0)
        ax_joint.text(
            (span[0] + span[1]) / 2,
            1.01,
            f"{rec.plan.name}\n{rec.plan.target}",
            transform=ax_joint.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color=_rgb(rec.plan.target),
        )
        for j in range(rec.joint_q.shape[1]):
            ax_joint.plot(
                t, rec.joint_q[:, j], color=cmap(j), lw=1.2, label=FR3.joint_names[j] if k == 0 else None
            )
        for tc in rec.chunk_t:
            ax_joint.axvline(tc + offset, color="0.45", lw=0.5, alpha=0.5, zorder=1)
        for ts, _ in rec.plan.instructions[1:]:
            ax_joint.axvline(ts + offset, color="orange", lw=2, ls="--", zorder=2)
        offset = span[1] + gap
    ax_joint.plot([], [], color="0.45", lw=0.8, label="chunk arrival")
    ax_joint.plot([], [], color="orange", lw=2, ls="--", label="instruction switch")
    ax_joint.set_xlabel("time (s), episodes end to end")
    ax_joint.set_ylabel("joint position (rad)")
    ax_joint.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax_joint.set_xlim(left=min(0.0, ax_joint.get_xlim()[0]))
    ax_joint.grid(alpha=0.3, axis="y")

    for k, (rec, m) in enumerate(zip(recordings, report["episodes"], strict=True)):
        ax = fig.add_subplot(grid[1, k])
        _draw_top_view(ax, rec, m)
        if k == 0:
            ax.legend(fontsize=7, loc="best")

    half = max(1, n // 2)
    ax_dist = fig.add_subplot(grid[2, :half])
    styles = ("-", "--", "-.", ":")
    for k, rec in enumerate(recordings):
        scene = Scene.from_dict(rec.scene)
        d = np.linalg.norm(tcp_positions(rec.joint_q) - scene.block(rec.plan.target).reach_point, axis=1)
        style = styles[k // len(COLORS) % len(styles)]
        label = f"{rec.plan.name} ({rec.plan.target})"
        ax_dist.plot(rec.joint_t, d * 100, color=_rgb(rec.plan.target), ls=style, lw=1.4, label=label)
        for ts, _ in rec.plan.instructions[1:]:
            ax_dist.axvline(ts, color="orange", ls="--", lw=1.2)
    ax_dist.axhline(SUCCESS_RADIUS * 100, color="k", ls="--", lw=1, label="success radius")
    ax_dist.set_xlabel("time since first instruction (s)")
    ax_dist.set_ylabel("TCP to target (cm)")
    ax_dist.set_title("distance to the named block", fontsize=10)
    ax_dist.legend(fontsize=7)
    ax_dist.grid(alpha=0.3)

    ax_lat = fig.add_subplot(grid[2, half:])
    lat = np.concatenate([np.asarray(rec.chunk_ms, dtype=np.float64) for rec in recordings])
    s = report["summary"]
    if lat.size:
        ax_lat.hist(lat, bins=min(40, max(5, lat.size // 3)), color="tab:blue", alpha=0.8)
        for q, style in (("inference_ms_p50", "-"), ("inference_ms_p99", "--")):
            ax_lat.axvline(s[q], color="k", ls=style, lw=1.2, label=f"{q[-3:]} {s[q]:.1f} ms")
        ax_lat.legend(fontsize=8)
    ax_lat.set_xlabel("inference latency per chunk (ms, observation -> chunk)")
    ax_lat.set_ylabel("chunks")
    ax_lat.set_title(
        f"{s['chunks']} chunks; control {_fmt(s['control_rate_hz'], '.1f')} Hz, jitter p99"
        f" {_fmt(s['tick_jitter_ms_p99'], '.2f')} ms",
        fontsize=10,
    )
    ax_lat.grid(alpha=0.3)
    fig.suptitle(
        f"APT demo on the simulated FR3 — success {s['successes']}/{s['episodes']},"
        f" {s['safety_interventions']} safety interventions, {s['robot_violations']} robot violations",
        fontsize=13,
    )
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- video


def _instruction_at(rec: EpisodeRecording, t: float) -> str:
    text = rec.plan.instructions[0][1]
    for ts, s in rec.plan.instructions:
        if ts <= t:
            text = s
    return text


def write_video(recordings: Sequence[EpisodeRecording], path: Path, fps: float, camera: str = "front") -> int:
    """demo_out/episode.mp4: the recorded camera frames with the TCP path so far overlaid; returns the
    number of frames written. Raises RuntimeError if no frame was recorded or the file cannot be written."""
    frames = [(rec, i) for rec in recordings for i in range(len(rec.frame_t))]
    if not frames:
        raise RuntimeError("no camera frames were recorded")
    h, w = recordings[0].frames.shape[1:3]
    cam = make_camera(camera, width=w, height=h)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path} (mp4v)")
    written = 0
    try:
        for rec in recordings:
            if not len(rec.frame_t):
                continue
            tcp = tcp_positions(rec.joint_q)
            uv, depth = cam.project(tcp) if len(tcp) else (np.zeros((0, 2)), np.zeros(0))
            scene = Scene.from_dict(rec.scene)
            target_uv, _ = cam.project(scene.block(rec.plan.target).reach_point[None])
            for t, frame in zip(rec.frame_t, rec.frames, strict=True):
                img = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
                upto = int(np.searchsorted(rec.joint_t, t, side="right"))
                pts = uv[:upto][depth[:upto] > 0]
                if len(pts) >= 2:
                    cv2.polylines(img, [np.round(pts).astype(np.int32)], False, (0, 215, 255), 2, cv2.LINE_AA)
                if len(pts):
                    cv2.circle(
                        img, tuple(int(v) for v in np.round(pts[-1])), 5, (0, 215, 255), -1, cv2.LINE_AA
                    )
                cv2.circle(
                    img, tuple(int(v) for v in np.round(target_uv[0])), 9, (255, 255, 255), 1, cv2.LINE_AA
                )
                cv2.rectangle(img, (0, 0), (w, 34), (0, 0, 0), -1)
                scale = max(0.35, w / 900)
                cv2.putText(
                    img,
                    f"{rec.plan.name}  t={t:4.1f}s",
                    (6, 13),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale,
                    (255, 255, 255),
                    1,
                    cv2.LINE_AA,
                )
                cv2.putText(
                    img,
                    f'"{_instruction_at(rec, float(t))}"',
                    (6, 29),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale,
                    (0, 215, 255),
                    1,
                    cv2.LINE_AA,
                )
                writer.write(img)
                written += 1
    finally:
        writer.release()
    return written


def video_frame_count(path: Path) -> int:
    """Frames cv2.VideoCapture can read back from ``path`` (0 when it cannot be opened)."""
    cap = cv2.VideoCapture(str(path))
    count = 0
    try:
        while cap.isOpened():
            ok, _ = cap.read()
            if not ok:
                break
            count += 1
    finally:
        cap.release()
    return count


def nan_to_none(value: Any) -> Any:
    """JSON-safe copy: NaN / inf floats become None (json.dumps would write invalid NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
