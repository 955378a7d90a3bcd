"""`apt-train demo --family action_prior`: the action-prior VLA on the reaching task, on a CPU.

Steps (deterministic for a seed; the finished run in ``out`` is reused unless ``force``):
  1. Stage-1 data: ``prior_episodes`` expert episodes WITHOUT images or language (cheap: no rendering), the
     action-only trajectories the paper pretrains on; labelled data: the same generator as APT's demo
     (``episodes`` rendered episodes with instructions), or a saved ``demos.npz`` (``data``).
  2. the frozen VLM: APT's stage 0 (training/grounding.py) on the labelled images, or the backbone weights of
     an APT demo bundle (``vlm_from``: the same stage-0 result, not retrained here).
  3. Stage 1 (the prior), Stage 2 with the prior (distillation, then end to end) and, for the convergence
     claim, the same Stage 2 from a random action module without distillation (``control_steps`` > 0), both
     evaluated every ``eval_every`` steps on ``curve_episodes`` held-out scenes.
  4. evaluation (history-aware rollouts, ``evaluate_history``): the Stage-1 prior alone and the Stage-2 VLA,
     ``eval_episodes`` held-out scenes per instruction, training phrasings and the held-out phrasing;
     ``out/eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from ..control.history import HistoryBuffer
from ..core.action_prior import ActionPriorConfig
from ..core.config import ActionSemantics, ExpertConfig
from ..core.normalize import Normalizer
from ..core.start_views import StartViews, check_cameras, live_cameras
from ..model.action_prior import ActionPriorModel
from ..model.apt import build_backbone
from ..model.backbone import Qwen3VLBackboneConfig
from ..model.bundle import save_bundle
from ..model.presets import tiny_policy_config
from ..runtime.policy import History, Policy
from ..runtime.torch_backend import ActionPriorPolicy
from ..tasks.dataset import DemoConfig, DemoDataset, default_workers, generate_dataset, with_start_views
from ..tasks.instructions import HELD_OUT_TEMPLATE, TRAIN_TEMPLATES
from ..tasks.rollout import make_cameras, observe
from ..tasks.scene import COLORS, SUCCESS_RADIUS, distance_to_block, sample_scene
from ..tasks.sim import KinematicArm
from .action_prior import PriorTrainConfig, action_trajectories, run_prior_stage1, train_vla, vla_data
from .action_prior import stage2_model as make_stage2
from .vocabulary import write_default_tokenizer


@dataclass(frozen=True)
class PriorDemoSettings:
    """Everything that determines the result (the cache key)."""

    seed: int = 0
    episodes: int = 300
    steps_per_episode: int = 40
    execution_noise: float = 0.02
    kick_probability: float = 0.0  # DART-style displaced steps in the demonstrations (tasks/dataset.py)
    kick_noise: float = 0.0
    image_size: tuple[int, int] = (96, 128)
    render_size: tuple[int, int] | None = (480, 640)
    # views the policy sees; stage 0 grounds them all, but a vlm_from VLM only the views it was grounded on
    # (the APT demo's: front). Front + side did not move scene 20000 (docs/ACTION_PRIOR.md, eleventh session);
    # "front@start", the front frame of the episode's start (core.start_views), did (sixteenth session)
    cameras: tuple[str, ...] = ("front", "front@start")
    patch_size: int = 8
    vision_depth: int = 1
    horizon: int = 16
    # 1200 action-only episodes and 6000 steps: the prior reproduces a chunk resting at a goal to 0.2-0.5 cm
    # (600 and 2000: 0.5-1.4 cm; docs/ACTION_PRIOR.md, ninth session)
    prior_episodes: int = 1200
    history_steps: int = 4
    latent_dim: int = 32
    width: int = 64
    head_layers: int = 2
    stage1_steps: int = 6000
    stage2_steps: int = 3000
    distill_steps: int = 300
    control_steps: int = 1500  # the no-prior control run (0: skip the convergence measurement)
    batch_size: int = 64
    lr: float = 1e-3
    sampling_steps: int = 5
    rtc_max_delay: int = 4
    stage2_episodes: int = 300  # labelled episodes Stage 2 trains on (of the data; the prior has 600)
    eval_every: int = 250
    curve_episodes: int = 30
    eval_episodes: int = 50  # per instruction
    eval_max_steps: int = 60
    eval_actions_per_chunk: int = 12
    vlm_from: str = ""  # an APT demo bundle whose (stage-0 grounded) backbone weights to use
    data: str = ""  # a saved demos.npz with these settings' DemoConfig


def _demo_config(s: PriorDemoSettings) -> DemoConfig:
    """How the labelled data is rendered: the live cameras (start views are taken from them)."""
    check_cameras(s.cameras)
    return DemoConfig(
        cameras=live_cameras(s.cameras),
        image_size=s.image_size,
        render_size=s.render_size,
        horizon=s.horizon,
        steps_per_episode=s.steps_per_episode,
        execution_noise=s.execution_noise,
        kick_probability=s.kick_probability,
        kick_noise=s.kick_noise,
    )


def _policy_config(s: PriorDemoSettings, data: DemoDataset, dc: DemoConfig):
    tiny = Qwen3VLBackboneConfig.tiny()
    backbone = tiny.replace(
        vision=dataclasses.replace(
            tiny.vision,
            patch_size=s.patch_size,
            depth=s.vision_depth,
            deepstack_visual_indexes=tuple(range(min(s.vision_depth, 2))),
        ),
        num_cameras=len(s.cameras),
        image_size=dc.image_size,
        max_text_tokens=8,
    )
    w = s.width
    config = tiny_policy_config(
        "pi",
        cameras=tuple(s.cameras),
        image_size=dc.image_size,
        max_instruction_tokens=8,
        state_names=data.state_names,
        action_names=data.action_names,
        horizon=s.horizon,
        control_dt=dc.dt,
        sampling_steps=s.sampling_steps,
        expert=ExpertConfig(width=w, num_heads=4, head_dim=w // 4, mlp_dim=2 * w, num_layers=s.head_layers),
        action_semantics=ActionSemantics(arm="absolute", gripper="absolute"),
        model_id="action-prior-reaching-demo",
        backbone=backbone.to_dict(),
    )
    ap = ActionPriorConfig(
        history_steps=s.history_steps, latent_dim=s.latent_dim, width=w, num_heads=4, mlp_dim=2 * w
    )
    return dataclasses.replace(
        config,
        family="action_prior",
        family_config=ap.to_dict(),
        noise_scale=0.0,
        rtc_max_delay=s.rtc_max_delay,
    ).validate()


# --------------------------------------------------------------------------------------- evaluation
def history_rollout(
    policy: Policy,
    seed: int,
    instruction: str,
    color: str,
    s: PriorDemoSettings,
    noise_rng: np.random.Generator | None = None,
) -> tuple[bool, int]:
    """One closed-loop episode; the policy gets the executed (state, command) history at its dt.
    Noise: zero (this family's demo samples with noise_scale 0), or drawn from ``noise_rng`` times the
    policy's noise_scale at every inference. Returns (success, command violations)."""
    info = policy.info
    scene = sample_scene(seed)
    cams = make_cameras(live_cameras(info.cameras), info.image_size, s.render_size)
    arm = KinematicArm(None, info.dt)
    buffer = HistoryBuffer(info.history_steps, len(info.state_names), info.action_dim, info.dt)
    start_views = StartViews(info.cameras)  # the first observation's frames, as the node holds them
    noise = np.zeros((info.horizon, info.action_dim), np.float32)
    step = 0
    while step < s.eval_max_steps:
        obs = observe(arm, scene, cams, instruction, step)
        snap = buffer.snapshot()
        if noise_rng is not None:
            noise = (noise_rng.standard_normal(noise.shape) * info.noise_scale).astype(np.float32)
        images = start_views.add(obs.images, buffer.episode)
        chunk = policy.predict(
            images, obs.state, instruction, noise, history=History(snap.states, snap.actions, snap.valid)
        )
        done = False
        for action in chunk[: s.eval_actions_per_chunk]:
            state = np.append(arm.q, arm.gripper_width).astype(np.float32)
            arm.command(action[:7], float(action[7]))
            buffer.record(step * info.dt, state, action)
            step += 1
            near = distance_to_block(arm.tcp_position, scene.block(color)) < SUCCESS_RADIUS
            if (near and np.max(np.abs(arm.qd)) < 0.05) or step >= s.eval_max_steps:
                done = True
                break
        if done:
            break
    success = distance_to_block(arm.tcp_position, scene.block(color)) < SUCCESS_RADIUS
    return bool(success), int(arm.violations.total)


def evaluate_history(
    policy: Policy,
    s: PriorDemoSettings,
    per_instruction: int,
    *,
    held_out: bool,
    seed: int = 10_000,
    progress: bool = True,
    desc: str = "eval",
    sampled_noise: bool = False,
) -> dict[str, Any]:
    """Success per instruction over ``per_instruction`` held-out scenes each (scene seeds seed + i).
    ``sampled_noise``: each episode draws its noise from a generator seeded by its scene (the same noise
    for every policy evaluated so); else zero noise."""
    templates = (HELD_OUT_TEMPLATE,) if held_out else TRAIN_TEMPLATES
    results: dict[str, list[bool]] = defaultdict(list)
    violations = 0
    jobs = [(t.format(color=c), c) for t in templates for c in COLORS]
    total = len(jobs) * per_instruction
    with tqdm(total=total, desc=desc, unit="ep", disable=not progress) as bar:
        for instruction, color in jobs:
            for i in range(per_instruction):
                rng = np.random.default_rng(seed + i) if sampled_noise else None
                ok, v = history_rollout(policy, seed + i, instruction, color, s, rng)
                results[instruction].append(ok)
                violations += v
                bar.update()
    every = [ok for v in results.values() for ok in v]
    return {
        "episodes": len(every),
        "held_out_phrasing": held_out,
        "success_rate": float(np.mean(every)),
        "command_violations": violations,
        "per_instruction": {
            k: {"episodes": len(v), "success_rate": float(np.mean(v))} for k, v in results.items()
        },
    }


def curve_success(policy: Policy, s: PriorDemoSettings, seed: int = 20_000) -> float:
    """Success over ``curve_episodes`` held-out scenes, colours and training phrasings in turn."""
    ok = []
    for i in range(s.curve_episodes):
        color = tuple(COLORS)[i % len(COLORS)]
        instruction = TRAIN_TEMPLATES[(i // len(COLORS)) % len(TRAIN_TEMPLATES)].format(color=color)
        ok.append(history_rollout(policy, seed + i, instruction, color, s)[0])
    return float(np.mean(ok))


def steps_to(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first evaluated step whose success is >= level (None: never)."""
    return next((step for step, rate in curve if rate >= level), None)


# ---------------------------------------------------------------------------------------------- run
def run_prior_demo(
    out: str | Path, force: bool = False, progress: bool = True, **overrides: Any
) -> dict[str, Any]:
    """Train, evaluate and write bundles (``out/stage1``, ``out/stage2``) and ``out/eval.json``."""
    out = Path(out)
    s = PriorDemoSettings(**overrides)
    report_path = out / "eval.json"
    if not force and report_path.is_file():
        cached = json.loads(report_path.read_text())
        if (
            cached.get("settings") == json.loads(json.dumps(asdict(s)))
            and (out / "stage2/config.json").is_file()
        ):
            if progress:
                print(f"demo: reusing the finished run in {out} (pass --force to retrain)")
            return cached
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    dc = _demo_config(s)
    if s.data:
        data = DemoDataset.load(s.data)
        if (
            data.config.get("horizon") != s.horizon
            or tuple(data.config["image_size"]) != tuple(s.image_size)
            or tuple(data.images) != tuple(dc.cameras)
        ):
            raise ValueError(
                f"{s.data}: made with another DemoConfig ({data.config}; cameras {tuple(data.images)}, "
                f"these settings {tuple(dc.cameras)})"
            )
    else:
        data = generate_dataset(
            s.episodes, 2, dc, seed=s.seed + 1, progress=progress, workers=default_workers()
        )
    labelled = data.select(data.episode < s.stage2_episodes)
    labelled = with_start_views(labelled, s.cameras)
    traj = action_trajectories(s.prior_episodes, dc, seed=s.seed + 7, progress=progress)
    timings["data_s"] = time.monotonic() - t0

    tokenizer = write_default_tokenizer(out / "tokenizer.json")
    config = _policy_config(s, data, dc)
    torch.manual_seed(s.seed)
    vlm = build_backbone(config)
    t = time.monotonic()
    if s.vlm_from:
        weights = load_file(str(Path(s.vlm_from) / "model.safetensors"))
        vlm.load_state_dict(
            {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
        )
    else:
        from .demo import DemoSettings, _ground_vlm

        apt_like = DemoSettings(seed=s.seed, cameras=dc.cameras)
        if dc.cameras == tuple(s.cameras):
            _ground_vlm(vlm, apt_like, config, data, tokenizer, progress)
        else:  # stage 0 grounds the live views, on a twin laid out for them (the weights fit either layout)
            live = _policy_config(dataclasses.replace(s, cameras=dc.cameras), data, dc)
            twin = build_backbone(live)
            twin.load_state_dict(vlm.state_dict())
            _ground_vlm(twin, apt_like, live, data, tokenizer, progress)
            vlm.load_state_dict(twin.state_dict())
    vlm.requires_grad_(False)
    timings["vlm_s"] = time.monotonic() - t

    t = time.monotonic()
    torch.manual_seed(s.seed)
    prior_model = ActionPriorModel(config, backbone=vlm)
    normalizer = Normalizer.fit(traj.states, traj.chunks, config.normalization)
    common = {"batch_size": s.batch_size, "lr": s.lr, "seed": s.seed}
    stage1, r1 = run_prior_stage1(
        prior_model,
        normalizer,
        traj,
        tokenizer,
        out / "stage1",
        PriorTrainConfig(steps=s.stage1_steps, **common),
        progress,
    )
    timings["stage1_s"] = time.monotonic() - t

    t = time.monotonic()
    features = vla_data(
        prior_model, labelled, labelled.episode, labelled.step, tokenizer, normalizer, progress
    )
    timings["encode_s"] = time.monotonic() - t

    def run(prior: bool, steps: int) -> tuple[ActionPriorModel, list[tuple[int, float]], Any]:
        m = make_stage2(prior_model, prior=prior, seed=s.seed)
        curve: list[tuple[int, float]] = []

        def evaluate_now(step: int, current: ActionPriorModel) -> None:
            policy = ActionPriorPolicy(current, normalizer, tokenizer)
            curve.append((step, curve_success(policy, s)))
            if progress:
                print(
                    f"  {'prior' if prior else 'no prior'} step {step}: success {curve[-1][1]:.0%}",
                    flush=True,
                )

        cfg = PriorTrainConfig(steps=steps, distill_steps=s.distill_steps, **common)
        r = train_vla(
            m, features, cfg, prior=prior, progress=progress, every=s.eval_every, callback=evaluate_now
        )
        return m, curve, r

    t = time.monotonic()
    model, curve_prior, r2 = run(True, s.stage2_steps)
    stage2 = save_bundle(out / "stage2", model, normalizer, tokenizer)
    timings["stage2_s"] = time.monotonic() - t
    curve_control: list[tuple[int, float]] = []
    if s.control_steps:
        t = time.monotonic()
        control, curve_control, _ = run(False, s.control_steps)
        save_bundle(out / "control", control, normalizer, tokenizer)
        timings["control_s"] = time.monotonic() - t

    t = time.monotonic()
    results: dict[str, Any] = {}
    for name, bundle in (("stage1_prior", stage1), ("stage2", stage2)):
        policy = ActionPriorPolicy.from_bundle(bundle, seed=s.seed)
        for key, held_out in (("train_phrasing", False), ("held_out_phrasing", True)):
            n = s.eval_episodes if name == "stage2" else max(s.eval_episodes // len(TRAIN_TEMPLATES), 10)
            results[f"{name}/{key}"] = evaluate_history(
                policy, s, n, held_out=held_out, progress=progress, desc=f"eval {name} {key}"
            )
    timings["eval_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0
    report = {
        "settings": asdict(s),
        "summary": {
            k: f"{k}: success {v['success_rate']:.1%} over {v['episodes']}" for k, v in results.items()
        },
        "results": results,
        "convergence": {
            "with_prior": curve_prior,
            "without_prior": curve_control,
            "steps_to_90_with_prior": steps_to(curve_prior, 0.9),
            "steps_to_90_without_prior": steps_to(curve_control, 0.9) if curve_control else None,
        },
        "loss": {
            "stage1_first50": r1.mean_loss(0, 50),
            "stage1_last50": r1.mean_loss(-50, None),
            "stage2_first50": r2.mean_loss(0, 50),
            "stage2_last50": r2.mean_loss(-50, None),
            "distill_first": r2.distill_losses[:1],
            "distill_last": r2.distill_losses[-1:],
        },
        "timings_s": timings,
        "bundles": {"stage1": str(stage1), "stage2": str(stage2)},
    }
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        for line in report["summary"].values():
            print(line)
        print(json.dumps(report["convergence"]))
    return report
