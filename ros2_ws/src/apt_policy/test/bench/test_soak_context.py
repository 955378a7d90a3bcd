"""The soak's account of a contract violation, read from the processes' logs and fake_franka's arrival log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from apt_policy.bench.soak import TRAJECTORY_TOPIC, Sample, SoakReport, format_report, violation_context

T0 = 1_796_314_500.0  # system time (s)


def _write_logs(workdir: Path, late_write_ms: float, dds_ms: float) -> float:
    """100 Hz commands for 3 s; the one at 2.0 s written ``late_write_ms`` after its stamp and held
    ``dds_ms`` in DDS; a violation logged when it is handled. Returns the violation's time."""
    stamps = T0 + 0.01 * np.arange(300)
    sent = stamps + 0.0002
    received = sent + 0.0003
    k = 200
    sent[k] = stamps[k] + late_write_ms * 1e-3
    received[k] = sent[k] + dds_ms * 1e-3
    handled = received + 0.0001
    arrivals = {"clock": "monotonic"}
    for key, values in (("stamps", stamps), ("sent", sent), ("received", received), ("handled", handled)):
        arrivals[key] = {TRAJECTORY_TOPIC: values.tolist()}
    (workdir / "arrivals.json").write_text(json.dumps(arrivals))
    t = float(handled[k]) + 1e-5
    (workdir / "franka.log").write_text(
        f"[INFO] [{T0:.9f}] [fake_franka]: simulated fr3\n"
        f"[WARN] [{t:.9f}] [fake_franka]: contract violation #1 [too_fast] the desired position jumps by "
        "0.0048 rad on arrival\n"
    )
    (workdir / "node.log").write_text(
        f"[INFO] [{T0:.9f}] [apt_policy]: streaming\n"
        f"[WARN] [{t - 0.3:.9f}] [apt_policy]: command not sent: 12.4 ms late at send time (limit 10.0 ms)\n"
        f"[WARN] [{t - 1.8:.9f}] [apt_policy]: too early to be near the violation\n"
    )
    return t


def test_a_late_delivery_is_named_with_its_figures(tmp_path: Path) -> None:
    _write_logs(tmp_path, late_write_ms=0.5, dds_ms=48.0)
    lines = violation_context(tmp_path)
    assert (
        lines[0]
        == "fake_franka: contract violation #1 [too_fast] the desired position jumps by 0.0048 rad on arrival"
    )
    figures = lines[1]
    assert "in DDS max 48.0 ms" in figures and "written after their stamp max 0.5 ms" in figures
    assert "the last one before it: written 0.5 ms after its stamp, 48.0 ms in DDS" in figures
    assert "largest gap between receptions 58.0 ms" in figures  # the late one after its predecessor
    node = [line for line in lines if line.startswith("  node")]
    assert len(node) == 1 and "-0.300 s: command not sent: 12.4 ms late" in node[0]


def test_a_late_write_is_told_from_a_late_delivery(tmp_path: Path) -> None:
    _write_logs(tmp_path, late_write_ms=30.0, dds_ms=0.3)
    figures = violation_context(tmp_path)[1]
    assert "the last one before it: written 30.0 ms after its stamp, 0.3 ms in DDS" in figures


def test_no_violation_no_context_and_a_missing_arrival_log_is_said(tmp_path: Path) -> None:
    (tmp_path / "franka.log").write_text(f"[INFO] [{T0:.9f}] [fake_franka]: simulated fr3\n")
    assert violation_context(tmp_path) == []
    _write_logs(tmp_path, 0.5, 0.3)
    (tmp_path / "arrivals.json").unlink()
    lines = violation_context(tmp_path)
    assert lines[1] == "  (no arrival log of the trajectory commands)"
    report = SoakReport(duration_s=120, rate_hz=100, violation_context=lines)
    report.samples = [Sample(0, 1, 1, 1, 0, "1", 0), Sample(120, 1, 1, 1, 0, "1", 0)]
    assert "around the contract violations:\nfake_franka: contract violation #1" in format_report(report, 20)
