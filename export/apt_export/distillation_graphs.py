"""The action-distillation family's ONNX graphs and their parity check (docs/ACTION_DISTILLATION.md).

    prefix.onnx   pixel_values, input_ids, text_mask -> sequence, deepstack, key_mask
                  (the frozen vision tower and embeddings: DistillationModel.encode_prefix)
    sampler.onnx  sequence, deepstack, key_mask, state -> actions
                  (the head: every decoder layer over the sequence + state token + action tokens, the
                  mapper and the teacher's decoder; one pass, no noise input, no RTC inputs)

The head is exported under the manifest's ``sampler`` role, "the graph that gives the actions", so every
backend (ONNX Runtime, TensorRT) runs it as it runs APT's sampler; the manifest's ``steps`` is 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from apt_policy.model.action_distillation import DistillationModel

FAMILY = "action_distillation"


class _Head(torch.nn.Module):
    def __init__(self, model: DistillationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, sequence, deepstack, key_mask, state):
        return self.model.head(sequence, deepstack, key_mask, state)


def graph_jobs(
    model: DistillationModel, x: dict[str, torch.Tensor], prefix: tuple[torch.Tensor, ...], prefix_module: Any
) -> tuple[list[tuple[str, tuple, list[str], list[str]]], dict[str, torch.nn.Module]]:
    """(name, example args, input names, output names) per graph and the modules to trace."""
    names = list(model.prefix_names)
    head_in = [*names, "state"]
    jobs = [
        (
            "prefix",
            (x["pixel_values"], x["input_ids"], x["text_mask"]),
            ["pixel_values", "input_ids", "text_mask"],
            names,
        ),
        ("sampler", (*prefix, x["state"]), head_in, ["actions"]),
    ]
    return jobs, {"prefix": prefix_module, "sampler": _Head(model)}


def verify_distillation(
    bundle: Any, manifest: Any, onnx_dir: str | Path, cases: int, providers: list[str] | None, progress: bool
) -> tuple[dict[str, list], list[str]]:
    """Same inputs through torch and ONNX Runtime: each graph, the two chained, and predict() on images."""
    from apt_policy.runtime.distillation_torch import DistillationPolicy
    from apt_policy.runtime.onnx_backend import OnnxRuntimePolicy
    from tqdm import tqdm

    from .onnx_export import example_inputs
    from .verify import _accumulate, _observation, _pick

    model = bundle.model.eval()
    ort_policy = OnnxRuntimePolicy(onnx_dir, manifest=manifest, providers=providers)
    sessions = ort_policy._sessions
    torch_policy = DistillationPolicy(model, bundle.normalizer, bundle.tokenizer_path)
    stats: dict[str, list] = {}
    for seed in tqdm(range(cases), desc="verify", unit="case", disable=not progress):
        x = example_inputs(model, seed=seed)
        with torch.inference_mode():
            prefix = model.encode_prefix(x["pixel_values"], x["input_ids"], x["text_mask"])
            actions = model.head(*prefix, x["state"])
        feeds = {k: v.numpy() for k, v in x.items()}
        feeds.update({n: t.numpy() for n, t in zip(model.prefix_names, prefix, strict=True)})
        ort_prefix = sessions["prefix"].run(list(model.prefix_names), _pick(sessions["prefix"], feeds))
        for name, ours, ref in zip(model.prefix_names, ort_prefix, prefix, strict=True):
            _accumulate(stats, f"prefix.{name}", ours, ref.numpy())
        (a,) = sessions["sampler"].run(None, _pick(sessions["sampler"], feeds))
        _accumulate(stats, "head.actions", a, actions.numpy())
        e2e = ort_policy.run(
            feeds["pixel_values"], feeds["input_ids"], feeds["text_mask"], feeds["state"], feeds["noise"]
        )
        _accumulate(stats, "end_to_end.actions", e2e, actions.numpy())
        images, state, instruction = _observation(torch_policy, seed)  # type: ignore[arg-type]
        norm = bundle.normalizer.normalize_actions
        ours = ort_policy.predict(images, state, instruction)
        ref = torch_policy.predict(images, state, instruction)
        _accumulate(stats, "predict.actions", norm(ours), norm(ref))
        assert np.isfinite(ours).all()
    return stats, list(ort_policy.providers)
