"""apt-train: train the APT policy in two stages, or run the small CPU demo end to end.

    apt-train stage1 --data DEMOS.npz --out runs/stage1 [--arch pi|groot] [--steps N] ...
    apt-train stage2 --init runs/stage1 --data LABELLED.npz --out runs/stage2 [--train inserted|expert]
    apt-train stage1 --family action_prior --data DEMOS.npz --out runs/prior [--history-steps K] ...
    apt-train stage2 --init runs/prior --data LABELLED.npz --out runs/vla [--distill-steps N]
    apt-train demo   --out demo_out/model [--arch pi|groot] [--family F] [--force]

Stage 2 trains the family of its ``--init`` bundle. The action-prior family (docs/ACTION_PRIOR.md): Stage 1
trains the action encoder-decoder on the dataset's states and action chunks only (no images, no
language); Stage 2 copies it into the VLA, distils the latent for ``--distill-steps``, then trains end to
end. Checkpoints and ``--resume`` as for APT (below).

``--data`` is a ``DemoDataset`` .npz (apt_policy.tasks.dataset); cameras, image size, horizon, control
period and state/action names are read from it. Checkpoints go to ``OUT/checkpoints`` every
``--checkpoint-every`` steps; ``--resume`` continues from the latest one exactly. The output directory
is a policy bundle (config.json, model.safetensors, norm_stats.json, tokenizer.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.config import ActionSemantics, ExpertConfig

DEFAULT_SEED = 0


def _train_args(p: argparse.ArgumentParser, steps: int, lr: float) -> None:
    p.add_argument("--data", required=True, type=Path, help="DemoDataset .npz (apt_policy.tasks.dataset)")
    p.add_argument("--out", required=True, type=Path, help="output bundle directory (checkpoints inside)")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (warm-up, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seeds init, batches, noise and flow times")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apt-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    s1 = sub.add_parser("stage1", help="VLM frozen, language masked: learn the vision-action prior")
    _train_args(s1, steps=3000, lr=1e-3)
    s1.add_argument(
        "--family",
        choices=("apt", "action_prior"),
        default="apt",
        help="apt (default): the vision-action prior; action_prior: the action-only encoder-decoder prior",
    )
    s1.add_argument("--arch", choices=("pi", "groot"), default="pi", help="expert architecture (apt)")
    s1.add_argument(
        "--history-steps", type=int, default=4, help="action_prior: K steps in the history token (0: none)"
    )
    s1.add_argument("--latent-dim", type=int, default=32, help="action_prior: the action latent's size")
    s1.add_argument(
        "--start-views",
        action="store_true",
        help="add a start view <camera>@start per camera: the camera's frame from the episode's start "
        "(docs/ARCHITECTURE.md, 'Start views'); Stage 2 keeps the Stage-1 bundle's cameras",
    )
    s1.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: a small word-level one)")
    s1.add_argument("--backbone-checkpoint", type=Path, help="Qwen3-VL checkpoint dir (default: tiny random)")
    s1.add_argument("--vlm-layers", type=int, default=3, help="decoder layers kept (truncation)")
    s1.add_argument("--layer-map", default="", help="VLM layer per Stage-1 expert layer, e.g. '0,1'")
    s1.add_argument("--layers", type=int, default=2, help="Stage-1 expert layers (Stage 2 doubles them)")
    s1.add_argument("--width", type=int, default=64)
    s1.add_argument("--heads", type=int, default=4)
    s1.add_argument("--mlp-dim", type=int, default=0, help="default 2 x width")
    s1.add_argument("--max-instruction-tokens", type=int, default=8)
    s1.add_argument("--sampling-steps", type=int, default=5, help="Euler steps at inference")
    s1.add_argument("--normalization", choices=("quantile", "mean_std"), default="quantile")
    s1.add_argument("--model-id", default="apt-reaching")
    s1.add_argument(
        "--rtc-max-delay",
        type=int,
        default=0,
        help="trained real-time chunking: each sample's first d ~ U{0..N} actions given clean, no loss on"
        " them (0: off; Stage 2 keeps the Stage-1 value unless it sets its own)",
    )

    s2 = sub.add_parser("stage2", help="insert gated layers after each Stage-1 layer and unmask language")
    _train_args(s2, steps=2000, lr=1e-3)
    s2.add_argument("--init", required=True, type=Path, help="Stage-1 bundle directory")
    s2.add_argument(
        "--train",
        choices=("inserted", "expert"),
        default=None,
        help="apt: inserted (default): only inserted layers + gates; expert: the whole action expert",
    )
    s2.add_argument(
        "--distill-steps",
        type=int,
        default=None,
        help="action_prior: steps that train only the latent head, with the latent distillation loss "
        "(default 300), before end-to-end training",
    )
    s2.add_argument(
        "--rtc-max-delay",
        type=int,
        default=None,
        help="trained real-time chunking delay bound for Stage 2 (default: the Stage-1 bundle's)",
    )

    demo = sub.add_parser("demo", help="train both stages of a small model on the reaching task, evaluate")
    demo.add_argument("--out", required=True, type=Path)
    demo.add_argument("--arch", choices=("pi", "groot"), default="pi")
    demo.add_argument("--eval-episodes", type=int, default=60, help="per policy and phrasing set (>= 50)")
    demo.add_argument(
        "--force", action="store_true", help="retrain even if a finished demo is cached in --out"
    )
    demo.add_argument(
        "--family",
        choices=("apt", "action_prior", "action_distillation"),
        default="apt",
        help="the seed system to train (default apt; action_prior: docs/ACTION_PRIOR.md; "
        "action_distillation: teacher + student, docs/ACTION_DISTILLATION.md)",
    )
    demo.add_argument(
        "--vlm-from",
        type=Path,
        default=None,
        help="action_distillation: the APT demo bundle whose VLM to start from",
    )
    demo.add_argument("--threads", type=int, default=2)
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a field of the family's demo settings (apt: DemoSettings, action_prior: "
        "PriorDemoSettings), e.g. --set stage2_steps=1000",
    )
    return parser


def _train_config(args: argparse.Namespace, train: str = "expert"):
    from .trainer import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        train=train,
    )


def _stage1(args: argparse.Namespace) -> Path:
    from ..core.start_views import START_SUFFIX
    from ..model.presets import tiny_policy_config
    from ..tasks.dataset import DemoDataset, with_start_views
    from .stages import run_stage1
    from .vocabulary import write_default_tokenizer

    if args.family == "action_prior" and args.arch != "pi":  # refused before anything is written
        raise ValueError("--arch is APT's expert architecture; the action_prior family has its own")
    data = DemoDataset.load(args.data)
    cameras = tuple(data.images)
    if args.start_views:
        cameras += tuple(f"{c}{START_SUFFIX}" for c in data.images)
        data = with_start_views(data, cameras)
    image_size = tuple(next(iter(data.images.values())).shape[1:3])
    horizon = int(data.actions.shape[1])
    mlp = args.mlp_dim or 2 * args.width
    if args.width % args.heads:
        raise SystemExit(f"--width {args.width} must be divisible by --heads {args.heads}")
    expert = ExpertConfig(args.width, args.heads, args.width // args.heads, mlp, args.layers)
    layer_map = tuple(int(v) for v in args.layer_map.split(",")) if args.layer_map else None
    backbone = None
    if args.backbone_checkpoint is not None:
        from ..model.backbone import load_qwen3vl_checkpoint

        backbone = load_qwen3vl_checkpoint(
            args.backbone_checkpoint,
            num_layers=args.vlm_layers,
            num_cameras=len(cameras),
            image_size=image_size,
            max_text_tokens=args.max_instruction_tokens,
        )
    config = tiny_policy_config(
        args.arch,
        cameras=cameras,
        image_size=image_size,
        max_instruction_tokens=args.max_instruction_tokens,
        state_names=data.state_names,
        action_names=data.action_names,
        horizon=horizon,
        control_dt=float(data.config.get("dt", 0.1)),
        sampling_steps=args.sampling_steps,
        expert=expert,
        layer_map=layer_map,
        vlm_layers=args.vlm_layers,
        action_semantics=ActionSemantics(arm="absolute", gripper="absolute"),
        normalization=args.normalization,
        model_id=args.model_id,
        backbone=None if backbone is None else backbone.config.to_dict(),
    )
    config = dataclasses.replace(config, rtc_max_delay=args.rtc_max_delay).validate()
    tokenizer = args.tokenizer
    if tokenizer is None:
        tokenizer = write_default_tokenizer(args.out.parent / f"{args.out.name}_tokenizer.json")
    if args.family == "action_prior":
        return _prior_stage1(args, data, config, tokenizer, backbone)
    bundle, result = run_stage1(
        data,
        config,
        tokenizer,
        args.out,
        _train_config(args),
        resume=args.resume,
        progress=not args.quiet,
        backbone=backbone,
    )
    _report(bundle, result)
    return bundle


def _prior_train_config(args: argparse.Namespace, distill_steps: int = 0):
    from .action_prior import PriorTrainConfig

    return PriorTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        distill_steps=distill_steps,
        checkpoint_every=args.checkpoint_every,
    )


def _prior_stage1(args: argparse.Namespace, data, base, tokenizer: Path, backbone) -> Path:
    """Stage 1 of the action-prior family on the dataset's states and chunks (docs/ACTION_PRIOR.md)."""
    import torch

    from ..core.action_prior import ActionPriorConfig
    from ..core.normalize import Normalizer
    from ..model.action_prior import ActionPriorModel
    from .action_prior import dataset_trajectories, run_prior_stage1

    prior = ActionPriorConfig(
        history_steps=args.history_steps,
        latent_dim=args.latent_dim,
        width=args.width,
        num_heads=args.heads,
        mlp_dim=args.mlp_dim or 2 * args.width,
    ).validate()
    config = dataclasses.replace(base, family="action_prior", family_config=prior.to_dict())
    config = config.with_stage(1)
    cfg = _prior_train_config(args)
    torch.manual_seed(args.seed)
    model = ActionPriorModel(config, backbone=backbone)
    traj = dataset_trajectories(data)
    normalizer = Normalizer.fit(traj.states, traj.chunks, config.normalization)
    bundle, result = run_prior_stage1(
        model, normalizer, traj, tokenizer, args.out, cfg, not args.quiet, resume=args.resume
    )
    _report(bundle, result)
    return bundle


