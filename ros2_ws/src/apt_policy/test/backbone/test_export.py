"""The backbone exports to one ONNX graph that ONNX Runtime runs with the PyTorch module's results."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from apt_policy.model.backbone import Qwen3VLBackboneConfig, load_qwen3vl_checkpoint
from apt_policy.model.backbone.export_onnx import INPUT_NAMES, OUTPUT_NAMES, export_backbone_onnx
from hf_reference import normalise, random_hf_model, random_inputs, save_hf_model

torch.set_num_threads(2)
ARCH = Qwen3VLBackboneConfig.tiny(num_cameras=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    # Activations up to ~5: ONNX Runtime's kernels differ from PyTorch's by a few fp32 ulps of that.
    ckpt = save_hf_model(random_hf_model(ARCH, seed=5, scale=0.3), tmp_path_factory.mktemp("ckpt"))
    return load_qwen3vl_checkpoint(
        ckpt, num_cameras=2, image_size=ARCH.image_size, max_text_tokens=ARCH.max_text_tokens
    )


@pytest.fixture(scope="module")
def inputs(model):
    images, ids, mask = random_inputs(model.config, batch=1, seed=7)
    return normalise(images), ids, mask


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, inputs):
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds), strict=True))


def test_fp32_onnx_matches_pytorch(model, inputs, tmp_path):
    path = export_backbone_onnx(model, tmp_path / "backbone.onnx", dynamic_batch=True)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    for graph_input in session.get_inputs():  # only the batch axis is symbolic
        assert graph_input.shape[0] == "batch" and all(isinstance(d, int) for d in graph_input.shape[1:])
    got = _run(session, inputs)
    with torch.no_grad():
        ref = model(*inputs)
    diff = np.abs(got["hidden_states"] - ref.hidden_states.numpy()).max()
    assert np.abs(ref.hidden_states.numpy()).max() > 1.0
    assert diff <= 1e-5, f"ONNX Runtime vs PyTorch max abs diff {diff:.3g}"
    np.testing.assert_array_equal(got["vision_mask"], ref.vision_mask.numpy())
    np.testing.assert_array_equal(got["language_mask"], ref.language_mask.numpy())

    # The graph is not specialised to the example values: a different instruction with padding gives
    # a different (still matching) answer.
    other = (inputs[0], torch.roll(inputs[1], 1, dims=1), torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]]))
    got2 = _run(session, other)
    with torch.no_grad():
        ref2 = model(*other)
    assert np.abs(got2["hidden_states"] - ref2.hidden_states.numpy()).max() <= 1e-5
    assert np.abs(got2["hidden_states"] - got["hidden_states"]).max() > 1e-2
    np.testing.assert_array_equal(got2["language_mask"], ref2.language_mask.numpy())

    # Batch of both: each sample gives what it gives alone.
    both = _run(session, tuple(torch.cat([a, b]) for a, b in zip(inputs, other, strict=True)))
    assert both["hidden_states"].shape[1] == 2
    assert np.abs(both["hidden_states"][:, :1] - got["hidden_states"]).max() <= 1e-5
    assert np.abs(both["hidden_states"][:, 1:] - got2["hidden_states"]).max() <= 1e-5


def test_fp16_onnx_keeps_softmax_and_norms_in_fp32(model, inputs, tmp_path):
    path = export_backbone_onnx(model, tmp_path / "backbone_fp16.onnx", dtype=torch.float16)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    fp32_ops = [n for n in graph.node if n.op_type in ("Softmax", "LayerNormalization", "ReduceMean")]
    softmaxes = [n for n in fp32_ops if n.op_type == "Softmax"]
    assert len(softmaxes) == ARCH.vision.depth + ARCH.text.num_hidden_layers
    for node in fp32_ops:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, f"{node.op_type} {node.name} not in float32"
    assert any(types.get(t.name) == onnx.TensorProto.FLOAT16 for t in graph.initializer), "weights not fp16"

    got = _run(_session(path), inputs)
    assert got["hidden_states"].dtype == np.float16
    with torch.no_grad():
        ref = model(*inputs).hidden_states.numpy()
    h = got["hidden_states"].astype(np.float32)
    assert np.isfinite(h).all()
    cos = (h * ref).sum(-1) / (np.linalg.norm(h, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() > 0.999, f"fp16 vs fp32 worst cosine {cos.min():.5f}"
