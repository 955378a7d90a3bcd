"""apt-export onnx + verify on tiny "pi" and "groot" bundles: graphs, manifest, parity, failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from apt_export.cli import EXIT_FAILED, EXIT_MISSING_DEPENDENCY, EXIT_OK, main
from apt_export.verify import FP32_MAX_ABS, verify
from apt_policy.runtime.manifest import GRAPH_NAMES, load_manifest, sha256_file

from .conftest import make_bundle


def test_export_writes_checked_graphs_and_a_complete_manifest(exported: tuple[Path, Path]):
    bundle, out = exported
    manifest = load_manifest(out)  # verifies every sha256
    assert set(manifest.graphs) == set(GRAPH_NAMES)
    assert manifest.precision == "fp32" and manifest.opset == 18
    config = json.loads((bundle / "config.json").read_text())
    assert manifest.config["horizon"] == config["horizon"] and manifest.steps == config["sampling_steps"]
    assert manifest.normalization == json.loads((bundle / "norm_stats.json").read_text())
    assert manifest.files["tokenizer.json"] == sha256_file(bundle / "tokenizer.json")
    assert {"torch", "onnx", "apt_policy"} <= set(manifest.exporter["versions"])
    for name, graph in manifest.graphs.items():
        model = onnx.load(str(out / graph.file))
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == list(graph.input_names), name
        assert not graph.external_data  # tiny model: one file per graph
    sampler = manifest.graphs["sampler"]
    horizon, action_dim = config["horizon"], len(config["action_names"])
    assert sampler.input_names[-5:] == ("state", "noise", "prefix", "prefix_len", "rtc_trained")
    rtc_specs = {t.name: (t.shape, t.dtype) for t in sampler.inputs[-3:]}
    assert rtc_specs == {
        "prefix": ((1, horizon, action_dim), "float32"),
        "prefix_len": ((1,), "int64"),
        "rtc_trained": ((1,), "float32"),
    }
    assert manifest.rtc_inputs
    denoiser = manifest.graphs["denoiser"]
    assert denoiser.input_names[-4:] == ("state", "x_t", "t", "clean_mask")
    assert (denoiser.inputs[-1].shape, denoiser.inputs[-1].dtype) == ((1, horizon), "float32")
    assert sampler.outputs[0].shape == (1, horizon, action_dim)
    prefix_out = {t.name: t for t in manifest.graphs["prefix"].outputs}
    assert all(prefix_out[t.name] == t for t in sampler.inputs if t.name in prefix_out)


def test_verify_passes_fp32_and_reports_every_graph(exported: tuple[Path, Path], tmp_path: Path):
    bundle, out = exported
    report = verify(bundle, out, cases=2, progress=False)
    assert report.passed and report.gated
    names = {c.name for c in report.comparisons}
    assert {"denoiser.velocity", "sampler.actions", "end_to_end.actions", "predict.actions"} <= names
    assert any(n.startswith("prefix.") for n in names)
    rtc = {
        "sampler.actions[rtc training-free]",
        "sampler.actions[rtc trained]",
        "denoiser.velocity[clean]",
        "predict.actions[prefix]",
    }
    assert rtc <= names  # real-time chunking cases, gated like the rest
    by_name = {c.name: c for c in report.comparisons}
    assert by_name["sampler.prefix_rows"].max_abs == 0.0  # the committed rows come back exactly
    assert all(c.max_abs <= FP32_MAX_ABS and c.cosine > 0.9999 for c in report.comparisons)
    report_path = tmp_path / "parity.json"
    args = ["verify", "--bundle", str(bundle), "--onnx", str(out), "--cases", "1", "--json", str(report_path)]
    assert main(args) == EXIT_OK
    assert json.loads(report_path.read_text())["passed"] is True


def test_verify_fails_against_other_weights(exported: tuple[Path, Path], tmp_path: Path):
    bundle, out = exported
    architecture = json.loads((bundle / "config.json").read_text())["architecture"]
    other = make_bundle(tmp_path, architecture, seed=1)  # same shapes, different weights
    report = tmp_path / "r.json"
    args = ["verify", "--bundle", str(other), "--onnx", str(out), "--cases", "1", "--json", str(report)]
    assert main(args) == EXIT_FAILED


def test_export_refuses_to_overwrite_and_reports_bad_bundles(
    exported_pi: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    bundle, out = exported_pi
    assert main(["onnx", "--bundle", str(bundle), "--out", str(out)]) == EXIT_FAILED
    assert "not empty" in capsys.readouterr().err
    assert main(["onnx", "--bundle", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == EXIT_FAILED
    assert "not found" in capsys.readouterr().err


def test_steps_override_changes_the_unrolled_sampler(exported_pi: tuple[Path, Path], tmp_path: Path):
    bundle, out = exported_pi
    assert main(["onnx", "--bundle", str(bundle), "--out", str(tmp_path / "s2"), "--steps", "2"]) == EXIT_OK
    manifest = load_manifest(tmp_path / "s2")
    assert manifest.steps == 2 and manifest.config["sampling_steps"] == 2
    small = (tmp_path / "s2" / "sampler.onnx").stat().st_size
    assert small < (out / "sampler.onnx").stat().st_size  # fewer unrolled steps, smaller graph
    assert verify(bundle, tmp_path / "s2", cases=1, progress=False).passed


def test_trt_without_tensorrt_exits_2_with_install_hint(
    exported_pi: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    _, out = exported_pi
    assert main(["trt", "--onnx", str(out), "--out", str(tmp_path / "engines")]) == EXIT_MISSING_DEPENDENCY
    assert "TensorRT 10" in capsys.readouterr().err
    assert not np.any([p.suffix == ".engine" for p in tmp_path.rglob("*")])


def test_fp16_export_keeps_io_float32_and_stays_close(tmp_path: Path):
    bundle = make_bundle(tmp_path, "pi")
    out = tmp_path / "fp16"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(out), "--precision", "fp16"]) == EXIT_OK
    manifest = load_manifest(out)
    assert manifest.precision == "fp16"
    prefix = {t.name: t.dtype for t in manifest.graphs["prefix"].outputs}
    assert prefix["prefix_keys"] == "float16" and prefix["prefix_values"] == "float16"
    sampler = {
        t.name: t.dtype for t in (*manifest.graphs["sampler"].inputs, *manifest.graphs["sampler"].outputs)
    }
    assert sampler["noise"] == sampler["state"] == sampler["actions"] == "float32"
    weights = [i for i in onnx.load(str(out / "sampler.onnx")).graph.initializer if len(i.dims) == 2]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)  # matmul weights halved
    report = verify(bundle, out, cases=2, progress=False)
    e2e = next(c for c in report.comparisons if c.name == "end_to_end.actions")
    assert e2e.cosine >= 0.999 and e2e.max_abs <= 2e-2  # the fp16 tolerance, checked even where not gated
    assert e2e.max_abs > 0  # it really ran in reduced precision
    assert report.gated == ("CUDAExecutionProvider" in report.providers)


def test_external_data_is_hashed_loaded_and_protected(exported_pi: tuple[Path, Path], tmp_path: Path):
    from apt_policy.runtime import IntegrityError, load_policy

    bundle, out = exported_pi
    ext = tmp_path / "ext"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(ext), "--external-data-mb", "0"]) == EXIT_OK
    manifest = load_manifest(ext)
    for name, graph in manifest.graphs.items():
        assert graph.external_data == (f"{name}.onnx.data",)
        assert graph.external_data[0] in manifest.files
        assert (ext / graph.file).stat().st_size < (ext / graph.external_data[0]).stat().st_size
    rng = np.random.default_rng(0)
    policy, reference = load_policy(ext), load_policy(out)
    h, w = policy.info.image_size
    images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.info.cameras}
    state = rng.normal(size=len(policy.info.state_names)).astype(np.float32)
    noise = rng.standard_normal((policy.info.horizon, policy.info.action_dim)).astype(np.float32)
    np.testing.assert_array_equal(
        policy.predict(images, state, "reach", noise), reference.predict(images, state, "reach", noise)
    )
    data = ext / "sampler.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"sampler\.onnx\.data"):
        load_policy(ext)
