"""Session-wide tiny bundles ("pi" and "groot") and their fp32 ONNX exports, made once per test run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apt_policy.core.normalize import Normalizer  # noqa: E402
from apt_policy.core.preprocess import build_word_tokenizer  # noqa: E402
from apt_policy.model.apt import APTModel  # noqa: E402
from apt_policy.model.bundle import save_bundle  # noqa: E402
from apt_policy.model.presets import tiny_policy_config  # noqa: E402

INSTRUCTIONS = ["reach the red cube", "move to the blue block", "touch the green ball"]


def make_bundle(root: Path, architecture: str, seed: int = 0) -> Path:
    """A random-weight tiny bundle with non-trivial normalisation statistics."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    config = tiny_policy_config(architecture)
    model = APTModel(config)
    rng = np.random.default_rng(seed)
    states = rng.normal(0.3, 0.5, size=(200, config.state_dim))
    actions = rng.normal(-0.2, 0.8, size=(200, config.horizon, config.action_dim))
    normalizer = Normalizer.fit(states, actions, config.normalization)
    tokenizer = root / f"tokenizer-{architecture}-{seed}.json"
    build_word_tokenizer(INSTRUCTIONS, tokenizer)
    return save_bundle(root / f"bundle-{architecture}-{seed}", model, normalizer, tokenizer)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """architecture -> (bundle dir, fp32 export dir), each made once per test session on first use."""
    return {}


def _exported(architecture: str, cache: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if architecture not in cache:
        from apt_export.onnx_export import export_onnx

        root = tmp_path_factory.mktemp(f"export-{architecture}")
        bundle = make_bundle(root, architecture)
        export_onnx(bundle, root / "onnx", precision="fp32", progress=False)
        cache[architecture] = (bundle, root / "onnx")
    return cache[architecture]


@pytest.fixture(params=["pi", "groot"])
def exported(request: pytest.FixtureRequest, export_cache: dict, tmp_path_factory) -> tuple[Path, Path]:
    """(bundle dir, fp32 export dir) for each architecture, shared by every test of the session."""
    return _exported(request.param, export_cache, tmp_path_factory)


@pytest.fixture
def exported_pi(export_cache: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The "pi" export alone, for export mechanics that do not depend on the architecture."""
    return _exported("pi", export_cache, tmp_path_factory)


def replay_engine_plan(export_dir: Path, feeds: dict[str, np.ndarray], rtc: bool, family: str) -> np.ndarray:
    """Carry out the TensorRT runtime's plan with ONNX Runtime in TensorRT's place (no GPU here).

    The engines the runtime would run (``engine_order``), the device buffers it would bind
    (``buffer_plan``), the host inputs it promises to fill (``fed_inputs``) and the values it fills them
    with (``engine_feeds``) are the backend's own; one ORT session per graph stands in for each engine,
    reading and writing the planned buffers by name. Returns the ``actions`` buffer.
    """
    import onnxruntime as ort
    from apt_policy.runtime.manifest import load_manifest
    from apt_policy.runtime.trt_plan import buffer_plan, check_host_inputs, engine_order, fed_inputs

    manifest = load_manifest(export_dir)
    order = engine_order([g for g in manifest.graphs if g != "denoiser"])
    graphs = {g: (manifest.graphs[g].inputs, manifest.graphs[g].outputs) for g in order}
    shapes = {
        s.name: tuple(1 if d == "batch" else int(d) for d in s.shape)
        for g in order
        for s in (*graphs[g][0], *graphs[g][1])
    }
    plan = buffer_plan(graphs, order, shapes, outputs=["actions"])
    check_host_inputs(plan, fed_inputs(family, order, rtc))
    buffers: dict[str, np.ndarray] = {}
    for buf in plan:
        buffers[buf.name] = np.zeros(buf.shape, np.dtype(buf.dtype))
        if buf.host_input:
            np.copyto(buffers[buf.name], feeds[buf.name], casting="same_kind")
    for name in order:
        session = ort.InferenceSession(str(export_dir / manifest.graphs[name].file))
        outs = session.run(None, {n: buffers[n] for n in manifest.graphs[name].input_names})
        for spec, value in zip(manifest.graphs[name].outputs, outs, strict=True):
            np.copyto(buffers[spec.name], value)
    return buffers["actions"]
