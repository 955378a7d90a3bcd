"""`apt-train demo`: both APT stages of a small policy on the reaching task, on a CPU, in minutes.

What it does (deterministic for a given seed; results cached in ``out`` and reused unless ``force``):
  1. generates expert demonstrations (apt_policy.tasks.dataset): ``episodes`` labelled episodes; Stage 1
     trains on the same episodes with the language removed (the backbone gets "" and Stage-1 layers
     mask language), i.e. "reach some block", Stage 2 on their labels;
  2. stage 0, the demo's stand-in for VLM pretraining (training/grounding.py): no pretrained Qwen3-VL
     exists on this machine, so the tiny random one is first taught generic grounding on the images
     (where each colour is; which block a colour word in a random caption refers to), then frozen;
  3. trains Stage 1 (frozen VLM, expert only) and Stage 2 (inserted gated layers; with
     ``stage2_train="expert"`` the rest of the expert too), writing bundles ``out/stage1`` and
     ``out/stage2``; both train real-time chunking (``rtc_max_delay``: a random committed prefix of
     0..rtc_max_delay actions given clean), so the bundles serve trained and training-free RTC;
  4. evaluates both closed loop (``eval_episodes`` per policy and phrasing set: training phrasings and
     the held-out phrasing) and writes ``out/eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.config import ActionSemantics, ExpertConfig, PolicyConfig
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..model.apt import build_backbone
from ..model.backbone import Qwen3VLBackboneConfig
from ..model.presets import tiny_policy_config
from ..runtime.torch_backend import APTPolicy
from ..tasks.dataset import (
    DemoConfig,
    DemoDataset,
    cached_dataset,
    default_workers,
    episode_seed,
    scene_of_episode,
)
from .evaluate import evaluate, summary_line
from .grounding import GroundingConfig, pretrain_grounding
from .stages import run_stage1, run_stage2
from .trainer import TrainConfig
from .vocabulary import write_default_tokenizer


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the demo's result (part of the cache key)."""

    arch: str = "pi"
    seed: int = 0
    cameras: tuple[str, ...] = ("front",)
    # 600: near-miss endings (3-4 cm) fall from 13 % to 5-8 % at Orin latency against 300 (docs/CONTROL.md);
    # data costs ~40 s per 300 episodes, the training steps do not change
    episodes: int = 600
    steps_per_episode: int = 40  # the expert arrives in ~20 steps: the rest teaches holding still
    execution_noise: float = 0.02
    kick_probability: float = 0.0  # DART-style displaced steps in the demonstrations (tasks/dataset.py)
    kick_noise: float = 0.0
    image_size: tuple[int, int] = (96, 128)  # (h, w): the cameras' 4:3 aspect
    render_size: tuple[int, int] | None = (480, 640)  # native: frames shrunk exactly as at deployment
    patch_size: int = 8  # vision patch (px); tokens per camera = (h / 2p) * (w / 2p)
    vision_depth: int = 1  # random vision layers: attention over every patch dominates the encoding cost
    horizon: int = 16
    width: int = 64
    layers: int = 2
    stage1_steps: int = 1500
    stage2_steps: int = 2000
    stage2_train: str = "expert"  # "inserted": only the inserted layers and gates
    # stage 0: pretrain the tiny VLM's grounding (0: keep it random). 3000: the gripper over the block hides
    # part of it and 1500 steps left the policy holding 3.6-4 cm off there (docs/APT_MODEL.md)
    grounding_steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    stage2_lr: float = 1e-3
    sampling_steps: int = 5
    noise_scale: float = 0.0  # initial flow noise at inference (bundle field; 0: deterministic)
    # trained real-time chunking: d ~ U{0..4} committed actions per training sample. 4 actions = 0.4 s at
    # dt 0.1: an Orin-like 180-300 ms inference delay is 2-3 actions, plus one for the request margin.
    rtc_max_delay: int = 4
    eval_episodes: int = 60
    eval_max_steps: int = 60
    eval_actions_per_chunk: int = 12  # as the node runs it: config/sim.yaml chunk_request_threshold 4


def _data_seed(settings: DemoSettings) -> int:
    return settings.seed + 1  # the demonstrations' seed: apart from the model's


def _ground_vlm(
    vlm: torch.nn.Module,
    settings: DemoSettings,
    config: PolicyConfig,
    data: DemoDataset,
    tokenizer: Path,
    progress: bool,
) -> list[float]:
    """Stage 0 (see training/grounding.py): pretrain the tiny VLM's grounding on the demo's images."""
    if settings.grounding_steps == 0:
        return []
    seeds = [episode_seed(_data_seed(settings), int(e)) for e in data.episode]
    scenes = {s: scene_of_episode(s) for s in set(seeds)}
    return pretrain_grounding(
        vlm,
        {camera: data.images[camera] for camera in config.cameras},
        [scenes[s] for s in seeds],
        layer_map=config.layer_map,
        preprocessor=ImagePreprocessor(
            config.cameras, config.image_size, config.image_mean, config.image_std
        ),
        tokenizer=InstructionTokenizer(tokenizer, config.max_instruction_tokens),
        config=GroundingConfig(steps=settings.grounding_steps, seed=settings.seed),
        progress=progress,
    )


