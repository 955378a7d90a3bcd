"""manifest.json round trip and the integrity checks that make a runtime refuse a damaged export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apt_policy.runtime.manifest import (
    GraphSpec,
    IntegrityError,
    Manifest,
    ManifestError,
    TensorSpec,
    hash_files,
    load_manifest,
)


def _write_export(root: Path) -> Manifest:
    (root / "sampler.onnx").write_bytes(b"graph-bytes" * 100)
    (root / "tokenizer.json").write_text("{}")
    manifest = Manifest(
        model_id="tiny",
        precision="fp32",
        opset=18,
        steps=4,
        graphs={
            "sampler": GraphSpec(
                "sampler.onnx",
                inputs=(TensorSpec("noise", ("batch", 4, 8), "float32"),),
                outputs=(TensorSpec("actions", ("batch", 4, 8), "float32"),),
            )
        },
        config={"horizon": 4},
        normalization={"state": {"mean": [0.0]}},
        tokenizer="tokenizer.json",
        files=hash_files(root, ["sampler.onnx", "tokenizer.json"]),
    )
    manifest.write(root)
    return manifest


def test_round_trip_keeps_everything(tmp_path: Path):
    written = _write_export(tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == written
    assert loaded.graphs["sampler"].inputs[0].shape == ("batch", 4, 8)


def test_modified_graph_is_refused(tmp_path: Path):
    _write_export(tmp_path)
    data = bytearray((tmp_path / "sampler.onnx").read_bytes())
    data[10] ^= 0x01
    (tmp_path / "sampler.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"sampler\.onnx does not match the manifest"):
        load_manifest(tmp_path)
    load_manifest(tmp_path, verify=False)  # explicit opt-out still parses


def test_missing_file_and_bad_manifest_are_clear(tmp_path: Path):
    _write_export(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match=r"manifest\.json not found"):
        load_manifest(tmp_path / "nowhere")
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="format_version 99"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_graph_without_hash_is_refused(tmp_path: Path):
    _write_export(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["files"]["sampler.onnx"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="no sha256"):
        load_manifest(tmp_path)
