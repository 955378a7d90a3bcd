"""Receiver-side stream figures of the streaming benchmark (pure function)."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.bench.stream import arrival_stats, format_table


def test_perfect_stream() -> None:
    s = arrival_stats(np.arange(101) * 0.01, 0.01)
    assert s["commands"] == 101 and s["achieved_hz"] == pytest.approx(100.0)
    assert s["jitter_max_ms"] == pytest.approx(0.0, abs=1e-9) and s["missed_ticks"] == 0 and s["gaps"] == 0


def test_late_then_early_is_jitter_not_a_miss() -> None:
    t = np.arange(11) * 0.01
    t[5] += 0.008  # 8 ms late, the next one on time
    s = arrival_stats(t, 0.01)
    assert s["missed_ticks"] == 0 and s["gaps"] == 1
    assert s["jitter_max_ms"] == pytest.approx(8.0)


def test_dropped_commands_are_missed() -> None:
    t = np.delete(np.arange(20) * 0.01, [4, 9, 10])
    s = arrival_stats(t, 0.01)
    assert s["missed_ticks"] == 3 and s["gaps"] == 2
    assert s["jitter_max_ms"] == pytest.approx(20.0)


def test_table_has_a_row_per_rate() -> None:
    from apt_policy.bench.stream import StreamResult

    r = StreamResult(100.0, 6000, 99.9, 0.1, 0.5, 2.0, 0, 0, 0.3, 0.4, 12.0, 300, 7)
    table = format_table([r, r])
    assert table.count("\n| 100 |") == 2
    with pytest.raises(ValueError):
        arrival_stats(np.array([1.0]), 0.01)
