"""The action-prior family's fp16 export and the precision study (apt_policy.bench.precision): fp16 graphs
with float32 boundaries that stay close to fp32, and a study whose fp32 variants reproduce the reference
while the reduced-precision ones measurably differ from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from apt_export.cli import EXIT_OK, main  # noqa: E402
from apt_export.verify import verify  # noqa: E402
from apt_policy.bench import precision  # noqa: E402
from apt_policy.runtime.manifest import load_manifest  # noqa: E402

from .test_action_prior_export import _bundle  # noqa: E402


@pytest.fixture(scope="module")
def prior_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("prior_precision")
    bundle = _bundle(root, 2)
    fp32, fp16 = root / "fp32", root / "fp16"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(fp32), "--optimize", "none"]) == EXIT_OK
    assert main(["onnx", "--bundle", str(bundle), "--out", str(fp16), "--precision", "fp16"]) == EXIT_OK
    return bundle, fp32, fp16


def test_action_prior_fp16_export_keeps_float32_boundaries_and_stays_close(prior_exports):
    bundle, _, fp16 = prior_exports
    manifest = load_manifest(fp16)
    assert manifest.precision == "fp16"
    assert set(manifest.graphs) == {"prefix", "history", "denoiser", "sampler"}
    for graph in manifest.graphs.values():  # every boundary float32 (int64 ids aside)
        assert {t.dtype for t in (*graph.inputs, *graph.outputs)} <= {"float32", "int64"}, graph
    for name in ("history", "sampler"):
        weights = [i for i in onnx.load(str(fp16 / f"{name}.onnx")).graph.initializer if len(i.dims) == 2]
        assert weights and any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights), name
    report = verify(bundle, fp16, cases=2, progress=False)
    by_name = {c.name: c for c in report.comparisons}
    for name in ("history.history_token", "predict.actions", "predict.actions[prefix]"):
        assert by_name[name].cosine >= 0.999 and by_name[name].max_abs <= 2e-2, by_name[name]
    assert by_name["predict.actions"].max_abs > 0  # it really ran in reduced precision
    assert by_name["sampler.prefix_rows"].max_abs <= 1e-6  # RTC: committed rows come back exactly


def test_precision_study_fp32_variants_match_the_reference(prior_exports, tmp_path):
    bundle, fp32, fp16 = prior_exports
    out = tmp_path / "precision.json"
    argv = [
        "--bundle", str(bundle), "--dtypes", "fp32", "bf16", "--onnx", str(fp32), str(fp16),
        "--per-instruction", "1", "--cases", "6", "--max-steps", "8", "--json", str(out), "--no-progress",
    ]  # fmt: skip
    assert precision.main(argv) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [
        "reference: torch cpu fp32",
        "torch cpu fp32",
        "torch cpu bf16",
        "onnxruntime fp32",
        "onnxruntime fp16",
    ]
    assert rows["torch cpu fp32"]["deviation"]["max_abs"] == 0.0  # same device, same precision, same inputs
    assert rows["onnxruntime fp32"]["deviation"]["max_abs"] <= 1e-4
    assert rows["torch cpu bf16"]["deviation"]["max_abs"] > 1e-4  # bf16 keeps 8 bits of mantissa
    fp16, bf16 = (rows[f"{v}"]["deviation"]["max_abs"] for v in ("onnxruntime fp16", "torch cpu bf16"))
    assert 0 < fp16 < bf16  # fp16 keeps 11 bits
    for row in rows.values():
        assert row["error"] is None
        assert row["episodes"] == {"train": 18, "held_out": 3}  # 6 phrasings x 3 colours; 1 x 3
        assert np.isfinite(row["predict_ms"]) and row["predict_ms"] > 0


def test_precision_study_reports_a_variant_that_cannot_load(prior_exports, tmp_path, capsys):
    bundle, _, _ = prior_exports
    argv = ["--bundle", str(bundle), "--dtypes", "fp32", "--onnx", str(tmp_path), "--per-instruction", "1",
            "--cases", "1", "--max-steps", "2", "--no-progress"]  # fmt: skip
    assert precision.main(argv) == 1
    table = capsys.readouterr().out
    assert "| torch cpu fp32 | " in table and "| torch cpu fp32 | error" not in table
    assert f"| onnxruntime {tmp_path.name} | error:" in table
