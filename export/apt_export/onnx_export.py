"""Bundle -> ONNX export directory: prefix graph, one-step denoiser, unrolled sampler, manifest.

Graphs (batch 1, static shapes; exporter: torch.onnx legacy TorchScript path, which gives scoped node
names and folds constants; the dynamo path is selectable with ``exporter="dynamo"``):

    prefix.onnx    pixel_values, input_ids, text_mask          -> model.prefix_names
    denoiser.onnx  prefix..., state, x_t, t, clean_mask        -> velocity
    sampler.onnx   prefix..., state, noise, prefix, prefix_len, rtc_trained
                                                               -> actions (normalised, Euler unrolled)

Real-time chunking inputs (docs/EXPORT.md; ``rtc_inputs=False`` exports the graphs without them, as
before): ``prefix`` f32 [1, H, A] the committed actions (normalised; rows from ``prefix_len`` on are
ignored), ``prefix_len`` i64 [1] (0: exactly the prefix-less sampler), ``rtc_trained`` f32 [1] (1: the
prefix rows are clean tokens, trained RTC; 0: training-free hard prefix); the denoiser's ``clean_mask``
f32 [1, H] marks action tokens at the clean flow time (1) for custom loops.

Inputs a graph does not use are pruned by the exporter, so the manifest records each graph's real
inputs. fp16 exports trace the model in float16 (weights, matmuls, activations) while softmax, norms,
rotary and timestep embeddings and the flow integration (x, t, dt) stay float32 (the model computes
them so; plain LayerNorms are kept float32 here). Observation inputs, noise, state, t and the actions
stay float32 at the graph boundary; prefix keys/values travel between graphs in float16.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import load_bundle
from apt_policy.runtime.manifest import (
    RTC_DENOISER_INPUTS,
    RTC_SAMPLER_INPUTS,
    GraphSpec,
    Manifest,
    TensorSpec,
    hash_files,
)
from tqdm import tqdm

OPSET = 18
PRECISIONS = ("fp32", "fp16", "int8")
OPTIMIZE = ("ort", "transformer", "none")
EXTERNAL_DATA_THRESHOLD = 1 << 30  # graphs with more weight bytes than this store them in <graph>.onnx.data
TOKENIZER_FILE = "tokenizer.json"
FP32_COMPUTED = (
    "softmax",
    "RMSNorm",
    "LayerNorm",
    "rotary embedding",
    "timestep embedding",
    "Euler integration",
)


class ExportError(RuntimeError):
    """The export failed a check (ONNX checker, shape inference, unexpected graph interface)."""


class _Prefix(torch.nn.Module):
    def __init__(self, model: APTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, text_mask):
        return self.model.encode_prefix(pixel_values, input_ids, text_mask)


class _Denoiser(torch.nn.Module):
    def __init__(self, model: APTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.velocity(*args)


class _Sampler(torch.nn.Module):
    def __init__(self, model: APTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.sample(*args)


def example_inputs(model: APTModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic batch-of-one inputs of the right shapes (also used by verify)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    vocab = int(cfg.backbone.get("text", {}).get("vocab_size", 2) or 2)
    ids = torch.randint(2, max(3, vocab), (1, cfg.max_instruction_tokens), generator=g)
    mask = torch.zeros_like(ids)
    mask[:, : max(1, (seed % cfg.max_instruction_tokens) + 1)] = 1
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return {
        "pixel_values": torch.rand((1, len(cfg.cameras), 3, *cfg.image_size), generator=g) * 2 - 1,
        "input_ids": ids,
        "text_mask": mask,
        "state": torch.randn((1, cfg.state_dim), generator=g),
        "noise": torch.randn((1, cfg.horizon, cfg.action_dim), generator=g),
        "x_t": torch.randn((1, cfg.horizon, cfg.action_dim), generator=g),
        "t": torch.rand((1,), generator=g),
        **rtc_example(cfg.horizon, cfg.action_dim, prefix_len=0, trained=False, seed=seed),
    }


def rtc_example(
    horizon: int, action_dim: int, prefix_len: int, trained: bool, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Real-time-chunking inputs: a random committed prefix (normalised units), its length, the mode and
    the denoiser's clean mask for the same rows (all clean rows only in trained mode)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    clean = (torch.arange(horizon) < prefix_len).float()[None] * float(trained)
    return {
        "prefix": torch.randn((1, horizon, action_dim), generator=g),
        "prefix_len": torch.tensor([prefix_len], dtype=torch.int64),
        "rtc_trained": torch.tensor([float(trained)]),
        "clean_mask": clean,
    }


def _tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in t.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        specs.append(TensorSpec(v.name, shape, dtype))
    return tuple(specs)


# The action-prior family's latent and history token cross between its graphs in float32 (one token
# each), so its history inputs, latent and history token are cast here too.
_HALF_INPUTS = frozenset(
    {"pixel_values", "state", "noise", "x_t", "latent", "history_token", "history_states", "history_actions"}
)


class _Half(torch.nn.Module):
    """Graph I/O in float32 around a float16 model: casts the float inputs that feed weights to float16
    (the timestep t and prefix tensors stay as they are) and float16 outputs back to float32."""

    def __init__(self, inner: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        self.half_inputs = [name in _HALF_INPUTS for name in input_names]

    def forward(self, *args):
        args = tuple(a.half() if cast else a for a, cast in zip(args, self.half_inputs, strict=True))
        out = self.inner(*args)
        if isinstance(out, torch.Tensor):
            return out.float()
        return out  # prefix tensors keep their dtype (keys/values float16, masks float32)


def to_half(model: APTModel) -> APTModel:
    """float16 weights and matmuls. The model computes softmax, RMSNorm, rotary and the timestep embedding
    in float32 itself and integrates x in float32 (APTModel.sample); plain LayerNorms are kept float32
    here with casts around them."""
    model = model.half()
    for module in model.modules():
        if type(module) is torch.nn.LayerNorm:
            module.float()
            module.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))
            module.register_forward_hook(lambda _m, _args, out: out.half())
    return model


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(
        int(np.prod(t.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in model.graph.initializer
    )


def _export_one(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    exporter: str,
    opset: int,
) -> None:
    if exporter == "legacy":
        with warnings.catch_warnings():
            # The model's shape checks are constants for fixed shapes: the tracer's warnings are expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    elif exporter == "dynamo":
        program = torch.onnx.export(
            module, args, input_names=input_names, output_names=output_names, opset_version=opset, dynamo=True
        )
        program.save(str(path), external_data=True)
    else:
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")


def _finish_graph(tmp_path: Path, out_dir: Path, name: str, threshold: int) -> GraphSpec:
    """Load, check, infer shapes, save (external data when large), describe."""
    model = onnx.load(str(tmp_path))
    large = _weight_bytes(model) > threshold
    file = f"{name}.onnx"
    data = f"{file}.data"
    if large:
        onnx.save_model(
            model,
            str(out_dir / file),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data,
        )
        onnx.checker.check_model(str(out_dir / file), full_check=False)
        onnx.shape_inference.infer_shapes_path(str(out_dir / file), strict_mode=True)
    else:
        onnx.checker.check_model(model, full_check=False)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.save_model(model, str(out_dir / file))
    return GraphSpec(
        file=file,
        inputs=_tensor_specs(model.graph.input),
        outputs=_tensor_specs(model.graph.output),
        external_data=(data,) if large else (),
    )


def _versions() -> dict[str, str]:
    import apt_policy

    import apt_export

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "apt_policy": apt_policy.__version__}
    versions["apt_export"] = getattr(apt_export, "__version__", "0.1.0")
    return versions


def _apt_jobs(model: APTModel, x: dict[str, torch.Tensor], wrap, prefix_names: list[str], rtc_inputs: bool):
    """APT's graphs: (name, args, input names, output names) per graph and the modules to trace."""
    config = model.config
    prefix_in = ["pixel_values", "input_ids", "text_mask"]
    with torch.inference_mode():
        prefix = wrap(_Prefix(model), prefix_in)(x["pixel_values"], x["input_ids"], x["text_mask"])
    prefix = tuple(t.clone() for t in prefix)  # inference tensors cannot be traced
    denoiser_in = [*prefix_names, "state", "x_t", "t"]
    sampler_in = [*prefix_names, "state", "noise"]
    if rtc_inputs:  # traced with a non-empty prefix so that no branch of the RTC path folds away
        x.update(rtc_example(config.horizon, config.action_dim, prefix_len=1, trained=True))
        denoiser_in += RTC_DENOISER_INPUTS
        sampler_in += RTC_SAMPLER_INPUTS
    jobs = [
        ("prefix", (x["pixel_values"], x["input_ids"], x["text_mask"]), prefix_in, prefix_names),
        ("denoiser", (*prefix, *(x[n] for n in denoiser_in[len(prefix) :])), denoiser_in, ["velocity"]),
        ("sampler", (*prefix, *(x[n] for n in sampler_in[len(prefix) :])), sampler_in, ["actions"]),
    ]
    modules = {"prefix": _Prefix(model), "denoiser": _Denoiser(model), "sampler": _Sampler(model)}
    return jobs, modules


