"""The two APT training stages, each turning a dataset into a bundle directory.

Stage 1: a fresh expert over the frozen VLM learns p(actions | images, state): language is never shown
(the backbone gets an empty instruction and Stage-1 layers see vision tokens only). The normaliser is
fitted here and kept for Stage 2, so both stages speak the same units.

Stage 2: the Stage-1 bundle plus one inserted, sigmoid-gated layer after each Stage-1 layer (inert at
init). Trains the inserted layers and gates (``train="inserted"``) or the whole expert
(``train="expert"``) on labelled data. With ``steps=0`` the bundle predicts exactly what Stage 1 does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..core.config import PolicyConfig
from ..core.preprocess import InstructionTokenizer
from ..model.apt import APTModel
from ..model.bundle import load_bundle, save_bundle, stage2_from_stage1
from .data import ChunkDataset, EncodedDataset, encode_dataset, fit_normalizer
from .trainer import TrainConfig, TrainResult, train


def run_stage1(
    dataset: ChunkDataset,
    config: PolicyConfig,
    tokenizer: str | Path,
    out_dir: str | Path,
    train_cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    backbone: torch.nn.Module | None = None,
    features_out: list[EncodedDataset] | None = None,
) -> tuple[Path, TrainResult]:
    """Train Stage 1 and write its bundle to ``out_dir``. The expert (and a random backbone when none is
    given) is initialised from ``train_cfg.seed``.

    With ``features_out`` (a list), the dataset is encoded once WITH its instructions and that encoding
    is appended to the list for Stage 2 to reuse. Stage 1 still never sees language: the backbone puts
    every camera block before the instruction under causal attention, so vision positions are
    bit-identical with or without it, and Stage 1 trains with the language mask cleared while its
    layers attend to vision positions only.
    """
    if config.stage != 1:
        raise ValueError("run_stage1 needs a stage-1 config")
    torch.manual_seed(train_cfg.seed)
    model = APTModel(config, backbone=backbone)
    normalizer = fit_normalizer(dataset, config.normalization)
    tok = InstructionTokenizer(tokenizer, config.max_instruction_tokens)
    reuse = features_out is not None
    data = encode_dataset(model, dataset, tok, normalizer, use_language=reuse, progress=progress)
    if features_out is not None:
        features_out.append(data)
        data = dataclasses.replace(data, language_mask=torch.zeros_like(data.language_mask))
    result = train(model, data, train_cfg, out_dir, resume=resume, progress=progress, desc="stage 1")
    return save_bundle(out_dir, model, normalizer, tokenizer), result


def run_stage2(
    init_bundle: str | Path,
    dataset: ChunkDataset,
    out_dir: str | Path,
    train_cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    features: EncodedDataset | None = None,
    rtc_max_delay: int | None = None,
) -> tuple[Path, TrainResult]:
    """Train Stage 2 from a Stage-1 bundle and write its bundle to ``out_dir``.

    ``features``: the encoding of ``dataset`` made by ``run_stage1(features_out=...)`` with the same
    (frozen) backbone, to skip re-encoding. ``rtc_max_delay``: the trained real-time-chunking delay bound
    of Stage 2 (None: the Stage-1 bundle's)."""
    stage1 = load_bundle(init_bundle)
    model = stage2_from_stage1(stage1)
    if rtc_max_delay is not None:
        model.config = model.config.with_rtc_max_delay(rtc_max_delay)
    if train_cfg.steps == 0:
        return save_bundle(out_dir, model, stage1.normalizer, stage1.tokenizer_path), TrainResult(steps=0)
    torch.manual_seed(train_cfg.seed)
    tok = InstructionTokenizer(stage1.tokenizer_path, model.config.max_instruction_tokens)
    data = features or encode_dataset(
        model, dataset, tok, stage1.normalizer, use_language=True, progress=progress
    )
    result = train(model, data, train_cfg, out_dir, resume=resume, progress=progress, desc="stage 2")
    return save_bundle(out_dir, model, stage1.normalizer, stage1.tokenizer_path), result
