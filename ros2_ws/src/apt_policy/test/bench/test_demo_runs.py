"""Pooling many demo runs: the Wilson interval, the per-episode figures and the hold-ups of each run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from apt_policy.bench.demo_runs import main, pool, read_run, wilson_interval
from apt_policy.bench.stream import TRAJECTORY_TOPIC


def test_wilson_interval_matches_the_textbook_values() -> None:
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(11, 10)


def _arrivals(path: Path, held_at: int | None) -> None:
    """fake_franka's arrival log of 100 Hz commands; with ``held_at`` that one is delivered 320 ms late and
    the ones written meanwhile arrive with it."""
    sent = 500.0 + 0.01 * np.arange(400)
    received = sent + 0.001
    if held_at is not None:
        release = sent[held_at] + 0.32
        queued = (np.arange(sent.size) >= held_at) & (sent < release)
        received[queued] = release
    path.write_text(
        json.dumps(
            {"sent": {TRAJECTORY_TOPIC: sent.tolist()}, "received": {TRAJECTORY_TOPIC: received.tolist()}}
        )
    )


def _run(
    root: Path, name: str, distances_cm: list[float], violations: list[int], held_in: str | None = None
) -> Path:
    out = root / name
    (out / "logs" / "ros").mkdir(parents=True)
    for pid, start_s in ((11, 497.2), (12, 499.0), (13, 498.1)):  # rcl's log names; the last start: 499.0
        (out / "logs" / "ros" / f"python_{pid}_{round(start_s * 1e3):013d}.log").write_text("")
    (out / "logs" / "ros" / "notes.log").write_text("")  # not an rcl log: ignored
    episodes = []
    for k, (d, v) in enumerate(zip(distances_cm, violations, strict=True), start=1):
        ep = f"ep{k}"
        episodes.append({"name": ep, "success": d < 3.0, "final_distance_m": d / 100, "robot_violations": v})
        _arrivals(out / "logs" / f"{ep}_arrivals.json", 50 if ep == held_in else None)
    (out / "report.json").write_text(
        json.dumps({"episodes": episodes, "summary": {"robot_violations": sum(violations)}})
    )
    return out


def test_pools_runs_per_episode_and_counts_hold_ups_and_violations(tmp_path: Path) -> None:
    runs = [
        read_run(_run(tmp_path, "a", [2.9, 1.0], [0, 0])),
        read_run(_run(tmp_path, "b", [3.1, 1.2], [0, 0])),
        read_run(_run(tmp_path, "c", [2.8, 0.8], [2, 0], held_in="ep1")),
    ]
    assert [r.all_succeeded for r in runs] == [True, False, True]
    assert runs[2].hold_ups_ms and runs[2].hold_ups_ms[0] == pytest.approx(320.0, abs=1.0)
    # the held command (the 50th, written at 500.5 s) 1.5 s after the last process start (499.0 s)
    assert runs[2].hold_ups_after_start_s == pytest.approx((1.5,), abs=1e-6)
    pooled = pool(runs)
    assert pooled["runs"] == 3
    assert pooled["all_succeeded"]["runs"] == 2
    assert pooled["all_succeeded_0_violations"]["runs"] == 1  # run c succeeded with 2 violations
    assert pooled["episodes"]["ep1"]["successes"] == 2
    assert pooled["episodes"]["ep1"]["final_distance_cm"] == pytest.approx(
        {"min": 2.8, "median": 2.9, "max": 3.1}
    )
    assert pooled["episodes"]["ep2"]["successes"] == 3
    assert pooled["violations"] == {"total": 2, "runs_with_any": 1}
    assert pooled["hold_ups"]["total"] == 1 and pooled["hold_ups"]["runs_with_any"] == 1
    assert pooled["hold_ups"]["after_last_process_start_s"] == pytest.approx([1.5], abs=1e-6)
    with pytest.raises(ValueError, match="no demo runs"):
        pool([])


def test_the_command_line_names_runs_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = _run(tmp_path, "done", [1.0], [0])
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    assert main([str(done), str(stopped), "--json", str(tmp_path / "pooled.json")]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 (100 %" in out and f"left out: {stopped}" in out
    written = json.loads((tmp_path / "pooled.json").read_text())
    assert written["skipped"] == [str(stopped)] and written["runs_detail"][0]["success"] == [True]
    assert main([str(stopped)]) == 2