def _init_family(init: Path) -> str:
    config = Path(init) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--init {init}: no config.json (not a policy bundle)")
    return str(json.loads(config.read_text()).get("family", "apt"))


def _stage2(args: argparse.Namespace) -> Path:
    from .stages import run_stage2

    family = _init_family(args.init)
    if family == "action_prior":
        return _prior_stage2(args)
    if family != "apt":
        raise ValueError(f"--init {args.init}: apt-train stage2 trains apt and action_prior, not {family}")
    if args.distill_steps is not None:
        raise ValueError("--distill-steps is the action_prior family's; this --init bundle is apt")
    data = _stage2_data(args)
    bundle, result = run_stage2(
        args.init,
        data,
        args.out,
        _train_config(args, args.train or "inserted"),
        resume=args.resume,
        progress=not args.quiet,
        rtc_max_delay=args.rtc_max_delay,
    )
    _report(bundle, result)
    return bundle


def _prior_stage2(args: argparse.Namespace) -> Path:
    """Stage 2 of the action-prior family from its Stage-1 bundle (decoder reuse, latent distillation)."""
    from .action_prior import run_prior_stage2

    if args.train is not None:
        raise ValueError(
            "--train is APT's; the action_prior Stage 2 trains the latent head for --distill-steps, "
            "then everything but the VLM"
        )
    if args.rtc_max_delay is not None:
        raise ValueError("--rtc-max-delay: the action_prior Stage 2 keeps its Stage-1 bundle's; set it there")
    distill = 300 if args.distill_steps is None else args.distill_steps
    if distill < 0:
        raise ValueError(f"--distill-steps must be >= 0, got {distill}")
    cfg = _prior_train_config(args, distill)
    data = _stage2_data(args)
    bundle, result = run_prior_stage2(
        args.init, data, data.episode, data.step, args.out, cfg, progress=not args.quiet, resume=args.resume
    )
    _report(bundle, result)
    return bundle


