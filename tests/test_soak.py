"""A two-minute soak of the node, fake_franka and fake_camera (one hour: `python -m apt_policy.bench.soak`).

Instruction switches every 10 s and a 3 s camera dropout every 40 s over real DDS, with the tiny exported
model, the node streaming stamped trajectories as in sim.yaml (stamp 0 would add a 10 ms bound on DDS
delivery that the node cannot check; see apt_policy.bench.soak). Bounds (apt_policy.bench.soak.problems): RSS
growth <= max(30 MB, 5 %) from the 20 s sample, file descriptors +2, threads +0, at most one image arena file
in /dev/shm while running and none afterwards, no contract violation at fake_franka, every process exiting
cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_policy.bench.soak import format_report, problems, run_soak

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(420)]


def test_two_minute_soak_stays_within_its_bounds(ros_env, tiny_export: Path, tmp_path: Path) -> None:
    report = run_soak(
        tiny_export,
        duration_s=120.0,
        workdir=tmp_path,
        switch_every=10.0,
        dropout_every=40.0,
        dropout_s=3.0,
        sample_every=5.0,
        domain=int(ros_env["ROS_DOMAIN_ID"]),
    )
    assert report.switches >= 10 and report.dropouts >= 2
    found = problems(report, warmup_s=20.0)
    assert not found, f"{found}\n{format_report(report, 20.0)}\nlogs: {tmp_path}"
