"""make demo DEMO_ARGS="--latency orin": the options reach the node and report.json names them."""

from __future__ import annotations

from pathlib import Path

from apt_policy.demo.__main__ import _parser
from apt_policy.demo.run import DemoOptions, chunk_execution_context, default_params_file, node_overrides


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