def export_onnx(
    bundle_dir: str | Path,
    out_dir: str | Path,
    precision: str = "fp32",
    steps: int | None = None,
    opset: int = OPSET,
    exporter: str = "legacy",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    overwrite: bool = False,
    progress: bool = True,
    rtc_inputs: bool = True,
    optimize: str = "ort",
) -> Manifest:
    """Export a bundle to ``out_dir`` (written to a temp dir first, moved in place when complete).

    ``rtc_inputs=False`` leaves the real-time-chunking inputs out of the sampler and denoiser (the graphs
    as exported before RTC existed; the runtime then refuses a prefix). ``precision`` int8: traced in
    fp32, weight MatMuls quantised dynamically (quantize.py). ``optimize``: ``ort`` saves ONNX Runtime's
    optimised graph beside each graph (optimize.py), ``transformer`` runs the transformer optimizer's
    fusions before that, ``none`` saves none.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if optimize not in OPTIMIZE:
        raise ValueError(f"optimize must be one of {OPTIMIZE}, got {optimize!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    bar = tqdm(total=7, desc="apt-export onnx", unit="step", disable=not progress)
    bar.set_postfix_str("loading bundle")
    bundle = load_bundle(bundle_dir)
    config = bundle.config
    if steps is not None:
        if steps <= 0:
            raise ValueError(f"--steps must be > 0, got {steps}")
        config = dataclasses.replace(config, sampling_steps=int(steps)).validate()
    model = bundle.model.eval()
    model.config = config
    distill = config.family == "action_distillation"  # its own graphs: distillation_graphs.py
    if distill and precision == "fp16":
        raise ValueError(
            "action_distillation: export fp32 (TensorRT builds fp16 engines from it); fp16 ONNX is "
            "written for the apt and action_prior families"
        )
    rtc_inputs = rtc_inputs and not distill
    if precision == "fp16":  # int8 is traced in fp32 and quantised after export
        model = to_half(model)
    bar.update()
    x = example_inputs(model)
    prefix_names = list(model.prefix_names)
    staging = Path(tempfile.mkdtemp(prefix=".apt-export-", dir=out.parent if out.parent.exists() else None))
    try:
        wrap = (lambda m, names: _Half(m, names)) if precision == "fp16" else (lambda m, names: m)
        if config.family == "action_prior":  # its own graph set (action_prior_graphs.py)
            from .action_prior_graphs import graph_jobs as prior_jobs

            if rtc_inputs:
                x.update(rtc_example(config.horizon, config.action_dim, prefix_len=1, trained=True))
            jobs, modules = prior_jobs(model, x, rtc_inputs, wrap)
        elif distill:  # its own graphs (distillation_graphs.py), on APT's prefix graph
            from .distillation_graphs import graph_jobs as distill_jobs

            with torch.inference_mode():
                prefix = _Prefix(model)(x["pixel_values"], x["input_ids"], x["text_mask"])
            prefix = tuple(t.clone() for t in prefix)  # inference tensors cannot be traced
            jobs, modules = distill_jobs(model, x, prefix, _Prefix(model))  # type: ignore[arg-type]
        else:
            jobs, modules = _apt_jobs(model, x, wrap, prefix_names, rtc_inputs)
        graphs: dict[str, GraphSpec] = {}
        with tempfile.TemporaryDirectory() as raw_dir:
            for name, args, ins, outs in jobs:
                bar.set_postfix_str(f"exporting {name}")
                raw = Path(raw_dir) / f"{name}.onnx"
                with torch.no_grad():
                    _export_one(wrap(modules[name], ins), args, ins, outs, raw, exporter, opset)
                try:
                    graphs[name] = _finish_graph(raw, staging, name, external_data_threshold)
                except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                    raise ExportError(f"{name} graph failed ONNX checks: {exc}") from exc
                bar.update()
        _check_interface(graphs, prefix_names)
        graphs = _variants(staging, graphs, precision, optimize, bar)
        bar.set_postfix_str("writing manifest")
        shutil.copyfile(bundle.tokenizer_path, staging / TOKENIZER_FILE)
        names = [f for g in graphs.values() for f in g.files] + [TOKENIZER_FILE]
        manifest = Manifest(
            model_id=config.model_id,
            precision=precision,
            opset=opset,
            steps=0 if distill else config.sampling_steps,
            graphs=graphs,
            config=config.to_dict(),
            normalization=bundle.normalizer.to_dict(),
            tokenizer=TOKENIZER_FILE,
            files=hash_files(staging, names),
            exporter={
                "exporter": f"torch.onnx ({exporter})",
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "bundle": str(Path(bundle_dir).resolve()),
                "versions": _versions(),
                "fp32_compute": list(FP32_COMPUTED) if precision == "fp16" else [],
            },
        )
        manifest.write(staging)
        bar.update()
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
        bar.update()
    finally:
        bar.close()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _variants(staging: Path, graphs: dict[str, GraphSpec], precision: str, optimize: str, bar) -> dict:
    """int8 quantisation (in place) and the saved ORT-optimised graphs (optimize.py, quantize.py)."""
    if precision == "int8":
        from .quantize import quantize_graphs

        bar.set_postfix_str("quantising MatMuls to int8")
        graphs = quantize_graphs(staging, graphs)
    if optimize != "none":
        from .optimize import optimize_graphs

        bar.set_postfix_str(f"optimising ({optimize})")
        graphs = optimize_graphs(staging, graphs, fusions=optimize == "transformer")
    return graphs


def _check_interface(graphs: dict[str, GraphSpec], prefix_names: list[str]) -> None:
    """Every sampler/denoiser prefix input must be a prefix output of the same dtype and shape."""
    produced = {t.name: t for t in graphs["prefix"].outputs}
    if list(produced) != prefix_names:
        raise ExportError(f"prefix outputs {list(produced)} != model.prefix_names {prefix_names}")
    problems: dict[str, list[str]] = defaultdict(list)
    for name in ("denoiser", "sampler"):
        for t in graphs[name].inputs if name in graphs else ():  # one-pass families have no denoiser
            if t.name in produced and (produced[t.name].shape, produced[t.name].dtype) != (t.shape, t.dtype):
                problems[name].append(f"{t.name}: {t.dtype}{list(t.shape)} vs prefix {produced[t.name]}")
    if problems:
        raise ExportError(f"graph interfaces disagree: {json.dumps(problems)}")


def describe(manifest: Manifest) -> str:
    """Human-readable summary of an export."""
    lines = [f"{manifest.model_id}: {manifest.precision}, opset {manifest.opset}, {manifest.steps} steps"]
    for name, g in manifest.graphs.items():
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in g.inputs)
        outs = ", ".join(f"{t.name}{list(t.shape)}" for t in g.outputs)
        opt = f" (+ {g.optimized.file}, ORT {g.optimized.level})" if g.optimized else ""
        data = " (+external data)" if g.external_data else ""
        lines.append(f"  {name:9s} {g.file}{data}{opt}: {ins} -> {outs}")
    return "\n".join(lines)
