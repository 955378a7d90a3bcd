"""make bench's chunk-execution section: the table and the plot from the simulated-clock evaluator."""

from __future__ import annotations

import json
from pathlib import Path

from apt_policy.bench.report import _chunking_markdown, bench_chunking
from apt_policy.sim.closed_loop import CellResult, plot_table


def test_chunking_section_has_every_strategy_row_and_a_plot(tmp_path: Path) -> None:
    chunking = bench_chunking(None, episodes=1, latencies=["orin"])
    json.dumps(chunking, default=str)  # goes into results.json
    labels = [c["label"] for c in chunking["scripted"]]
    assert labels == ["none", "crossfade", "ensemble", "rtc (training-free)", "rtc (trained)"]
    assert all(c["violations"] == 0 for c in chunking["scripted"])
    text = "\n".join(_chunking_markdown(chunking))
    assert "| rtc (trained) | orin | 1 |" in text
    png = plot_table([CellResult(**c) for c in chunking["scripted"]], tmp_path / "chunking.png")
    assert png.stat().st_size > 1000
