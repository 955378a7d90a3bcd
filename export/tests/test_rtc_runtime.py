"""Real-time chunking through the exported graphs and every runtime path: prefix rows come back, torch and
ONNX Runtime agree with a prefix, d = 0 is exactly the pre-RTC graph, old exports fall back clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from apt_export.onnx_export import export_onnx
from apt_export.verify import verify
from apt_policy.core.config import PolicyConfig
from apt_policy.core.preprocess import PreprocessError
from apt_policy.runtime import InferenceError, PolicyInfo, load_policy
from apt_policy.runtime.manifest import load_manifest
from apt_policy.runtime.process_policy import ProcessPolicy

from .conftest import make_bundle, replay_engine_plan

ATOL_ROBOT = 2e-4  # as the prefix-less ORT-vs-torch test: robot units, action scale ~1


def _observation(info: PolicyInfo, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = info.image_size
    images = {c: rng.integers(0, 256, (h * 2 + 3, w * 3, 3), dtype=np.uint8) for c in info.cameras}
    state = rng.normal(0.3, 0.5, len(info.state_names)).astype(np.float32)
    noise = rng.standard_normal((info.horizon, info.action_dim)).astype(np.float32)
    return images, state, noise


def _committed(info: PolicyInfo, d: int, seed: int) -> np.ndarray:
    """d committed actions in robot units (the test bundles' actions are ~N(-0.2, 0.8))."""
    return np.random.default_rng(100 + seed).normal(-0.2, 0.8, (d, info.action_dim)).astype(np.float32)


@pytest.fixture(scope="module")
def rtc_trained_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny "pi" bundle whose config says it was trained for RTC (rtc_max_delay 3), and its export."""
    root = tmp_path_factory.mktemp("rtc-trained")
    bundle = make_bundle(root, "pi", seed=2)
    config = PolicyConfig.from_json(bundle / "config.json")
    dataclasses.replace(config, rtc_max_delay=3).validate().to_json(bundle / "config.json")
    export_onnx(bundle, root / "onnx", progress=False)
    return bundle, root / "onnx"


def test_prefix_parity_and_committed_rows_through_load_policy(exported: tuple[Path, Path]):
    bundle, out = exported
    ort_policy, torch_policy = load_policy(out), load_policy(bundle)
    info = ort_policy.info
    assert info.rtc_inputs and torch_policy.info.rtc_inputs
    assert info.rtc_max_delay == 0 and info.rtc_mode == "training_free"  # not trained for RTC
    worst = 0.0
    for seed, d in enumerate((1, 3, info.horizon)):
        images, state, noise = _observation(info, seed)
        committed = _committed(info, d, seed)
        ours = ort_policy.predict(images, state, "reach the red cube", noise, committed)
        ref = torch_policy.predict(images, state, "reach the red cube", noise, committed)
        np.testing.assert_allclose(ours, ref, atol=ATOL_ROBOT, rtol=0)
        worst = max(worst, float(np.abs(ours - ref).max()))
        for actions in (ours, ref):  # rows 0..d-1 are the committed actions (through normalise/unnormalise)
            np.testing.assert_allclose(actions[:d], committed, atol=1e-5, rtol=0)
        plain = ort_policy.predict(images, state, "reach the red cube", noise)
        if d < info.horizon:  # the rest is generated consistent with the prefix, not as without it
            assert np.abs(ours[d:] - plain[d:]).max() > 1e-4
    print(f"ORT vs torch with prefix, robot units: max abs {worst:.2e}")


def test_zero_prefix_is_exactly_the_graph_without_rtc_inputs(exported: tuple[Path, Path], tmp_path: Path):
    """d = 0 (None or an empty prefix) through the RTC sampler gives bit for bit what the sampler exported
    without RTC inputs gives; that old-style export loads, says rtc_inputs False and refuses a prefix."""
    bundle, out = exported
    old_dir = tmp_path / "no-rtc"
    export_onnx(bundle, old_dir, progress=False, rtc_inputs=False)
    manifest = load_manifest(old_dir)
    assert not manifest.rtc_inputs
    assert "prefix" not in manifest.graphs["sampler"].input_names
    assert "clean_mask" not in manifest.graphs["denoiser"].input_names
    new, old = load_policy(out), load_policy(old_dir)
    assert new.info.rtc_inputs and not old.info.rtc_inputs
    assert old.info == dataclasses.replace(new.info, rtc_inputs=False)
    for seed in range(3):
        images, state, noise = _observation(new.info, seed)
        reference = old.predict(images, state, "touch the green ball", noise)
        empty = np.zeros((0, new.info.action_dim), np.float32)
        assert np.array_equal(new.predict(images, state, "touch the green ball", noise), reference)
        assert np.array_equal(new.predict(images, state, "touch the green ball", noise, empty), reference)
        assert np.array_equal(old.predict(images, state, "touch the green ball", noise, empty), reference)
    with pytest.raises(PreprocessError, match=r"no action prefix.*rtc_inputs"):
        old.predict(images, state, "reach", noise, _committed(old.info, 2, 0))
    assert np.array_equal(old.predict(images, state, "touch the green ball", noise), reference)  # still fine
    report = verify(bundle, old_dir, cases=1, progress=False)  # an old export still verifies
    assert report.passed and "no prefix cases" in report.note
    assert not any("rtc" in c.name or "prefix]" in c.name for c in report.comparisons)


def test_trained_mode_from_the_bundle_and_training_free_on_request(rtc_trained_export: tuple[Path, Path]):
    bundle, out = rtc_trained_export
    trained_ort, trained_torch = load_policy(out), load_policy(bundle)
    free_ort = load_policy(out, rtc_mode="training_free")
    for policy in (trained_ort, trained_torch):
        assert policy.info.rtc_max_delay == 3 and policy.info.rtc_mode == "trained"
    assert free_ort.info.rtc_mode == "training_free"
    images, state, noise = _observation(trained_ort.info, 5)
    committed = _committed(trained_ort.info, 3, 5)
    a = trained_ort.predict(images, state, "reach the red cube", noise, committed)
    np.testing.assert_allclose(
        a, trained_torch.predict(images, state, "reach the red cube", noise, committed), atol=ATOL_ROBOT
    )
    b = free_ort.predict(images, state, "reach the red cube", noise, committed)
    np.testing.assert_allclose(a[:3], committed, atol=1e-5)
    np.testing.assert_allclose(b[:3], committed, atol=1e-5)
    assert np.abs(a[3:] - b[3:]).max() > 1e-4  # clean per-token time vs the noisy path: other chunks
    # without a prefix both modes are the same prefix-less sampler
    assert np.array_equal(
        trained_ort.predict(images, state, "reach", noise), free_ort.predict(images, state, "reach", noise)
    )


def test_trained_mode_is_refused_for_a_model_not_trained_for_it(exported_pi: tuple[Path, Path]):
    bundle, out = exported_pi
    for path in (out, bundle):
        with pytest.raises(ValueError, match="rtc_max_delay 0"):
            load_policy(path, rtc_mode="trained")
    with pytest.raises(ValueError, match="rtc_mode must be one of"):
        load_policy(out, rtc_mode="soft")


def test_bad_prefixes_are_rejected_and_the_policy_keeps_working(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    policy = load_policy(out)
    info = policy.info
    images, state, noise = _observation(info, 0)
    bad = {
        "too long": np.zeros((info.horizon + 1, info.action_dim), np.float32),
        "wrong width": np.zeros((2, info.action_dim + 1), np.float32),
        "one-dimensional": np.zeros(info.action_dim, np.float32),
        "non-finite": np.full((2, info.action_dim), np.nan, np.float32),
    }
    for what, prefix in bad.items():
        with pytest.raises(PreprocessError, match="prefix"):
            policy.predict(images, state, "reach", noise, prefix)
        assert np.all(np.isfinite(policy.predict(images, state, "reach", noise))), what


def test_process_policy_forwards_the_prefix(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    local = load_policy(out)
    remote = ProcessPolicy(out)
    try:
        assert remote.info == local.info and remote.info.rtc_inputs
        images, state, noise = _observation(local.info, 3)
        committed = _committed(local.info, 4, 3)
        np.testing.assert_allclose(
            remote.predict(images, state, "reach the red cube", noise, committed),
            local.predict(images, state, "reach the red cube", noise, committed),
            atol=1e-6,
            rtol=0,
        )
        with pytest.raises(InferenceError, match="prefix"):
            remote.predict(images, state, "reach", noise, committed[:, :-1])
        np.testing.assert_allclose(  # still serving, and without a prefix as before
            remote.predict(images, state, "reach", noise),
            local.predict(images, state, "reach", noise),
            atol=1e-6,
        )
    finally:
        remote.close()


def test_tensorrt_runtime_plan_carries_the_prefix(exported: tuple[Path, Path]):
    """The TensorRT backend's APT chain (prefix -> sampler with the RTC inputs), replayed with ONNX Runtime
    sessions as the engines, equals the ONNX Runtime policy with and without a committed prefix."""
    from apt_policy.runtime.tensorrt_backend import engine_feeds

    _, out = exported
    policy = load_policy(out)
    images, state, noise = _observation(policy.info, 7)
    for d in (0, 3):
        committed = _committed(policy.info, d, 7) if d else None
        x = policy.encoder.encode(images, state, "reach the red cube", noise, committed, None)
        feeds = engine_feeds(x, True, np.zeros((1,), np.float32))
        replayed = replay_engine_plan(out, feeds, rtc=True, family="apt")
        np.testing.assert_allclose(replayed, policy.run_inputs(x), atol=1e-6)
