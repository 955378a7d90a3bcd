"""apt-bench reports ordered percentiles for both backends and their ratio (figures, not timing goals)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt_export.bench import main, percentiles


def test_percentiles_are_milliseconds_and_ordered():
    p = percentiles([0.001] * 98 + [0.010, 0.020])
    assert p["p50"] == 1.0 and p["p50"] <= p["p90"] <= p["p99"] <= 20.0


def test_bench_torch_vs_onnxruntime_writes_both_backends(
    exported_pi: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    bundle, out = exported_pi
    report = tmp_path / "bench.json"
    args = ["--model", str(bundle), "--backend", "torch", "--vs", "onnxruntime", "--vs-model", str(out)]
    assert main([*args, "--iters", "3", "--warmup", "1", "--threads", "1", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "total p50 ratio torch/onnxruntime" in printed
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"torch", "onnxruntime"}
    for stages in results.values():
        assert set(stages) == {"preprocess", "inference", "total"}
        for p in stages.values():
            assert 0 < p["p50"] <= p["p90"] <= p["p99"]
        assert stages["total"]["p50"] >= stages["inference"]["p50"] * 0.5


def test_bench_rejects_same_backend_twice(exported_pi: tuple[Path, Path], capsys: pytest.CaptureFixture):
    _, out = exported_pi
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(out), "--backend", "onnxruntime", "--vs", "onnxruntime", "--iters", "1"])
    assert exc.value.code == 2
    assert "must differ" in capsys.readouterr().err
