"""`apt-train demo --family action_distillation`: teacher, then student, on the reaching task, on a CPU.

1. demonstrations: the APT demo's episodes (same generator, seed and settings), read from its
   ``demos.npz`` when the keys match, else generated;
2. the VLM: the APT demo's Stage-0-grounded tiny Qwen3-VL, taken from a trained APT demo bundle
   (``apt_bundle``): this machine has no pretrained Qwen3-VL, and the student starts, as in the paper,
   from a VLM that already sees;
3. the teacher (model/teacher.py) trained by behaviour cloning -> ``out/teacher`` (its own bundle);
4. the student: Stage 1 alignment -> ``out/stage1``, Stage 2 selective fine-tuning -> ``out/stage2``
   (bundles with ``family: action_distillation``);
5. closed-loop evaluation of teacher, Stage 1 and Stage 2 (``eval_episodes`` held-out scenes per phrasing
   set: training phrasings, held-out phrasing) -> ``out/eval.json``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.distillation_config import DistillationConfig, TeacherConfig
from ..core.normalize import Normalizer
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..model.action_distillation import DistillationModel
from ..model.bundle import load_bundle, save_bundle
from ..model.teacher import TeacherModel, load_teacher, save_teacher
from ..runtime.distillation_torch import DistillationPolicy
from ..runtime.inputs import ObservationEncoder
from ..runtime.policy import GraphPolicy, PolicyInfo
from ..tasks.dataset import (
    DemoConfig,
    DemoDataset,
    cached_dataset,
    default_workers,
    episode_seed,
    scene_of_episode,
)
from .distillation import (
    StepConfig,
    build_inputs,
    encode_prefixes,
    student_config,
    teacher_features,
    train_student_stage,
    train_teacher,
)
from .evaluate import evaluate, summary_line
from .grounding import block_targets


@dataclass(frozen=True)
class DistillationDemoSettings:
    """Everything that decides the result (part of the cache key)."""

    seed: int = 0
    episodes: int = 600  # the APT demo's episodes (same seed); with 300 the teacher overfits (measured)
    steps_per_episode: int = 40
    execution_noise: float = 0.02
    kick_probability: float = 0.0  # DART-style displaced steps in the demonstrations (tasks/dataset.py)
    kick_noise: float = 0.0
    image_size: tuple[int, int] = (96, 128)
    render_size: tuple[int, int] | None = (480, 640)
    num_action_tokens: int = 1
    pred_steps: int = 6  # Seer: 3; 6 measured better (docs/ACTION_DISTILLATION.md)
    teacher_width: int = 64
    teacher_steps: int = 1500  # 3000 measured worse in closed loop (docs/ACTION_DISTILLATION.md)
    teacher_grounding_weight: float = 1.0  # auxiliary loss: the named block's image / table position
    stage1_steps: int = 600
    stage2_steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    eval_episodes: int = 60
    eval_max_steps: int = 60


class TeacherPolicy(GraphPolicy):
    """The teacher behind the Policy contract (torch, for its evaluation): one deterministic pass."""

    warmup_iterations = 1

    def __init__(self, path: str | Path) -> None:
        self.model, doc = load_teacher(path)
        if (
            "student_template" not in doc
        ):  # the I/O description (cameras, sizes, dt) the Policy contract needs
            raise ValueError(f"{path}: teacher.json names no student_template bundle")
        base = load_bundle(Path(str(doc["student_template"]))).config
        root = Path(path)
        self.normalizer = Normalizer.load(root / "norm_stats.json")
        self.config = base
        self.encoder = ObservationEncoder(base, self.normalizer, root / "tokenizer.json")
        self._lock = threading.Lock()
        self._info = PolicyInfo.from_config(base, backend="torch")

    @torch.inference_mode()
    def run(self, pixel_values, input_ids, text_mask, state, noise, prefix=None, prefix_len=None):  # type: ignore[no-untyped-def]
        return self.model(
            torch.from_numpy(pixel_values),
            torch.from_numpy(input_ids.copy()),
            torch.from_numpy(text_mask.copy()),
            torch.from_numpy(state),
        ).numpy()


def _data_seed(settings: DistillationDemoSettings) -> int:
    return settings.seed + 1  # as the APT demo: the same episodes


def grounding_targets(
    data: DemoDataset, data_seed: int, camera: str, image_size: tuple[int, int]
) -> torch.Tensor:
    """[N, 4]: each sample's named block as (u, v) in ``camera``'s image and (x, y) on the table, in
    [-1, 1] (``training.grounding.block_targets``; the scenes follow from the episode seeds)."""
    seeds = [episode_seed(data_seed, int(e)) for e in data.episode]
    scenes = {s: scene_of_episode(s) for s in set(seeds)}
    rows = [
        block_targets(scenes[s], str(c), camera, image_size) for s, c in zip(seeds, data.targets, strict=True)
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def _data(
    settings: DistillationDemoSettings, out: Path, progress: bool, apt_root: Path | None = None
) -> DemoDataset:
    """The demonstrations: the APT demo's ``demos.npz`` in ``apt_root`` when its key says it is the same
    episodes (one copy on disk, not generated twice), else ``out``'s, generated on first use."""
    demo_cfg = DemoConfig(
        cameras=("front",),
        image_size=tuple(settings.image_size),
        render_size=None if settings.render_size is None else tuple(settings.render_size),
        horizon=16,
        steps_per_episode=settings.steps_per_episode,
        execution_noise=settings.execution_noise,
        kick_probability=settings.kick_probability,
        kick_noise=settings.kick_noise,
    )
    roots = [out] if apt_root is None else [Path(apt_root), out]
    return cached_dataset(
        roots, settings.episodes, demo_cfg, _data_seed(settings), progress=progress, workers=default_workers()
    )


