"""make demo DEMO_ARGS="--latency orin": the options reach the node and report.json names them."""

from __future__ import annotations

from pathlib import Path

from apt_policy.demo.__main__ import _parser
from apt_policy.demo.run import (
    DemoOptions,
    chunk_execution_context,
    default_params_file,
    node_overrides,
    scheduling_context,
)
from apt_policy.ros.params import parameters_from_yaml


def test_latency_and_chunk_execution_become_node_parameters() -> None:
    args = _parser().parse_args(["--latency", "orin", "--chunk-execution", "rtc"])
    opts = DemoOptions(latency=args.latency, chunk_execution=args.chunk_execution)
    assert node_overrides(opts) == ["-p", "simulated_latency:=orin", "-p", "chunk_execution:=rtc"]
    assert node_overrides(DemoOptions()) == []


def test_report_context_names_the_profile_and_the_strategy_the_node_used(tmp_path: Path) -> None:
    (tmp_path / "ep1_policy_node.log").write_text(
        "[INFO] ... output joint_trajectory at 100.0 Hz; chunk execution crossfade\n"
    )
    ctx = chunk_execution_context(DemoOptions(latency="orin"), default_params_file(), tmp_path)
    assert ctx["latency_profile"]["name"] == "orin" and "180 ms" in ctx["latency_profile"]["description"]
    assert "Orin" in ctx["latency_profile"]["source"]
    assert ctx["chunk_execution"] == {"requested": "auto", "used": "crossfade"}
    plain = chunk_execution_context(DemoOptions(), default_params_file(), tmp_path)
    assert plain["latency_profile"]["name"] == "none"


def test_report_says_how_the_stream_and_the_simulated_controller_were_scheduled(tmp_path: Path) -> None:
    node = "[INFO] [1.0] [apt_policy]: stream thread runs SCHED_FIFO priority 50, 2 other threads 49\n"
    refused = "[WARN] [1.0] [apt_policy]: could not set SCHED_FIFO priority 50 ([Errno 1] not permitted)\n"
    arm = "[INFO] [1.0] [fake_franka]: 20 threads run SCHED_FIFO priority 60 (command reception 61)\n"
    (tmp_path / "ep1_policy_node.log").write_text(node)
    (tmp_path / "ep2_policy_node.log").write_text(refused)
    (tmp_path / "ep1_fake_franka.log").write_text(arm)
    (tmp_path / "ep2_fake_franka.log").write_text(arm)
    ctx = scheduling_context(tmp_path)
    assert ctx["fake_franka"] == "SCHED_FIFO 60"
    assert ctx["policy_node"] == "SCHED_FIFO 50 in 1 of 2, normal (SCHED_FIFO 50 refused) in 1 of 2"
    (tmp_path / "ep2_policy_node.log").write_text("nothing about scheduling\n")
    assert scheduling_context(tmp_path)["policy_node"] == "SCHED_FIFO 50 in 1 of 2, normal in 1 of 2"


def test_demo_ranks_the_simulated_controller_above_the_node_stream() -> None:
    from apt_policy.control.realtime import CONTROLLER_PRIORITY, STREAM_PRIORITY

    assert int(parameters_from_yaml(default_params_file())["realtime_priority"]) == STREAM_PRIORITY
    assert 0 < STREAM_PRIORITY < CONTROLLER_PRIORITY <= 98  # fake_franka's command reception runs one above
