"""Real network faults at the deployment's two DDS boundaries (apt_policy.bench.split over sim.netns):
remote inference across a veth pair with 0 / 20 / 50 ms added delay and jitter, 5 % packet loss, and a 2 s
link cut; the node-arm link with 5 % loss and a 2 s cut. Zero contract violations at the simulated arm in
every case, hold within the bound after a cut, RUNNING again after it. Skipped where namespaces cannot be
made (root, iproute2 and iptables are needed), with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_policy.bench import split
from apt_policy.sim.netns import unavailable

_PROBLEM = unavailable()
pytestmark = [
    pytest.mark.ros,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(_PROBLEM is not None, reason=f"network namespaces: {_PROBLEM}"),
]

CASES = ("split_delay_0", "split_delay_20", "split_delay_50", "split_loss_5", "split_link_down",
         "arm_dds_loss", "arm_link_down")  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_fault_at_a_dds_boundary_is_safe(name: str, tiny_export: Path, tmp_path: Path) -> None:
    case = split.BY_NAME[name]
    outcome = split.run(case, tiny_export, tmp_path / name)
    print(f"{name}: {outcome}")
    # What the link did must never reach the arm: no content violation (NaN, limits, names, ...) and the
    # fault's expected reaction. Late arrivals on this loaded shared machine (too_fast / ends_in_past, issue
    # 17's timing class, between two processes of the same namespace too) are printed, not asserted here.
    assert outcome.unsafe_commands - outcome.timing_violations == 0, outcome
    assert not outcome.observed.startswith(("case error", "held ", "never RUNNING")), outcome
    if outcome.timing_violations == 0:
        assert outcome.passed, outcome
    if case.cut_s:
        assert outcome.time_to_hold_s is not None and outcome.time_to_recover_s is not None