def run_demo(
    out: str | Path,
    arch: str = "pi",
    eval_episodes: int = 60,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train, evaluate, write bundles and eval.json into ``out``; return the eval report."""
    out = Path(out)
    settings = DemoSettings(arch=arch, eval_episodes=eval_episodes, **overrides)
    report_path = out / "eval.json"
    if not force and report_path.is_file():
        cached = json.loads(report_path.read_text())
        if (
            cached.get("settings") == json.loads(json.dumps(asdict(settings)))
            and (out / "stage2" / "config.json").is_file()
        ):
            if progress:
                print(f"demo: reusing the finished run in {out} (pass --force to retrain)")
            return cached
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    demo_cfg = DemoConfig(
        cameras=settings.cameras,
        image_size=tuple(settings.image_size),
        render_size=None if settings.render_size is None else tuple(settings.render_size),
        horizon=settings.horizon,
        steps_per_episode=settings.steps_per_episode,
        execution_noise=settings.execution_noise,
        kick_probability=settings.kick_probability,
        kick_noise=settings.kick_noise,
    )
    data = cached_dataset(
        [out], settings.episodes, demo_cfg, _data_seed(settings), progress=progress, workers=default_workers()
    )
    timings["data_s"] = time.monotonic() - t0

    tokenizer = write_default_tokenizer(out / "tokenizer.json")
    w = settings.width
    tiny = Qwen3VLBackboneConfig.tiny()
    backbone = tiny.replace(
        vision=dataclasses.replace(
            tiny.vision,
            patch_size=settings.patch_size,
            depth=settings.vision_depth,
            deepstack_visual_indexes=tuple(range(min(settings.vision_depth, 2))),
        ),
        num_cameras=len(settings.cameras),
        image_size=demo_cfg.image_size,
        max_text_tokens=8,
    )
    config = tiny_policy_config(
        settings.arch,
        cameras=demo_cfg.cameras,
        image_size=demo_cfg.image_size,
        max_instruction_tokens=8,
        state_names=data.state_names,
        action_names=data.action_names,
        horizon=settings.horizon,
        control_dt=demo_cfg.dt,
        sampling_steps=settings.sampling_steps,
        expert=ExpertConfig(width=w, num_heads=4, head_dim=w // 4, mlp_dim=2 * w, num_layers=settings.layers),
        action_semantics=ActionSemantics(arm="absolute", gripper="absolute"),
        model_id=f"apt-reaching-demo-{settings.arch}",
        backbone=backbone.to_dict(),
    )
    config = dataclasses.replace(
        config, noise_scale=settings.noise_scale, rtc_max_delay=settings.rtc_max_delay
    ).validate()
    common = {
        "batch_size": settings.batch_size,
        "seed": settings.seed,
        "checkpoint_every": 500,
    }
    t = time.monotonic()
    torch.manual_seed(settings.seed)
    vlm = build_backbone(config)
    stage0_losses = _ground_vlm(vlm, settings, config, data, tokenizer, progress)
    timings["stage0_s"] = time.monotonic() - t
    t = time.monotonic()
    features: list = []
    stage1, r1 = run_stage1(
        data,
        config,
        tokenizer,
        out / "stage1",
        TrainConfig(steps=settings.stage1_steps, lr=settings.lr, **common),
        progress=progress,
        features_out=features,
        backbone=vlm,
    )
    timings["stage1_s"] = time.monotonic() - t
    t = time.monotonic()
    stage2, r2 = run_stage2(
        stage1,
        data,
        out / "stage2",
        TrainConfig(
            steps=settings.stage2_steps, lr=settings.stage2_lr, train=settings.stage2_train, **common
        ),
        progress=progress,
        features=features[0],
    )
    timings["stage2_s"] = time.monotonic() - t

    t = time.monotonic()
    results: dict[str, Any] = {}
    for name, bundle in (("stage1", stage1), ("stage2", stage2)):
        policy = APTPolicy.from_bundle(bundle, seed=settings.seed)
        for key, held_out in (("train_phrasing", False), ("held_out_phrasing", True)):
            results[f"{name}/{key}"] = evaluate(
                policy,
                settings.eval_episodes,
                held_out=held_out,
                image_size=demo_cfg.image_size,
                render_size=demo_cfg.render_size,
                max_steps=settings.eval_max_steps,
                actions_per_chunk=settings.eval_actions_per_chunk,
                progress=progress,
                desc=f"eval {name} {key}",
            )
    timings["eval_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0

    summary = {k: summary_line(k, v) for k, v in results.items()}
    report = {
        "settings": asdict(settings),
        "summary": summary,
        "results": results,
        "timings_s": timings,
        "loss": {
            "stage0_first50": sum(stage0_losses[:50]) / max(len(stage0_losses[:50]), 1),
            "stage0_last50": sum(stage0_losses[-50:]) / max(len(stage0_losses[-50:]), 1),
            "stage1_first50": r1.mean_loss(0, 50),
            "stage1_last50": r1.mean_loss(-50, None),
            "stage2_first50": r2.mean_loss(0, 50),
            "stage2_last50": r2.mean_loss(-50, None),
        },
        "gates": APTPolicy.from_bundle(stage2).model.gate_values(),
        "bundles": {"stage1": str(stage1), "stage2": str(stage2)},
        "torch_threads": torch.get_num_threads(),
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        for line in summary.values():
            print(line)
    return report
