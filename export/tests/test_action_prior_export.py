"""The action-prior family through apt-export onnx / verify and the torch-free ONNX Runtime backend: its graph
set, fp32 parity (<= 1e-4 end to end), the history contract and real-time chunking on real ORT sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from apt_export.cli import EXIT_OK, main  # noqa: E402
from apt_export.verify import FP32_MAX_ABS, verify  # noqa: E402
from apt_policy.core.normalize import Normalizer  # noqa: E402
from apt_policy.core.preprocess import PreprocessError, build_word_tokenizer  # noqa: E402
from apt_policy.model.action_prior import ActionPriorModel, tiny_action_prior_config  # noqa: E402
from apt_policy.model.bundle import save_bundle  # noqa: E402
from apt_policy.runtime.load import load_policy  # noqa: E402
from apt_policy.runtime.manifest import load_manifest  # noqa: E402
from apt_policy.runtime.onnx_action_prior import OnnxActionPriorPolicy  # noqa: E402
from apt_policy.runtime.policy import History  # noqa: E402

from .conftest import INSTRUCTIONS, replay_engine_plan  # noqa: E402


def _bundle(root: Path, stage: int, history_steps: int = 3) -> Path:
    torch.manual_seed(stage)
    config = tiny_action_prior_config(history_steps=history_steps).with_stage(stage)
    model = ActionPriorModel(config)
    rng = np.random.default_rng(0)
    states = rng.normal(0.3, 0.5, size=(200, config.state_dim))
    actions = rng.normal(-0.2, 0.8, size=(200, config.horizon, config.action_dim))
    tok = build_word_tokenizer(INSTRUCTIONS, root / f"tok-{stage}.json")
    assert tok.get_vocab_size() > 3
    return save_bundle(
        root / f"bundle-{stage}-{history_steps}",
        model,
        Normalizer.fit(states, actions),
        root / f"tok-{stage}.json",
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("action_prior_export")
    bundle = _bundle(root, 2)
    out = root / "onnx"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(out)]) == EXIT_OK
    return bundle, out


def test_graph_set_and_manifest(exported):
    _, out = exported
    manifest = load_manifest(out)
    assert set(manifest.graphs) == {"prefix", "history", "denoiser", "sampler"}
    assert manifest.config["family"] == "action_prior" and manifest.rtc_inputs
    history = manifest.graphs["history"]
    assert history.input_names == ("history_states", "history_actions", "history_mask")
    assert history.output_names == ("history_token",)
    assert manifest.graphs["prefix"].input_names == ("pixel_values", "input_ids", "text_mask", "state")
    assert {"latent", "history_token"} <= set(manifest.graphs["sampler"].input_names)


def test_fp32_parity_end_to_end(exported):
    bundle, out = exported
    report = verify(bundle, out, cases=3, progress=False)
    names = {c.name for c in report.comparisons}
    assert {
        "history.history_token",
        "predict.actions",
        "predict.actions[prefix]",
        "sampler.prefix_rows",
    } <= names
    assert report.passed and report.gated
    assert max(c.max_abs for c in report.comparisons) <= FP32_MAX_ABS
    assert main(["verify", "--bundle", str(bundle), "--onnx", str(out), "--cases", "1"]) == EXIT_OK


def test_onnx_runtime_policy_reads_the_history(exported):
    bundle, out = exported
    policy = load_policy(out, seed=0)
    assert isinstance(policy, OnnxActionPriorPolicy)
    info = policy.info
    assert info.backend == "onnxruntime" and info.history_steps == 3 and info.family == "action_prior"
    torch_policy = load_policy(bundle, backend="torch", seed=0)
    rng = np.random.default_rng(3)
    images = {"front": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}
    state = rng.normal(0.3, 0.5, 8).astype(np.float32)
    noise = rng.normal(size=(info.horizon, info.action_dim)).astype(np.float32)
    start = policy.predict(images, state, INSTRUCTIONS[0], noise)
    np.testing.assert_array_equal(
        policy.predict(images, state, INSTRUCTIONS[0], noise, history=History.empty(3, 8, 8)), start
    )
    past = History(rng.normal(0.3, 0.5, (4, 8)), rng.normal(-0.2, 0.8, (4, 8)), np.array([0, 0, 1, 1], bool))
    ours = policy.predict(images, state, INSTRUCTIONS[0], noise, history=past)
    assert not np.allclose(ours, start)
    ref = torch_policy.predict(images, state, INSTRUCTIONS[0], noise, history=past)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    committed = ours[:3]
    kept = policy.predict(images, state, INSTRUCTIONS[0], noise, committed, history=past)
    np.testing.assert_allclose(kept[:3], committed, atol=1e-5)
    with pytest.raises(PreprocessError, match="history"):
        policy.predict(images, state, INSTRUCTIONS[0], noise, history=History.empty(2, 8, 8))


def test_stage1_prior_and_stateless_exports(tmp_path):
    """A Stage-1 bundle exports a prefix graph reading only the state; K = 0 exports no history graph."""
    for stage, k in ((1, 3), (2, 0)):
        bundle = _bundle(tmp_path, stage, history_steps=k)
        out = tmp_path / f"onnx-{stage}-{k}"
        assert main(["onnx", "--bundle", str(bundle), "--out", str(out), "--optimize", "none"]) == 0
        manifest = load_manifest(out)
        if stage == 1:
            assert manifest.graphs["prefix"].input_names == ("state",)
        assert ("history" in manifest.graphs) == (k > 0)
        report = verify(bundle, out, cases=1, progress=False)
        assert report.passed, report.table()
        assert load_policy(out).info.history_steps == k


@pytest.mark.parametrize("history_steps", [3, 0])
def test_tensorrt_runtime_plan_runs_the_history_engine(tmp_path, history_steps):
    """The TensorRT backend's chain for this family (prefix, history -> sampler; a zero history token when
    K = 0), replayed with ONNX Runtime sessions as the engines, equals the ONNX Runtime policy."""
    from apt_policy.runtime.tensorrt_backend import engine_feeds

    bundle = _bundle(tmp_path, 2, history_steps)
    out = tmp_path / "onnx"
    assert main(["onnx", "--bundle", str(bundle), "--out", str(out)]) == EXIT_OK
    policy = load_policy(out, seed=0)
    rng = np.random.default_rng(5)
    images = {"front": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}
    state = rng.normal(0.3, 0.5, 8).astype(np.float32)
    noise = rng.normal(size=(policy.info.horizon, policy.info.action_dim)).astype(np.float32)
    past = History(rng.normal(0.3, 0.5, (4, 8)), rng.normal(-0.2, 0.8, (4, 8)), np.array([0, 1, 1, 1], bool))
    committed = policy.predict(images, state, INSTRUCTIONS[1], noise, history=past)[:2]
    x = policy.encoder.encode(images, state, INSTRUCTIONS[1], noise, committed, past)
    zero = None
    if history_steps == 0:
        latent = load_manifest(out).graphs["prefix"].outputs[0]
        zero = np.zeros((1, int(latent.shape[-1])), np.float32)
    feeds = engine_feeds(x, True, np.ones((1,), np.float32), zero)
    replayed = replay_engine_plan(out, feeds, rtc=True, family="action_prior")
    np.testing.assert_allclose(replayed, policy.run_inputs(x), atol=1e-6)
    assert int(x.prefix_len[0]) == 2
    if history_steps:  # the history changes the answer, so the history engine was really in the chain
        blank = policy.encoder.encode(images, state, INSTRUCTIONS[1], noise, committed, None)
        blank_feeds = engine_feeds(blank, True, np.ones((1,), np.float32))
        other = replay_engine_plan(out, blank_feeds, True, "action_prior")
        assert not np.allclose(other, replayed)


def test_apt_bench_times_this_family_on_both_backends(exported, tmp_path):
    """apt-bench ran APT's graph API on every runtime policy and failed on this family (an empty
    NotImplementedError); it runs the family's own graphs now, torch and ONNX Runtime in one run."""
    import json

    from apt_export.bench import main as bench

    bundle, out = exported
    report = tmp_path / "bench.json"
    args = ["--model", str(bundle), "--backend", "torch", "--vs", "onnxruntime", "--vs-model", str(out)]
    assert bench([*args, "--iters", "3", "--warmup", "1", "--threads", "1", "--json", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"torch", "onnxruntime"}
    assert all(0 < r["inference"]["p50"] <= r["inference"]["p99"] for r in results.values())