def _stage2_data(args: argparse.Namespace):
    """``--data`` with the start views the ``--init`` bundle's cameras name (none: as saved)."""
    from ..model.bundle import read_config
    from ..tasks.dataset import DemoDataset, with_start_views

    return with_start_views(DemoDataset.load(args.data), read_config(args.init).cameras)


def _report(bundle: Path, result) -> None:
    losses = result.losses
    if losses:
        k = max(1, min(50, len(losses) // 5))
        print(f"loss: first {k} steps {sum(losses[:k]) / k:.4f} -> last {k} steps {sum(losses[-k:]) / k:.4f}")
    print(f"bundle written to {bundle}")


def _overrides(items: Sequence[str], settings: type) -> dict[str, Any]:
    """``--set KEY=JSON`` items as keyword overrides of the dataclass ``settings``; a clear error for a
    malformed item, an unknown field or a value that is not JSON."""
    names = {f.name for f in dataclasses.fields(settings)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=JSON, e.g. stage2_steps=1000")
        if key not in names:
            raise ValueError(f"--set {key}: not a field of {settings.__name__} ({', '.join(sorted(names))})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"--set {key}: {value!r} is not JSON ({exc}); quote strings: '\"...\"'"
            ) from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        if args.command == "stage1":
            _stage1(args)
        elif args.command == "stage2":
            _stage2(args)
        elif args.family == "action_distillation":
            from .distillation_demo import run_distillation_demo

            if args.vlm_from is None:
                raise ValueError("--family action_distillation needs --vlm-from <a trained APT demo bundle>")
            if args.set:
                raise ValueError("--set is not supported for --family action_distillation")
            report = run_distillation_demo(
                args.out,
                args.vlm_from,
                force=args.force,
                progress=not args.quiet,
                eval_episodes=args.eval_episodes,
            )
            print(json.dumps(report["summary"], indent=2))
        elif args.family == "action_prior":
            from .demo_action_prior import PriorDemoSettings, run_prior_demo

            overrides = _overrides(args.set, PriorDemoSettings)
            report = run_prior_demo(args.out, force=args.force, progress=not args.quiet, **overrides)
            print(json.dumps(report["summary"], indent=2))
        else:
            from .demo import DemoSettings, run_demo

            overrides = _overrides(args.set, DemoSettings)
            report = run_demo(
                args.out,
                arch=args.arch,
                eval_episodes=args.eval_episodes,
                force=args.force,
                progress=not args.quiet,
                **overrides,
            )
            print(json.dumps(report["summary"], indent=2))
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"apt-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