def run_distillation_demo(
    out: str | Path,
    apt_bundle: str | Path,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Train teacher and student, evaluate, write bundles and eval.json into ``out``; return the report."""
    out = Path(out)
    settings = DistillationDemoSettings(**overrides)
    report_path = out / "eval.json"
    if not force and report_path.is_file() and (out / "stage2" / "config.json").is_file():
        cached = json.loads(report_path.read_text())
        if cached.get("settings") == json.loads(json.dumps(asdict(settings))):
            if progress:
                print(f"demo: reusing the finished run in {out} (pass --force to retrain)")
            return cached
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    apt = load_bundle(apt_bundle)
    data = _data(settings, out, progress, Path(apt_bundle).parent)  # the APT demo writes demos.npz there
    timings["data_s"] = time.monotonic() - t0

    family = DistillationConfig(
        teacher=TeacherConfig(
            width=settings.teacher_width, vocab_size=int(apt.config.backbone["text"]["vocab_size"])
        ),
        num_action_tokens=settings.num_action_tokens,
        pred_steps=settings.pred_steps,
    )
    config1 = student_config(apt.config, family.to_dict(), stage=1)
    horizon = config1.horizon
    tokenizer_path = out / "tokenizer.json"
    shutil.copyfile(apt.tokenizer_path, tokenizer_path)
    tokenizer = InstructionTokenizer(tokenizer_path, config1.max_instruction_tokens)
    normalizer = Normalizer.fit(
        np.asarray(data.states), np.asarray(data.actions)[:, :horizon], config1.normalization
    )
    pre = ImagePreprocessor(config1.cameras, config1.image_size, config1.image_mean, config1.image_std)
    inputs = build_inputs(data, tokenizer, normalizer, horizon)
    common = {"batch_size": settings.batch_size, "seed": settings.seed, "lr": settings.lr}

    # ---- teacher
    t = time.monotonic()
    torch.manual_seed(settings.seed)
    teacher = TeacherModel(
        family,
        num_cameras=len(config1.cameras),
        image_size=tuple(config1.image_size),  # type: ignore[arg-type]
        state_dim=config1.state_dim,
        action_dim=config1.action_dim,
    )
    teacher.decoder.fit_residual(
        config1.state_names,
        config1.action_names,
        normalizer,
        data.states,
        np.asarray(data.actions)[:, :horizon],
    )
    grounding = grounding_targets(
        data,
        _data_seed(settings),
        config1.cameras[0],
        tuple(config1.image_size),  # type: ignore[arg-type]
    )
    teacher_losses = train_teacher(
        teacher,
        inputs,
        pre,
        StepConfig(steps=settings.teacher_steps, **common),
        progress,
        grounding=grounding if settings.teacher_grounding_weight > 0 else None,
        grounding_weight=settings.teacher_grounding_weight,
    )
    teacher_dir = out / "teacher"
    save_teacher(
        teacher_dir,
        teacher,
        {
            "cameras": list(config1.cameras),
            "image_size": list(config1.image_size),
            "state_names": list(config1.state_names),
            "action_names": list(config1.action_names),
            "control_dt": config1.control_dt,
            "student_template": str(out / "stage1"),
        },
    )
    normalizer.save(teacher_dir / "norm_stats.json")
    shutil.copyfile(tokenizer_path, teacher_dir / "tokenizer.json")
    timings["teacher_s"] = time.monotonic() - t

    # ---- student
    t = time.monotonic()
    torch.manual_seed(settings.seed)
    student = DistillationModel(config1, backbone=apt.model.backbone)
    student.decoder.load_state_dict(teacher.decoder.state_dict())
    cache = encode_prefixes(student, inputs, pre)
    targets = teacher_features(teacher, inputs, pre)
    timings["student_cache_s"] = time.monotonic() - t
    t = time.monotonic()
    s1_losses = train_student_stage(
        student, 1, cache, inputs, targets, StepConfig(steps=settings.stage1_steps, **common), progress
    )
    save_bundle(out / "stage1", student, normalizer, tokenizer_path)
    timings["stage1_s"] = time.monotonic() - t
    t = time.monotonic()
    student.config = student_config(apt.config, family.to_dict(), stage=2)
    s2_losses = train_student_stage(
        student, 2, cache, inputs, None, StepConfig(steps=settings.stage2_steps, **common), progress
    )
    save_bundle(out / "stage2", student, normalizer, tokenizer_path)
    timings["stage2_s"] = time.monotonic() - t

    # ---- evaluation
    t = time.monotonic()
    results: dict[str, Any] = {}
    policies: dict[str, Any] = {
        "teacher": TeacherPolicy(teacher_dir),
        "stage1": DistillationPolicy.from_bundle(out / "stage1"),
        "stage2": DistillationPolicy.from_bundle(out / "stage2"),
    }
    for name, policy in policies.items():
        for key, held_out in (("train_phrasing", False), ("held_out_phrasing", True)):
            results[f"{name}/{key}"] = evaluate(
                policy,
                settings.eval_episodes,
                held_out=held_out,
                image_size=tuple(settings.image_size),  # type: ignore[arg-type]
                render_size=settings.render_size,
                max_steps=settings.eval_max_steps,
                actions_per_chunk=horizon,
                progress=progress,
                desc=f"eval {name} {key}",
            )
    timings["eval_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0

    def mean(xs: list[float], a: int | None, b: int | None) -> float:
        part = xs[a:b]
        return float(np.mean(part)) if part else float("nan")

    summary = {k: summary_line(k, v) for k, v in results.items()}
    report = {
        "settings": asdict(settings),
        "apt_bundle": str(apt_bundle),
        "summary": summary,
        "results": results,
        "timings_s": timings,
        "loss": {
            "teacher_first50": mean(teacher_losses, 0, 50),
            "teacher_last50": mean(teacher_losses, -50, None),
            "stage1_first50": mean(s1_losses, 0, 50),
            "stage1_last50": mean(s1_losses, -50, None),
            "stage2_first50": mean(s2_losses, 0, 50),
            "stage2_last50": mean(s2_losses, -50, None),
        },
        "bundles": {
            "teacher": str(teacher_dir),
            "stage1": str(out / "stage1"),
            "stage2": str(out / "stage2"),
        },
        "torch_threads": torch.get_num_threads(),
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        for line in summary.values():
            print(line)
    return report
