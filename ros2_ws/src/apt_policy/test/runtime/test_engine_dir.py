"""An engine directory is recognised, checked, and refused with a clear message where TensorRT is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from apt_policy.runtime import IntegrityError, detect_kind, load_policy
from apt_policy.runtime.manifest import EngineSpec, GraphSpec, Manifest, TensorSpec, hash_files, load_manifest
from apt_policy.runtime.tensorrt_backend import TensorRTUnavailableError
from apt_policy.runtime.trt_plan import engine_cache_key, profile_to_json, resolve_profile

NO_TENSORRT = importlib.util.find_spec("tensorrt") is None


def _engine_dir(root: Path) -> Path:
    inputs = (TensorSpec("noise", (1, 4, 2), "float32"),)
    graph = GraphSpec("sampler.onnx", inputs=inputs, outputs=(TensorSpec("actions", (1, 4, 2), "float32"),))
    (root / "sampler.engine").write_bytes(b"serialized engine")
    (root / "tokenizer.json").write_text("{}")
    profile = resolve_profile(inputs)
    engine = EngineSpec(
        file="sampler.engine",
        graph_sha256="0" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        strongly_typed=True,
        profile=profile_to_json(profile),
        cache_key=engine_cache_key("0" * 64, "10.3.0", "Orin", "8.7", "fp16", profile),
    )
    Manifest(
        model_id="m",
        precision="fp16",
        opset=18,
        steps=4,
        graphs={"sampler": graph},  # interfaces kept; the ONNX files themselves are not needed
        config={},
        normalization={},
        tokenizer="tokenizer.json",
        files=hash_files(root, ["sampler.engine", "tokenizer.json"]),
        engines={"sampler": engine},
    ).write(root)
    return root


def test_engine_dir_round_trip_and_kind(tmp_path: Path):
    root = _engine_dir(tmp_path)
    manifest = load_manifest(root)
    assert detect_kind(root) == "engines"
    assert manifest.engines["sampler"].profile == {"noise": [[1, 4, 2]] * 3}


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed here")
def test_auto_picks_tensorrt_and_says_what_to_install(tmp_path: Path):
    root = _engine_dir(tmp_path)
    with pytest.raises(TensorRTUnavailableError, match="TensorRT 10"):
        load_policy(root)


def test_tampered_engine_is_refused_before_tensorrt_is_touched(tmp_path: Path):
    root = _engine_dir(tmp_path)
    (root / "sampler.engine").write_bytes(b"another engine")
    with pytest.raises(IntegrityError, match=r"sampler\.engine"):
        load_policy(root)  # the sha256 check comes before TensorRT is imported
