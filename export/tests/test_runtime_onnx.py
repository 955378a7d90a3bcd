"""load_policy on exported graphs: same actions as the torch bundle, torch-free, refuses damaged files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from apt_policy.core.preprocess import PreprocessError
from apt_policy.runtime import (
    BackendUnavailableError,
    IntegrityError,
    ManifestError,
    PolicyInfo,
    detect_kind,
    load_policy,
)
from apt_policy.runtime.manifest import MANIFEST_NAME


def _observation(info: PolicyInfo, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = info.image_size
    # camera frames of another size than the model's, so the shared resize path is exercised too
    images = {c: rng.integers(0, 256, (h * 2 + 3, w * 3, 3), dtype=np.uint8) for c in info.cameras}
    state = rng.normal(0.3, 0.5, len(info.state_names)).astype(np.float32)
    noise = rng.standard_normal((info.horizon, info.action_dim)).astype(np.float32)
    return images, state, noise


def test_onnxruntime_actions_equal_torch_through_load_policy(exported: tuple[Path, Path]):
    bundle, out = exported
    ort_policy = load_policy(out)  # auto: export dir -> onnxruntime
    torch_policy = load_policy(bundle)  # auto: bundle dir -> torch
    assert ort_policy.info.backend == "onnxruntime" and torch_policy.info.backend == "torch"
    assert ort_policy.info == PolicyInfo(**{**torch_policy.info.__dict__, "backend": "onnxruntime"})
    ort_policy.warmup()
    for seed, instruction in enumerate(["reach the red cube", "touch the green ball", ""]):
        images, state, noise = _observation(ort_policy.info, seed)
        ours = ort_policy.predict(images, state, instruction, noise)
        ref = torch_policy.predict(images, state, instruction, noise)
        assert (
            ours.shape == (ort_policy.info.horizon, ort_policy.info.action_dim) and ours.dtype == np.float32
        )
        np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=0)  # robot units (action scale ~1)
    # the noise matters (no constant output), and fixed noise is reproducible
    images, state, noise = _observation(ort_policy.info, 7)
    a = ort_policy.predict(images, state, "reach the red cube", noise)
    assert np.array_equal(a, ort_policy.predict(images, state, "reach the red cube", noise))
    assert not np.allclose(a, ort_policy.predict(images, state, "reach the red cube", -noise))


def test_bad_inputs_are_rejected_clearly(exported: tuple[Path, Path]):
    _, out = exported
    policy = load_policy(out, "onnxruntime")
    images, state, noise = _observation(policy.info, 0)
    with pytest.raises(PreprocessError, match="state has shape"):
        policy.predict(images, state[:-1], "reach", noise)
    with pytest.raises(PreprocessError, match="non-finite"):
        policy.predict(images, np.full_like(state, np.nan), "reach", noise)
    with pytest.raises(PreprocessError, match="missing camera"):
        policy.predict(dict(list(images.items())[:1]), state, "reach", noise)
    with pytest.raises(PreprocessError, match="noise has shape"):
        policy.predict(images, state, "reach", noise[:-1])
    assert np.all(np.isfinite(policy.predict(images, state, "reach", noise)))  # still usable afterwards


def test_tampered_graph_is_refused(exported: tuple[Path, Path], tmp_path: Path):
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "sampler.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "sampler.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"sampler\.onnx does not match the manifest"):
        load_policy(copy)
    (copy / "sampler.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_policy(copy, "onnxruntime")


def test_backend_and_directory_kind_must_agree(exported: tuple[Path, Path], tmp_path: Path):
    bundle, out = exported
    assert detect_kind(out) == "onnx" and detect_kind(bundle) == "bundle"
    with pytest.raises(BackendUnavailableError, match="needs a training bundle"):
        load_policy(out, "torch")
    with pytest.raises(BackendUnavailableError, match="needs an ONNX export dir"):
        load_policy(bundle, "onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_policy(out, "tvm")
    with pytest.raises(ManifestError, match="neither an export directory"):
        load_policy(tmp_path)


def test_onnxruntime_backend_never_imports_torch(exported: tuple[Path, Path]):
    _, out = exported
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from apt_policy.runtime import load_policy
        p = load_policy({str(out)!r}, "onnxruntime")
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


def test_results_are_not_aliased_and_threads_do_not_mix(exported_pi: tuple[Path, Path]):
    from concurrent.futures import ThreadPoolExecutor

    _, out = exported_pi
    policy = load_policy(out, "onnxruntime")
    cases = [_observation(policy.info, seed) for seed in range(6)]
    expected = [policy.predict(images, state, "reach the red cube", noise) for images, state, noise in cases]
    first = expected[0].copy()
    assert np.array_equal(expected[0], first)  # a later prediction did not overwrite an earlier result
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda c: policy.predict(c[0], c[1], "reach the red cube", c[2]), cases * 3))
    for got, want in zip(results, expected * 3, strict=True):
        np.testing.assert_array_equal(got, want)


def test_corrupt_graph_with_matching_hash_and_wrong_graph_shapes_are_clear(
    exported_pi: tuple[Path, Path], tmp_path: Path
):
    from apt_policy.runtime.manifest import Manifest, load_manifest, sha256_file
    from apt_policy.runtime.policy import InferenceError

    _, out = exported_pi
    policy = load_policy(out, "onnxruntime")
    x = policy.encoder.encode(*_observation(policy.info, 0)[:2], "reach", None)
    with pytest.raises(InferenceError, match="ONNX Runtime inference failed"):
        policy.run(x.pixel_values[:, :, :, :-1], x.input_ids, x.text_mask, x.state, x.noise)
    with pytest.raises(InferenceError, match="ONNX Runtime inference failed"):
        policy.run(x.pixel_values, x.input_ids, x.text_mask, x.state.astype(np.float64), x.noise)
    # a damaged file whose manifest was (wrongly) re-hashed: ONNX Runtime's refusal becomes a clear error
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    name = policy.graph_file("sampler").name  # the file the runtime runs (the saved optimised graph)
    (copy / name).write_bytes(b"not a protobuf")
    manifest = load_manifest(copy, verify=False)
    files = {**manifest.files, name: sha256_file(copy / name)}
    Manifest(**{**manifest.__dict__, "files": files}).write(copy)
    with pytest.raises(ManifestError, match=rf"cannot load .*{re.escape(name)}"):
        load_policy(copy)


@pytest.mark.parametrize("name", [None, "", "prefix_keys_renamed"])
def test_manifest_names_that_the_graph_lacks_are_refused(exported: tuple[Path, Path], tmp_path: Path, name):
    """Found by the manifest fuzzer: a prefix output named None (or a name the graph does not have) made
    ONNX Runtime's I/O binding fail at load with a RuntimeError instead of a ManifestError."""
    _, out = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["graphs"]["prefix"]["outputs"][0]["name"] = name
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    match = "not a non-empty string" if not name else "the manifest lists outputs"
    with pytest.raises(ManifestError, match=match):
        load_policy(copy)
