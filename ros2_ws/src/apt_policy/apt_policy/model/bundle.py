"""Policy bundle: a directory holding everything needed to run the policy.

    config.json        PolicyConfig (core.config), format_version 1
    model.safetensors  every weight of APTModel (backbone included), float32
    norm_stats.json    state/action statistics (core.normalize)
    tokenizer.json     Hugging Face tokenizers file for the instruction

``save_bundle`` writes it; ``load_bundle`` validates it and returns (config, model, normalizer,
tokenizer path), raising BundleError with a message that names the file and the problem.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.config import ConfigError, PolicyConfig
from ..core.normalize import Normalizer, NormStatsError
from ..core.preprocess import InstructionTokenizer, PreprocessError
from .apt import APTModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORM_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, NORM_FILE, TOKENIZER_FILE)


class BundleError(ValueError):
    """A bundle is incomplete or inconsistent; the message names the file and the problem."""


@dataclass
class Bundle:
    config: PolicyConfig
    model: APTModel  # or the family's model (ActionPriorModel for family "action_prior")
    normalizer: Normalizer
    tokenizer_path: Path


def save_bundle(
    out_dir: str | Path,
    model: torch.nn.Module,
    normalizer: Normalizer,
    tokenizer: str | Path,
) -> Path:
    """Write a bundle for ``model`` (its own config) into ``out_dir`` (created; files overwritten)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    if normalizer.state.dim != config.state_dim or normalizer.actions.dim != config.action_dim:
        raise BundleError(
            f"norm stats dims (state {normalizer.state.dim}, actions {normalizer.actions.dim}) do not match"
            f" the config (state {config.state_dim}, actions {config.action_dim})"
        )
    if normalizer.mode != config.normalization:
        raise BundleError(
            f"normalizer mode {normalizer.mode!r} != config.normalization {config.normalization!r}"
        )
    config.to_json(out / CONFIG_FILE)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt", "apt_format_version": "1"})
    normalizer.save(out / NORM_FILE)
    tokenizer = Path(tokenizer)
    if tokenizer.resolve() != (out / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    return out


def load_bundle(path: str | Path, map_location: str = "cpu") -> Bundle:
    """Validate and load a bundle directory (every check names the offending file)."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    missing = [name for name in BUNDLE_FILES if not (root / name).is_file()]
    if missing:
        raise BundleError(f"bundle {root} is missing {missing} (a bundle holds {list(BUNDLE_FILES)})")
    try:
        config = PolicyConfig.from_json(root / CONFIG_FILE)
    except ConfigError as exc:
        raise BundleError(f"{root / CONFIG_FILE}: {exc}") from exc
    try:
        normalizer = Normalizer.load(root / NORM_FILE, mode=config.normalization)
    except NormStatsError as exc:
        raise BundleError(f"{root / NORM_FILE}: {exc}") from exc
    if normalizer.state.dim != config.state_dim or normalizer.actions.dim != config.action_dim:
        raise BundleError(
            f"{root / NORM_FILE}: statistics have state dim {normalizer.state.dim} and action dim"
            f" {normalizer.actions.dim}; config.json says {config.state_dim} and {config.action_dim}"
        )
    try:
        tokenizer = InstructionTokenizer(root / TOKENIZER_FILE, config.max_instruction_tokens)
    except PreprocessError as exc:
        raise BundleError(f"{root / TOKENIZER_FILE}: {exc}") from exc
    vocab = int(config.backbone.get("text", {}).get("vocab_size", 0) or 0)
    if vocab and tokenizer.vocab_size > vocab:
        raise BundleError(
            f"{root / TOKENIZER_FILE}: {tokenizer.vocab_size} tokens exceed the backbone vocabulary ({vocab})"
        )
    model = build_model(config)
    try:
        tensors = load_file(str(root / WEIGHTS_FILE), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{root / WEIGHTS_FILE}: cannot read safetensors: {exc}") from exc
    load_weights(model, tensors, str(root / WEIGHTS_FILE))
    model.eval()
    return Bundle(config, model, normalizer, root / TOKENIZER_FILE)


def build_model(config: PolicyConfig) -> Any:
    """A fresh model of the bundle's family (``config.family``): APTModel, ActionPriorModel or
    DistillationModel (untrained weights)."""
    if config.family == "action_distillation":
        from .action_distillation import DistillationModel

        return DistillationModel(config)
    if config.family == "action_prior":
        from .action_prior import ActionPriorModel

        return ActionPriorModel(config)
    return APTModel(config)


def load_weights(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, strict: bool = True
) -> list[str]:
    """Copy ``tensors`` into ``model``; with strict=False keys absent from ``tensors`` are returned."""
    expected = model.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    absent = sorted(set(expected) - set(tensors))
    if unexpected:
        raise BundleError(
            f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    if absent and strict:
        raise BundleError(f"{source}: missing tensors {absent[:5]}{' ...' if len(absent) > 5 else ''}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise BundleError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the config expects"
                f" {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return absent


def stage2_from_stage1(stage1: Bundle) -> APTModel:
    """A Stage-2 model initialised from a Stage-1 bundle: same weights, inserted layers inert (closed)."""
    if stage1.config.stage != 1:
        raise BundleError(f"--init bundle must be Stage 1, this one is stage {stage1.config.stage}")
    model = APTModel(stage1.config.with_stage(2))
    absent = load_weights(model, stage1.model.state_dict(), "stage-1 bundle", strict=False)
    not_inserted = [k for k in absent if not k.startswith(("inserted.", "inserted_contexts."))]
    if not_inserted:  # pragma: no cover - would be a bug in APTModel
        raise BundleError(f"stage-1 bundle lacks non-inserted tensors {not_inserted[:5]}")
    return model


def read_config(path: str | Path) -> PolicyConfig:
    """Only the config of a bundle (no torch work)."""
    try:
        return PolicyConfig.from_json(Path(path) / CONFIG_FILE)
    except ConfigError as exc:
        raise BundleError(f"{Path(path) / CONFIG_FILE}: {exc}") from exc
