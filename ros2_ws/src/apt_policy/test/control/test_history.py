"""HistoryBuffer: one step per policy dt from a faster command stream, oldest first, reset = episode start."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from apt_policy.control.history import HistoryBuffer


def _step(i: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(2, float(i), np.float32), np.full(3, 100.0 + i, np.float32)


def test_keeps_one_step_per_dt_from_a_100hz_stream():
    buf = HistoryBuffer(3, 2, 3, dt=0.1)
    kept = [buf.record(i * 0.01, *_step(i)) for i in range(45)]  # 100 Hz for 0.45 s
    assert [i for i, k in enumerate(kept) if k] == [0, 10, 20, 30, 40]
    snap = buf.snapshot()
    assert snap.valid.tolist() == [True, True, True]
    assert snap.states[:, 0].tolist() == [20.0, 30.0, 40.0]  # oldest first
    assert snap.actions[:, 0].tolist() == [120.0, 130.0, 140.0]


def test_episode_start_and_reset_are_invalid_at_the_front():
    buf = HistoryBuffer(4, 2, 3, dt=0.1)
    assert buf.snapshot().valid.tolist() == [False] * 4
    buf.record(0.0, *_step(1))
    buf.record(0.1, *_step(2))
    snap = buf.snapshot()
    assert snap.valid.tolist() == [False, False, True, True]
    assert snap.states[:2].tolist() == [[0, 0], [0, 0]] and snap.states[3, 0] == 2.0
    buf.reset()
    assert not buf.snapshot().valid.any()
    assert buf.record(0.12, *_step(3))  # after a reset the first command is kept at once
    assert buf.snapshot().valid.tolist() == [False, False, False, True]


def test_jitter_and_refusals():
    buf = HistoryBuffer(2, 2, 3, dt=0.1)
    assert buf.record(0.0, *_step(0))
    assert not buf.record(0.09, *_step(9))  # a tick before the step is due
    assert buf.record(0.097, *_step(1))  # 3% early: loop jitter, still this step
    assert not buf.record(0.12, *_step(2))
    assert buf.record(0.2, *_step(3))  # the grid stays at 0.1 s steps (not 0.097 + 0.1)
    assert buf.record(0.55, *_step(4))  # after a gap the grid restarts at the next command
    with pytest.raises(ValueError, match="non-finite"):
        buf.record(1.0, np.array([np.nan, 0.0]), np.zeros(3))
    with pytest.raises(ValueError, match="expected"):
        buf.record(1.0, np.zeros(3), np.zeros(3))
    assert buf.snapshot().states[:, 0].tolist() == [3.0, 4.0]  # refused steps left no trace
    with pytest.raises(ValueError):
        HistoryBuffer(2, 2, 3, dt=0.0)


def test_snapshot_is_a_copy_and_threads_see_whole_steps():
    buf = HistoryBuffer(3, 2, 3, dt=0.001)
    snap = buf.snapshot()
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            buf.record(i * 0.001, *_step(i))
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(200):
            s = buf.snapshot()
            ok = s.valid
            # every kept step pairs its own state and command
            np.testing.assert_array_equal(s.actions[ok, 0] - 100.0, s.states[ok, 0])
    finally:
        stop.set()
        th.join()
    assert not snap.valid.any()


def test_executed_step_reads_the_sent_command_in_the_policy_units():
    from apt_policy.control.history import executed_step

    joints = np.array([0.1, 0.2])
    positions = np.array([0.3, 0.1])
    state, action = executed_step(joints, 0.04, positions, None, 0.02, 3, 3)
    assert state.tolist() == [0.1, 0.2, 0.04] and action.tolist() == [0.3, 0.1, 0.02]
    _, action = executed_step(joints, np.array([0.04]), positions, None, None, 3, 3)
    assert action[2] == 0.04  # no gripper command: the measured width (as ObservationBuffer keeps it)
    _, delta = executed_step(joints, None, positions, None, None, 2, 2, arm="delta", arm_scale=0.5)
    np.testing.assert_allclose(delta, [0.4, -0.2])
    _, vel = executed_step(joints, None, positions, np.array([1.0, -1.0]), None, 2, 2, "velocity", 2.0)
    assert vel.tolist() == [0.5, -0.5]
    assert executed_step(joints, None, positions, None, None, 2, 2, arm="velocity") is None
    assert executed_step(joints, None, positions, None, None, 3, 2) is None  # no gripper width to give
    assert executed_step(joints, 0.04, positions, None, None, 4, 2) is None  # dims do not fit


def test_on_command_keeps_sent_commands_and_restarts_outside_running():
    """The one rule the node and the evaluator share: sent while RUNNING -> kept (one per dt), not sent ->
    skipped, any other state (or no joints / no command) -> the history starts again."""
    h = HistoryBuffer(3, 8, 8, 0.1)
    q = np.linspace(0.0, 0.6, 7)
    for i in range(3):
        h.on_command(i * 0.1, True, True, q + i, 0.04, q + i + 0.5, None, 0.08)
    snap = h.snapshot()
    assert snap.valid.all()
    np.testing.assert_allclose(snap.actions[:, :7], np.stack([q + i + 0.5 for i in range(3)]), rtol=1e-6)
    np.testing.assert_allclose(snap.states[:, 7], 0.04)  # measured width in the state
    np.testing.assert_allclose(snap.actions[:, 7], 0.08)  # commanded width in the action
    h.on_command(0.3, True, False, q, 0.04, q, None, 0.08)  # not sent: nothing kept, nothing forgotten
    assert h.snapshot().valid.all() and np.allclose(h.snapshot().actions[-1, :7], q + 2.5)
    h.on_command(0.4, False, True, q, 0.04, q, None, 0.08)  # a hold: an episode start for the policy
    assert not h.snapshot().valid.any()
    h.on_command(0.5, True, True, q, 0.04, q, None, 0.08)
    h.on_command(0.6, True, True, q, 0.04, None, None, 0.08)  # no command (state lost): restart
    assert not h.snapshot().valid.any()
