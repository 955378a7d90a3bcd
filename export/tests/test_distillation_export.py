"""The action-distillation family through apt-export: prefix + head graphs, manifest, verify (fp32 end to
end), real ONNX Runtime sessions, and the torch-free runtime (a tiny random-weight student)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apt_export.cli import main as export_main  # noqa: E402
from apt_export.onnx_export import export_onnx  # noqa: E402
from apt_export.verify import FP32_MAX_ABS, verify  # noqa: E402
from apt_policy.core.distillation_config import DistillationConfig, TeacherConfig  # noqa: E402
from apt_policy.core.normalize import Normalizer  # noqa: E402
from apt_policy.core.preprocess import build_word_tokenizer  # noqa: E402
from apt_policy.model.action_distillation import DistillationModel  # noqa: E402
from apt_policy.model.bundle import save_bundle  # noqa: E402
from apt_policy.model.presets import tiny_policy_config  # noqa: E402
from apt_policy.runtime.load import load_policy  # noqa: E402
from apt_policy.runtime.manifest import load_manifest  # noqa: E402
from apt_policy.training.distillation import student_config  # noqa: E402

from .conftest import INSTRUCTIONS, replay_engine_plan  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill_export")
    torch.manual_seed(0)
    family = DistillationConfig(
        teacher=TeacherConfig(width=16, num_heads=2, num_layers=1, cnn_channels=8),
        num_action_tokens=2,
        pred_steps=2,
    )
    config = student_config(tiny_policy_config("pi"), family.to_dict(), stage=2)
    model = DistillationModel(config)
    for p in model.decoder.parameters():  # a non-trivial decoder (the teacher's, in a real bundle)
        torch.nn.init.normal_(p, std=0.3)
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit(
        rng.normal(0.3, 0.5, size=(200, config.state_dim)),
        rng.normal(-0.2, 0.8, size=(200, config.horizon, config.action_dim)),
        config.normalization,
    )
    build_word_tokenizer(INSTRUCTIONS, root / "tok.json")
    bundle = save_bundle(root / "bundle", model, normalizer, root / "tok.json")
    out = root / "onnx"
    export_onnx(bundle, out, progress=False)
    return bundle, out


def test_manifest_describes_a_one_pass_policy(exported):
    _, out = exported
    manifest = load_manifest(out)
    assert set(manifest.graphs) == {"prefix", "sampler"} and manifest.steps == 0 and not manifest.rtc_inputs
    head = manifest.graphs["sampler"]
    assert head.input_names == ("sequence", "deepstack", "key_mask", "state")
    assert head.output_names == ("actions",)
    assert manifest.config["family"] == "action_distillation"
    assert manifest.graphs["prefix"].output_names == ("sequence", "deepstack", "key_mask")


def test_verify_fp32_end_to_end(exported, capsys):
    bundle, out = exported
    report = verify(bundle, out, cases=3, progress=False)
    assert report.passed and report.gated
    names = {c.name for c in report.comparisons}
    assert {"head.actions", "end_to_end.actions", "predict.actions"} <= names
    assert max(c.max_abs for c in report.comparisons) <= FP32_MAX_ABS
    assert export_main(["verify", "--bundle", str(bundle), "--onnx", str(out), "--cases", "1"]) == 0
    print(report.table())


def test_onnxruntime_policy_matches_torch_and_is_deterministic(exported):
    bundle, out = exported
    ort_policy, torch_policy = load_policy(out), load_policy(bundle, "torch")
    assert ort_policy.info.backend == "onnxruntime"
    for info in (ort_policy.info, torch_policy.info):
        assert (info.steps, info.noise_scale, info.rtc_inputs, info.horizon) == (0, 0.0, False, 4)
    rng = np.random.default_rng(3)
    h, w = ort_policy.info.image_size
    images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in ort_policy.info.cameras}
    state = rng.normal(size=len(ort_policy.info.state_names)).astype(np.float32)
    a = ort_policy.predict(images, state, "reach the red cube")
    np.testing.assert_allclose(a, torch_policy.predict(images, state, "reach the red cube"), atol=1e-4)
    np.testing.assert_array_equal(
        a, ort_policy.predict(images, state, "reach the red cube", np.ones((4, 7), np.float32))
    )
    assert not np.allclose(a, ort_policy.predict(images, state + 0.5, "reach the red cube"), atol=1e-4)


def test_onnxruntime_path_is_torch_free(exported):
    _, out = exported
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from apt_policy.runtime import load_policy
        p = load_policy({str(out)!r}, "onnxruntime")
        assert p.info.steps == 0 and not p.info.rtc_inputs
        h, w = p.info.image_size
        images = {{c: np.zeros((h, w, 3), np.uint8) for c in p.info.cameras}}
        a = p.predict(images, np.zeros(len(p.info.state_names), np.float32), "reach the red cube")
        assert a.shape == (p.info.horizon, p.info.action_dim), a.shape
        leaked = sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules)
        assert not leaked, leaked
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fp16_onnx_is_refused_with_the_reason(exported, tmp_path):
    bundle, _ = exported
    with pytest.raises(ValueError, match="action_distillation: export fp32"):
        export_onnx(bundle, tmp_path / "fp16", precision="fp16", progress=False)
    assert json.loads((bundle / "config.json").read_text())["family"] == "action_distillation"


def test_tensorrt_runtime_plan_is_one_pass(exported):
    """The TensorRT backend's chain for this family (prefix -> sampler, no noise fed), replayed with ONNX
    Runtime sessions as the engines, equals the ONNX Runtime policy."""
    from apt_policy.runtime.tensorrt_backend import engine_feeds

    _, out = exported
    policy = load_policy(out)
    rng = np.random.default_rng(4)
    h, w = policy.info.image_size
    images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.info.cameras}
    state = rng.normal(size=len(policy.info.state_names)).astype(np.float32)
    x = policy.encoder.encode(images, state, "reach the red cube", None, None, None)
    feeds = engine_feeds(x, False, np.zeros((1,), np.float32))
    replayed = replay_engine_plan(out, feeds, rtc=False, family="action_distillation")
    np.testing.assert_allclose(replayed, policy.run_inputs(x), atol=1e-6)
