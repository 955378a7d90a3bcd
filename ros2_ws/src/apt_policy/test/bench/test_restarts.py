"""The hold-up count of ``bench.restarts`` on arrival logs written the way fake_franka writes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from apt_policy.bench.restarts import hold_ups, read_arrivals, recorder_joins, run, violations_in_log
from apt_policy.bench.stream import TRAJECTORY_TOPIC


def _stream(n: int = 300, held: tuple[int, ...] = (), hold_s: float = 0.33) -> tuple[np.ndarray, np.ndarray]:
    """100 Hz writes delivered in 0.5 ms; each index in ``held`` is delivered ``hold_s`` late and the
    commands written meanwhile arrive together with it (reliable, in order)."""
    sent = 1000.0 + 0.01 * np.arange(n)
    received = sent + 0.0005
    for k in held:
        release = sent[k] + hold_s
        queued = (np.arange(n) >= k) & (sent < release)
        received[queued] = release + 1e-5 * np.arange(int(queued.sum()))
    return sent, received


def test_each_hold_up_is_counted_once_at_its_first_command() -> None:
    sent, received = _stream(held=(40, 200))
    found = hold_ups(sent, received, 0.15)
    assert [k for k, _ in found] == [40, 200]
    assert all(0.32 < d < 0.34 for _, d in found)


def test_a_shorter_delay_than_the_threshold_is_not_a_hold_up() -> None:
    sent, received = _stream(held=(40,), hold_s=0.1)
    assert hold_ups(sent, received, 0.15) == []
    assert hold_ups(*_stream(), 0.15) == []


def test_reads_fake_franka_arrival_logs_and_counts_logged_violations(tmp_path) -> None:
    sent, received = _stream(held=(10,))
    log = {"clock": "monotonic", "sent": {TRAJECTORY_TOPIC: sent.tolist()}}
    log["received"] = {TRAJECTORY_TOPIC: received.tolist()}
    (tmp_path / "a.json").write_text(json.dumps(log))
    s, r = read_arrivals(tmp_path / "a.json")
    assert np.array_equal(s, sent) and np.array_equal(r, received)
    franka = tmp_path / "franka.log"
    franka.write_text(
        "[WARN] [1.0] [fake_franka]: contract violation #1 [too_fast] x\n"
        "[INFO] [2.0] [fake_franka]: summary\n"
        "[WARN] [3.0] [fake_franka]: contract violation #1 [ends_in_past] y\n"
    )
    assert violations_in_log(franka) == 2
    assert violations_in_log(tmp_path / "missing.log") == 0


def test_an_unknown_mode_is_refused_before_anything_starts(tmp_path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        run(tmp_path, "sometimes", 1.0, 8.0, tmp_path / "out", realtime=False)
    assert not (tmp_path / "out").exists()


def test_recorder_joins_say_when_each_recorder_found_the_arm(tmp_path) -> None:
    """``--mode recorder``: every recorder start in the shared log, and how long it took to record the
    arm's joint states (None for one that never did)."""
    log = tmp_path / "recorder.log"
    log.write_text(
        "[INFO] [100.0] [apt_recorder]: recording to /b/bag: 13 topics, cameras [] at 10 Hz q80\n"
        "[INFO] [100.3] [apt_recorder]: recording /franka/joint_states (sensor_msgs/msg/JointState)\n"
        "[INFO] [110.0] [apt_recorder]: recording to /b/bag_1: 13 topics, cameras [] at 10 Hz q80\n"
        "[INFO] [110.1] [apt_recorder]: recording /apt_policy/status (apt_msgs/msg/PolicyStatus)\n"
        "[INFO] [112.8] [apt_recorder]: recording /franka/joint_states (sensor_msgs/msg/JointState)\n"
        "[WARN] [113.0] [apt_recorder]: recording /franka/joint_states is slow\n"
        "[INFO] [120.0] [apt_recorder]: recording to /b/bag_2: 13 topics, cameras [] at 10 Hz q80\n"
    )
    joins = recorder_joins(log)
    assert [t for t, _ in joins] == [100.0, 110.0, 120.0]
    assert joins[0][1] == pytest.approx(0.3) and joins[1][1] == pytest.approx(2.8) and joins[2][1] is None
    assert recorder_joins(tmp_path / "missing.log") == []
