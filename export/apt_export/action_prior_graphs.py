"""The action-prior family's graph set and its parity check (``apt-export onnx`` / ``verify`` dispatch here
on ``config.family == "action_prior"``).

    prefix.onnx    pixel_values, input_ids, text_mask, state        -> latent
    history.onnx   history_states, history_actions, history_mask   -> history_token   (K > 0 only)
    denoiser.onnx  latent, history_token, state, x_t, t, clean_mask -> velocity
    sampler.onnx   latent, history_token, state, noise, prefix, prefix_len, rtc_trained -> actions

Same conventions as APT's graphs (onnx_export.py): batch 1, static shapes, unused inputs pruned by the
exporter, the Euler loop unrolled in the sampler, the RTC inputs traced with a non-empty prefix. fp32, fp16
and int8: an fp16 export computes in float16 as APT's does (onnx_export.to_half), but every graph boundary
stays float32, the latent and the history token included (one token each: nothing is saved by halving them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from apt_policy.core.action_prior import HISTORY_INPUTS
from apt_policy.model.action_prior import ActionPriorModel
from apt_policy.runtime.manifest import RTC_DENOISER_INPUTS, RTC_SAMPLER_INPUTS
from apt_policy.runtime.onnx_action_prior import OnnxActionPriorPolicy
from apt_policy.runtime.policy import History
from apt_policy.runtime.torch_backend import ActionPriorPolicy


class _Prefix(torch.nn.Module):
    def __init__(self, model: ActionPriorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, text_mask, state):
        return self.model.encode_prefix(pixel_values, input_ids, text_mask, state)


class _History(torch.nn.Module):
    def __init__(self, model: ActionPriorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, history_states, history_actions, history_mask):
        return self.model.encode_history(history_states, history_actions, history_mask)


class _Denoiser(torch.nn.Module):
    def __init__(self, model: ActionPriorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.velocity(*args)


class _Sampler(torch.nn.Module):
    def __init__(self, model: ActionPriorModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.sample(*args)


def history_example(model: ActionPriorModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """K random steps, the first ``seed % (K + 1)`` of them invalid (episode start)."""
    cfg = model.config
    k = max(model.history_steps, 1)
    g = torch.Generator().manual_seed(20_000 + seed)
    mask = (torch.arange(k) >= seed % (k + 1)).float()[None]
    return {
        "history_states": torch.randn((1, k, cfg.state_dim), generator=g) * mask[..., None],
        "history_actions": torch.randn((1, k, cfg.action_dim), generator=g) * mask[..., None],
        "history_mask": mask,
    }


def graph_jobs(
    model: ActionPriorModel, x: dict[str, torch.Tensor], rtc_inputs: bool, wrap=None
) -> tuple[list[tuple[str, tuple, list[str], list[str]]], dict[str, torch.nn.Module]]:
    """(name, args, input names, output names) per graph and the module to trace for each; ``wrap``
    (module, input names) -> module puts the fp16 casts around a graph (onnx_export._Half)."""
    wrap = wrap or (lambda m, names: m)
    x.update(history_example(model, seed=1))
    prefix_in = ["pixel_values", "input_ids", "text_mask", "state"]
    with torch.inference_mode():
        latent = wrap(_Prefix(model), prefix_in)(*(x[n] for n in prefix_in))
        history = wrap(_History(model), list(HISTORY_INPUTS))(*(x[n] for n in HISTORY_INPUTS))
    x["latent"], x["history_token"] = latent.clone(), history.clone()
    cond = ["latent", "history_token", "state"]
    denoiser_in = [*cond, "x_t", "t"]
    sampler_in = [*cond, "noise"]
    if rtc_inputs:
        denoiser_in += RTC_DENOISER_INPUTS
        sampler_in += RTC_SAMPLER_INPUTS
    jobs = [("prefix", tuple(x[n] for n in prefix_in), prefix_in, ["latent"])]
    if model.history_steps > 0:
        jobs.append(("history", tuple(x[n] for n in HISTORY_INPUTS), list(HISTORY_INPUTS), ["history_token"]))
    jobs += [
        ("denoiser", tuple(x[n] for n in denoiser_in), denoiser_in, ["velocity"]),
        ("sampler", tuple(x[n] for n in sampler_in), sampler_in, ["actions"]),
    ]
    modules = {
        "prefix": _Prefix(model),
        "history": _History(model),
        "denoiser": _Denoiser(model),
        "sampler": _Sampler(model),
    }
    return jobs, modules


def verify_action_prior(
    bundle: Any, manifest: Any, onnx_dir: str | Path, cases: int, providers: list[str] | None, progress: bool
) -> tuple[dict[str, list], list[str]]:
    """Per graph (same inputs both sides) and end to end (ONNX Runtime chains its own graphs; ``predict``
    from images, state, text and a History in robot units), with and without an RTC prefix."""
    from tqdm import tqdm

    from .onnx_export import example_inputs, rtc_example
    from .verify import _accumulate, _observation, _pick

    model: ActionPriorModel = bundle.model.eval()
    model.config = bundle.config.__class__.from_dict(manifest.config)
    ort_policy = OnnxActionPriorPolicy(onnx_dir, manifest=manifest, providers=providers)
    torch_policy = ActionPriorPolicy(model, bundle.normalizer, bundle.tokenizer_path)
    sessions = ort_policy._sessions
    extra = {}
    if "denoiser" in manifest.graphs:
        import onnxruntime as ort

        file = str(Path(onnx_dir) / manifest.graphs["denoiser"].file)
        extra["denoiser"] = ort.InferenceSession(file, providers=ort_policy.providers)
    stats: dict[str, list] = {}
    cfg = model.config
    norm = bundle.normalizer
    for seed in tqdm(range(cases), desc="verify", unit="case", disable=not progress):
        x = example_inputs(model, seed=seed)  # type: ignore[arg-type]
        x.update(history_example(model, seed))
        d = 1 + seed % (cfg.horizon - 1) if cfg.horizon > 1 else 1
        with torch.inference_mode():
            latent = model.encode_prefix(x["pixel_values"], x["input_ids"], x["text_mask"], x["state"])
            history = model.encode_history(*(x[n] for n in HISTORY_INPUTS))
            velocity = model.velocity(latent, history, x["state"], x["x_t"], x["t"])
            actions = model.sample(latent, history, x["state"], x["noise"])
        feeds = {k: v.numpy() for k, v in x.items()}
        feeds.update(latent=latent.numpy(), history_token=history.numpy())
        (lat,) = sessions["prefix"].run(None, _pick(sessions["prefix"], feeds))
        _accumulate(stats, "prefix.latent", lat, latent.numpy())
        if "history" in sessions:
            (tok,) = sessions["history"].run(None, _pick(sessions["history"], feeds))
            _accumulate(stats, "history.history_token", tok, history.numpy())
        if "denoiser" in extra:
            (v,) = extra["denoiser"].run(None, _pick(extra["denoiser"], feeds))
            _accumulate(stats, "denoiser.velocity", v, velocity.numpy())
        (a,) = sessions["sampler"].run(None, _pick(sessions["sampler"], feeds))
        _accumulate(stats, "sampler.actions", a, actions.numpy())
        for trained in (False, True) if manifest.rtc_inputs else ():
            r = rtc_example(cfg.horizon, cfg.action_dim, prefix_len=d, trained=trained, seed=seed)
            with torch.inference_mode():
                ref = model.sample(
                    latent, history, x["state"], x["noise"], r["prefix"], r["prefix_len"], r["rtc_trained"]
                )
            rtc_feeds = {**feeds, **{k: v.numpy() for k, v in r.items()}}
            (a,) = sessions["sampler"].run(None, _pick(sessions["sampler"], rtc_feeds))
            mode = "trained" if trained else "training-free"
            _accumulate(stats, f"sampler.actions[rtc {mode}]", a, ref.numpy())
            _accumulate(stats, "sampler.prefix_rows", a[:, :d], r["prefix"][:, :d].numpy())
        images, state, instruction = _observation(torch_policy, seed)  # type: ignore[arg-type]
        k = model.history_steps
        valid = feeds["history_mask"][0, -k:].astype(bool) if k else np.zeros(0, bool)
        past = History(
            norm.unnormalize_state(feeds["history_states"][0, -k:]) if k else np.zeros((0, cfg.state_dim)),
            norm.unnormalize_actions(feeds["history_actions"][0, -k:])
            if k
            else np.zeros((0, cfg.action_dim)),
            valid,
        )
        noise = feeds["noise"][0]
        ours = ort_policy.predict(images, state, instruction, noise, history=past)
        ref_a = torch_policy.predict(images, state, instruction, noise, history=past)
        _accumulate(stats, "predict.actions", norm.normalize_actions(ours), norm.normalize_actions(ref_a))
        if manifest.rtc_inputs:
            committed = norm.unnormalize_actions(
                rtc_example(cfg.horizon, cfg.action_dim, d, True, seed)["prefix"][0, :d].numpy()
            )
            ours = ort_policy.predict(images, state, instruction, noise, committed, history=past)
            ref_a = torch_policy.predict(images, state, instruction, noise, committed, history=past)
            _accumulate(
                stats, "predict.actions[prefix]", norm.normalize_actions(ours), norm.normalize_actions(ref_a)
            )
    return stats, list(ort_policy.providers)
