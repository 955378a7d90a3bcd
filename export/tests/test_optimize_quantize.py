"""Saved ORT-optimised graphs and int8 exports: listed and hashed in the manifest, loaded, close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from apt_export.cli import EXIT_OK, main
from apt_export.optimize import op_counts
from apt_export.quantize import gemm_to_matmul
from apt_export.verify import verify
from apt_policy.runtime import IntegrityError, load_policy
from apt_policy.runtime.manifest import load_manifest
from onnx import TensorProto, helper, numpy_helper


def _predict(policy, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for c in policy.info.cameras}
    state = rng.normal(0.3, 0.5, len(policy.info.state_names)).astype(np.float32)
    noise = rng.standard_normal((policy.info.horizon, policy.info.action_dim)).astype(np.float32)
    return policy.predict(images, state, "reach the red cube", noise)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_optimised_graphs_are_hashed_used_and_equal_the_plain_graphs(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    manifest = load_manifest(out)
    for name, graph in manifest.graphs.items():
        opt = graph.optimized
        assert opt is not None and opt.file == f"{name}.opt.onnx" and opt.level == "extended"
        assert opt.onnxruntime_version == ort.__version__ and opt.file in manifest.files
    ops = op_counts(out / "sampler.opt.onnx")
    assert any(op.startswith("com.microsoft::") for op in ops), ops  # ORT fusions were applied and saved
    optimised, plain = load_policy(out), load_policy(out, use_optimized=False)
    assert optimised.graph_file("prefix").name == "prefix.opt.onnx"
    assert plain.graph_file("prefix").name == "prefix.onnx"
    np.testing.assert_allclose(_predict(optimised), _predict(plain), atol=1e-5)


def test_a_tampered_optimised_graph_is_refused(exported_pi: tuple[Path, Path], tmp_path: Path):
    import shutil

    _, out = exported_pi
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "sampler.opt.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError, match=r"sampler\.opt\.onnx"):
        load_policy(copy)


def test_gemm_rewritten_as_matmul_add_computes_the_same():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="g")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=(3, 4)).astype(np.float32)

    def run() -> np.ndarray:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    before = run()
    assert gemm_to_matmul(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    np.testing.assert_allclose(run(), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("external_mb", ["1024", "0"])
def test_int8_export_quantises_matmuls_and_stays_close_to_fp32(
    exported_pi: tuple[Path, Path], tmp_path: Path, external_mb: str
):
    bundle, fp32 = exported_pi
    out = tmp_path / "int8"
    args = ["onnx", "--bundle", str(bundle), "--out", str(out), "--precision", "int8"]
    assert main([*args, "--external-data-mb", external_mb]) == EXIT_OK
    manifest = load_manifest(out)  # every file, int8 and optimised, hash-checked
    assert manifest.precision == "int8"
    for graph in manifest.graphs.values():
        assert set(graph.files) <= set(manifest.files)
        assert bool(graph.external_data) == (external_mb == "0")
    ops = op_counts(out / "prefix.onnx")
    assert ops.get("MatMulInteger", 0) > 0 and ops.get("Gemm", 0) == 0, ops
    # the graphs' interfaces are those of fp32: the runtime feeds them the same way
    reference = load_manifest(fp32)
    assert {n: (g.inputs, g.outputs) for n, g in manifest.graphs.items()} == {
        n: (g.inputs, g.outputs) for n, g in reference.graphs.items()
    }
    ours, ref = _predict(load_policy(out)), _predict(load_policy(fp32))
    assert _cosine(ours, ref) >= 0.999 and np.abs(ours - ref).max() <= 0.1  # measured: 0.99995, 0.023
    assert np.abs(ours - ref).max() > 0  # it really ran quantised


def test_int8_parity_is_reported_not_gated(exported_pi: tuple[Path, Path], tmp_path: Path):
    bundle, _ = exported_pi
    out = tmp_path / "int8"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(out), "--precision", "int8"]) == EXIT_OK
    report = verify(bundle, out, cases=2, progress=False)
    assert report.precision == "int8" and not report.gated and report.passed
    e2e = next(c for c in report.comparisons if c.name == "end_to_end.actions")
    assert e2e.cosine >= 0.99 and e2e.max_abs > 0, e2e


def test_quantize_subcommand_derives_the_same_int8_export(exported_pi: tuple[Path, Path], tmp_path: Path):
    _, fp32 = exported_pi
    out = tmp_path / "derived"
    assert main(["quantize", "--onnx", str(fp32), "--out", str(out)]) == EXIT_OK
    manifest = load_manifest(out)
    assert manifest.precision == "int8" and all(g.optimized for g in manifest.graphs.values())
    ours, ref = _predict(load_policy(out)), _predict(load_policy(fp32))
    assert _cosine(ours, ref) >= 0.999 and 0 < np.abs(ours - ref).max() <= 0.1
    assert main(["quantize", "--onnx", str(out), "--out", str(tmp_path / "again")]) == 1  # int8 of int8: no
