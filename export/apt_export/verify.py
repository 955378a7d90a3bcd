"""Parity of an ONNX export against the PyTorch bundle: per graph and end to end, on fixed inputs.

Each case uses deterministic inputs (``example_inputs(seed)``). Per graph, both sides get the SAME
inputs (torch's prefix outputs feed both denoisers/samplers) so an error is attributed to one graph;
end to end, ONNX Runtime chains its own prefix into its sampler, as on the robot; ``predict`` runs
both policies from camera images, robot state and text through the shared preprocessing (compared
after normalising the actions, so every figure is in normalised units). Exports with real-time-chunking
inputs also get prefix cases: the sampler with a committed prefix in both modes (its prefix rows must
equal the prefix), the denoiser with a clean mask, and ``predict`` with a prefix in robot units.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import load_bundle
from apt_policy.runtime.manifest import load_manifest
from apt_policy.runtime.onnx_backend import OnnxRuntimePolicy
from apt_policy.runtime.torch_backend import APTPolicy
from tqdm import tqdm

from .onnx_export import example_inputs, rtc_example

FP32_MAX_ABS = 1e-4
FP16_MAX_ABS = 2e-2
FP16_MIN_COSINE = 0.999
FP16_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class Comparison:
    """Error statistics of one output over all cases."""

    name: str
    max_abs: float
    mean_abs: float
    cosine: float  # worst case


@dataclass(frozen=True)
class ParityReport:
    precision: str
    providers: list[str]
    cases: int
    gated: bool  # False: figures are informational (no fp16-capable provider)
    passed: bool
    note: str
    comparisons: list[Comparison]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def table(self) -> str:
        width = max([30, *(len(c.name) for c in self.comparisons)])
        lines = [f"{'output (normalised units)':{width}s} {'max abs':>11s} {'mean abs':>11s} {'cosine':>10s}"]
        for c in self.comparisons:
            lines.append(f"{c.name:{width}s} {c.max_abs:11.3e} {c.mean_abs:11.3e} {c.cosine:10.6f}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{self.precision} on {', '.join(self.providers)}, {self.cases} cases: {verdict} ({self.note})"
        )
        return "\n".join(lines)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if denom == 0 else float(a @ b / denom)


def _accumulate(store: dict[str, list], name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    if ours.shape != ref.shape:
        raise AssertionError(f"{name}: ONNX shape {ours.shape} != torch shape {ref.shape}")
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    store.setdefault(name, []).append((float(diff.max(initial=0.0)), float(diff.mean()), _cosine(ours, ref)))


def verify(
    bundle_dir: str | Path,
    onnx_dir: str | Path,
    cases: int = 4,
    providers: list[str] | None = None,
    progress: bool = True,
) -> ParityReport:
    """Compare torch and ONNX Runtime; gate fp32 on max abs, fp16 on cosine + max abs (GPU providers)."""
    manifest = load_manifest(onnx_dir)
    bundle = load_bundle(bundle_dir)
    if bundle.config.family == "action_prior":  # its own graph set (action_prior_graphs.py)
        from .action_prior_graphs import verify_action_prior

        stats, used = verify_action_prior(bundle, manifest, onnx_dir, cases, providers, progress)
        return _report(manifest, stats, used, cases, "" if manifest.rtc_inputs else "; no RTC inputs")
    model = bundle.model.eval()
    model.config = bundle.config.__class__.from_dict(manifest.config)  # same steps as the export
    if bundle.config.family == "action_distillation":  # its own graphs (distillation_graphs.py)
        from .distillation_graphs import verify_distillation

        stats, used = verify_distillation(bundle, manifest, onnx_dir, cases, providers, progress)
        return _report(manifest, stats, used, cases, "; one-pass family: no prefix cases")
    ort_policy = OnnxRuntimePolicy(onnx_dir, manifest=manifest, providers=providers)
    sessions = {
        name: ort_policy._sessions[name]
        if name in ort_policy._sessions
        else _session(onnx_dir, manifest, name, ort_policy)
        for name in ("prefix", "denoiser", "sampler")
    }
    torch_policy = APTPolicy(model, bundle.normalizer, bundle.tokenizer_path)
    rtc = manifest.rtc_inputs  # exports made before real-time chunking have no prefix inputs
    stats: dict[str, list] = {}
    for seed in tqdm(range(cases), desc="verify", unit="case", disable=not progress):
        x = example_inputs(model, seed=seed)
        with torch.inference_mode():
            prefix = model.encode_prefix(x["pixel_values"], x["input_ids"], x["text_mask"])
            velocity = model.velocity(*prefix, x["state"], x["x_t"], x["t"])
            actions = model.sample(*prefix, x["state"], x["noise"])
        feeds = {k: v.numpy() for k, v in x.items()}
        feeds.update({n: t.numpy() for n, t in zip(model.prefix_names, prefix, strict=True)})
        ort_prefix = sessions["prefix"].run(list(model.prefix_names), _pick(sessions["prefix"], feeds))
        for name, ours, ref in zip(model.prefix_names, ort_prefix, prefix, strict=True):
            _accumulate(stats, f"prefix.{name}", ours, ref.numpy())
        (v,) = sessions["denoiser"].run(None, _pick(sessions["denoiser"], feeds))
        _accumulate(stats, "denoiser.velocity", v, velocity.numpy())
        (a,) = sessions["sampler"].run(None, _pick(sessions["sampler"], feeds))
        _accumulate(stats, "sampler.actions", a, actions.numpy())
        e2e = ort_policy.run(
            feeds["pixel_values"], feeds["input_ids"], feeds["text_mask"], feeds["state"], feeds["noise"]
        )
        _accumulate(stats, "end_to_end.actions", e2e, actions.numpy())
        images, state, instruction = _observation(torch_policy, seed)
        ours = ort_policy.predict(images, state, instruction, feeds["noise"][0])
        ref = torch_policy.predict(images, state, instruction, feeds["noise"][0])
        norm = bundle.normalizer.normalize_actions
        _accumulate(stats, "predict.actions", norm(ours), norm(ref))
        if rtc:
            _rtc_cases(stats, model, sessions, feeds, prefix, x, seed)
            d = 1 + seed % (model.config.horizon - 1) if model.config.horizon > 1 else 1
            committed = bundle.normalizer.unnormalize_actions(feeds["prefix"][0, :d])  # robot units
            ours = ort_policy.predict(images, state, instruction, feeds["noise"][0], committed)
            ref = torch_policy.predict(images, state, instruction, feeds["noise"][0], committed)
            _accumulate(stats, "predict.actions[prefix]", norm(ours), norm(ref))
    rtc_note = "" if rtc else "; export without RTC inputs: no prefix cases"
    return _report(manifest, stats, list(ort_policy.providers), cases, rtc_note)


def _report(manifest, stats: dict[str, list], used: list[str], cases: int, rtc_note: str) -> ParityReport:
    """Gate the accumulated comparisons by the export's precision (fp32 max abs; fp16 cosine + max abs on
    GPU)."""
    comparisons = [
        Comparison(name, max(s[0] for s in v), float(np.mean([s[1] for s in v])), min(s[2] for s in v))
        for name, v in stats.items()
    ]
    if manifest.precision == "fp32":
        worst = max(c.max_abs for c in comparisons)
        passed, gated = worst <= FP32_MAX_ABS, True
        note = f"fp32 gate: max abs {worst:.2e} <= {FP32_MAX_ABS:g}{rtc_note}"
    elif manifest.precision == "int8":
        passed, gated = True, False
        note = "int8 (dynamic quantisation) is not gated: figures are informational, judge it closed-loop"
    elif any(p in used for p in FP16_PROVIDERS):
        e2e = next(c for c in comparisons if c.name.startswith("end_to_end"))
        passed = e2e.cosine >= FP16_MIN_COSINE and e2e.max_abs <= FP16_MAX_ABS
        gated = True
        note = f"fp16 gate on actions: cosine >= {FP16_MIN_COSINE}, max abs <= {FP16_MAX_ABS}{rtc_note}"
    else:
        passed, gated = True, False
        note = f"fp16 gate skipped: no fp16-capable provider here (CPU); figures are informational{rtc_note}"
    return ParityReport(manifest.precision, used, cases, gated, passed, note, comparisons)


def _rtc_cases(
    stats: dict[str, list],
    model: APTModel,
    sessions: dict,
    feeds: dict[str, np.ndarray],
    prefix: tuple[torch.Tensor, ...],
    x: dict[str, torch.Tensor],
    seed: int,
) -> None:
    """Real-time chunking, same inputs on both sides: the sampler with a committed prefix of d = 1..H-1
    rows in both modes (the result's prefix rows must equal the prefix), the denoiser with a clean mask."""
    cfg = model.config
    d = 1 + seed % (cfg.horizon - 1) if cfg.horizon > 1 else 1
    for trained in (False, True):
        r = rtc_example(cfg.horizon, cfg.action_dim, prefix_len=d, trained=trained, seed=seed)
        mode = "trained" if trained else "training-free"
        with torch.inference_mode():
            rtc_in = (r["prefix"], r["prefix_len"], r["rtc_trained"])
            ref = model.sample(*prefix, x["state"], x["noise"], *rtc_in)
            velocity = model.velocity(*prefix, x["state"], x["x_t"], x["t"], r["clean_mask"])
        rtc_feeds = {**feeds, **{k: v.numpy() for k, v in r.items()}}
        (a,) = sessions["sampler"].run(None, _pick(sessions["sampler"], rtc_feeds))
        _accumulate(stats, f"sampler.actions[rtc {mode}]", a, ref.numpy())
        _accumulate(stats, "sampler.prefix_rows", a[:, :d], r["prefix"][:, :d].numpy())
        if trained:
            (v,) = sessions["denoiser"].run(None, _pick(sessions["denoiser"], rtc_feeds))
            _accumulate(stats, "denoiser.velocity[clean]", v, velocity.numpy())


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def _observation(policy: APTPolicy, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, str]:
    """Camera-sized uint8 images (resized by the shared preprocessing), a state near the data, a phrase."""
    rng = np.random.default_rng(1000 + seed)
    h, w = policy.config.image_size
    images = {
        c: rng.integers(0, 256, (2 * h + 7, 2 * w + 5, 3), dtype=np.uint8) for c in policy.config.cameras
    }
    stats = policy.normalizer.state
    state = (stats.mean + stats.std * rng.standard_normal(stats.dim)).astype(np.float32)
    words = ["reach", "the", "red", "blue", "cube", "block", "left", "right"]
    return images, state, " ".join(rng.choice(words, size=1 + seed % 5))


def _pick(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The session's inputs from ``feeds``, cast to the dtype the graph declares (fp16 prefix tensors)."""
    return {
        i.name: feeds[i.name].astype(_ORT_TYPES.get(i.type, feeds[i.name].dtype))
        for i in session.get_inputs()
    }


def _session(onnx_dir: str | Path, manifest, name: str, policy: OnnxRuntimePolicy):
    import onnxruntime as ort

    return ort.InferenceSession(str(Path(onnx_dir) / manifest.graphs[name].file), providers=policy.providers)
