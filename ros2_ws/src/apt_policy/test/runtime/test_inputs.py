"""ObservationEncoder (shared by every backend) and provider / directory selection, without torch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from apt_policy.core.config import ActionSemantics, ExpertConfig, PolicyConfig
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import PreprocessError, build_word_tokenizer
from apt_policy.runtime.inputs import ObservationEncoder
from apt_policy.runtime.load import detect_kind
from apt_policy.runtime.manifest import ManifestError
from apt_policy.runtime.onnx_backend import choose_providers
from apt_policy.runtime.policy import InferenceError, PolicyInfo, resolve_rtc_mode


def _config() -> PolicyConfig:
    return PolicyConfig(
        architecture="pi",
        backbone={},
        expert=ExpertConfig(num_layers=1),
        layer_map=(0,),
        cameras=("front", "wrist"),
        image_size=(16, 24),
        max_instruction_tokens=6,
        state_names=("j1", "j2", "j3"),
        action_names=("j1", "j2", "j3", "gripper"),
        horizon=5,
        control_dt=0.05,
        sampling_steps=4,
        action_semantics=ActionSemantics(arm="delta", arm_scale=0.5, gripper="binary"),
        normalization="mean_std",
    ).validate()


@pytest.fixture
def encoder(tmp_path: Path) -> ObservationEncoder:
    config = _config()
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit(
        rng.normal(2.0, 3.0, (50, 3)), rng.normal(-1.0, 0.5, (50, 5, 4)), mode="mean_std"
    )
    build_word_tokenizer(["reach the red cube"], tmp_path / "tok.json")
    return ObservationEncoder(config, normalizer, tmp_path / "tok.json", seed=3)


def _images(h: int = 48, w: int = 64) -> dict[str, np.ndarray]:
    return {c: np.full((h, w, 3), 128, np.uint8) for c in ("front", "wrist")}


def test_encode_shapes_dtypes_and_normalised_state(encoder: ObservationEncoder):
    state = np.array([2.0, 5.0, -1.0], np.float32)
    x = encoder.encode(_images(), state, "reach the red cube")
    assert x.pixel_values.shape == (1, 2, 3, 16, 24) and x.pixel_values.dtype == np.float32
    assert x.input_ids.shape == x.text_mask.shape == (1, 6) and x.input_ids.dtype == np.int64
    assert x.text_mask.tolist() == [[1, 1, 1, 1, 0, 0]]
    np.testing.assert_allclose(x.state[0], encoder.normalizer.normalize_state(state), rtol=1e-6)
    assert x.noise.shape == (1, 5, 4)


def test_noise_seeded_or_given_and_validated(encoder: ObservationEncoder):
    first = encoder.encode(_images(), np.zeros(3), "reach").noise.copy()
    second = encoder.encode(_images(), np.zeros(3), "reach").noise.copy()
    assert not np.array_equal(first, second)  # fresh noise per call
    given = np.arange(20, dtype=np.float32).reshape(5, 4)
    assert np.array_equal(encoder.encode(_images(), np.zeros(3), "reach", given).noise[0], given)
    with pytest.raises(PreprocessError, match="noise has shape"):
        encoder.encode(_images(), np.zeros(3), "reach", given[:, :3])
    with pytest.raises(PreprocessError, match="noise contains non-finite"):
        encoder.encode(_images(), np.zeros(3), "reach", np.full((5, 4), np.inf, np.float32))


def test_noise_scale_of_the_bundle_scales_drawn_noise_only(tmp_path: Path):
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit(rng.normal(size=(50, 3)), rng.normal(size=(50, 5, 4)), mode="mean_std")
    build_word_tokenizer(["reach"], tmp_path / "tok.json")

    def encoder(scale: float) -> ObservationEncoder:
        config = dataclasses.replace(_config(), noise_scale=scale)
        return ObservationEncoder(config, normalizer, tmp_path / "tok.json", seed=3)

    full = encoder(1.0).encode(_images(), np.zeros(3), "reach").noise.copy()
    half = encoder(0.5).encode(_images(), np.zeros(3), "reach").noise.copy()
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)
    assert not np.any(encoder(0.0).encode(_images(), np.zeros(3), "reach").noise)  # deterministic
    given = np.ones((5, 4), np.float32)  # explicit noise is used as given
    assert np.array_equal(encoder(0.0).encode(_images(), np.zeros(3), "reach", given).noise[0], given)


def test_prefix_is_normalised_padded_and_validated(encoder: ObservationEncoder):
    x = encoder.encode(_images(), np.zeros(3), "reach")
    assert x.prefix.shape == (1, 5, 4) and x.prefix.dtype == np.float32 and not np.any(x.prefix)
    assert x.prefix_len.dtype == np.int64 and x.prefix_len.tolist() == [0]
    committed = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.5, -0.5, 1.0]], np.float32)  # robot units
    x = encoder.encode(_images(), np.zeros(3), "reach", None, committed)
    assert x.prefix_len.tolist() == [2]
    np.testing.assert_allclose(x.prefix[0, :2], encoder.normalizer.normalize_actions(committed), rtol=1e-6)
    assert not np.any(x.prefix[0, 2:])  # rows after the prefix are zero
    x = encoder.encode(_images(), np.zeros(3), "reach", None, np.zeros((0, 4)))  # d = 0: no prefix
    assert x.prefix_len.tolist() == [0] and not np.any(x.prefix)  # and the previous prefix is gone
    full = np.ones((5, 4), np.float64)  # d = horizon is allowed; any float dtype
    assert encoder.encode(_images(), np.zeros(3), "reach", None, full).prefix_len.tolist() == [5]
    for bad, needle in (
        (np.zeros((6, 4)), "prefix has shape"),  # longer than the horizon
        (np.zeros((2, 3)), "prefix has shape"),
        (np.zeros(4), "prefix has shape"),
        (np.array([[0.0, np.inf, 0.0, 0.0]]), "prefix contains non-finite"),
        (np.array([["a", "b", "c", "d"]]), "prefix contains non-finite or non-numeric"),
    ):
        with pytest.raises(PreprocessError, match=needle):
            encoder.encode(_images(), np.zeros(3), "reach", None, bad)


def test_state_and_images_are_checked(encoder: ObservationEncoder):
    with pytest.raises(PreprocessError, match=r"expected \(3,\)"):
        encoder.encode(_images(), np.zeros(4), "reach")
    with pytest.raises(PreprocessError, match="non-finite"):
        encoder.encode(_images(), np.array([0.0, np.nan, 0.0]), "reach")
    with pytest.raises(PreprocessError, match="uint8"):
        encoder.encode({c: v.astype(np.float32) for c, v in _images().items()}, np.zeros(3), "reach")


def test_decode_unnormalises_and_refuses_bad_output(encoder: ObservationEncoder):
    y = np.zeros((1, 5, 4), np.float32)
    actions = encoder.decode(y)
    np.testing.assert_allclose(actions, np.broadcast_to(encoder.normalizer.actions.mean, (5, 4)), rtol=1e-5)
    with pytest.raises(InferenceError, match="non-finite"):
        encoder.decode(np.full((1, 5, 4), np.nan, np.float32))
    with pytest.raises(InferenceError, match="shape"):
        encoder.decode(np.zeros((1, 4, 4), np.float32))


def test_policy_info_from_config():
    info = PolicyInfo.from_config(_config(), "onnxruntime")
    assert info.image_size == (16, 24) and info.action_dim == 4 and info.steps == 4 and info.dt == 0.05
    assert info.action_semantics.arm == "delta" and info.action_semantics.arm_scale == 0.5
    assert info.noise_scale == 1.0
    assert PolicyInfo.from_config(dataclasses.replace(_config(), noise_scale=0.25), "x").noise_scale == 0.25
    assert info.rtc_inputs and info.rtc_max_delay == 0 and info.rtc_mode == "training_free"
    trained = dataclasses.replace(_config(), rtc_max_delay=2)
    info = PolicyInfo.from_config(trained, "x", rtc_inputs=False, rtc_mode="trained")
    assert not info.rtc_inputs and info.rtc_max_delay == 2 and info.rtc_mode == "trained"


def test_rtc_mode_resolution():
    plain, trained = _config(), dataclasses.replace(_config(), rtc_max_delay=2)
    assert resolve_rtc_mode("auto", plain) == "training_free"
    assert resolve_rtc_mode("auto", trained) == "trained"
    assert resolve_rtc_mode("training_free", trained) == "training_free"
    assert resolve_rtc_mode("trained", trained) == "trained"
    with pytest.raises(ValueError, match="rtc_max_delay 0"):
        resolve_rtc_mode("trained", plain)
    with pytest.raises(ValueError, match="rtc_mode must be one of"):
        resolve_rtc_mode("hard", plain)


def test_provider_choice():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(both) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(both, ["TensorrtExecutionProvider", "CPUExecutionProvider"])[0] == (
        "TensorrtExecutionProvider"
    )
    with pytest.raises(ValueError, match="not available"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_detect_kind(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path / "nope")
    with pytest.raises(ManifestError, match="neither"):
        detect_kind(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert detect_kind(tmp_path) == "bundle"
