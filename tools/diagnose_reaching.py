"""Where does the reaching demo policy fail? Small, single-threaded ablations over one frozen encoding.

For each variant (state features x action parametrisation) it trains a fresh Stage-1-shaped expert on
the same cached frozen-VLM features, then reports the open-loop chunk error on training samples (rad,
vs "hold still") and closed-loop success on held-out scenes with ``tasks.rollout``. The ``+goal``
variant gets the target's IK goal configuration as a privileged state (an oracle for what vision must
supply). A ridge probe says how well block positions can be read linearly from the frozen features.

    PYTHONPATH=ros2_ws/src/apt_policy python tools/diagnose_reaching.py --episodes 100 --steps 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np
import torch
from apt_policy.core.config import ActionSemantics, ExpertConfig
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import ImagePreprocessor, InstructionTokenizer
from apt_policy.model.apt import APTModel
from apt_policy.model.backbone import Qwen3VLBackboneConfig
from apt_policy.model.presets import tiny_policy_config
from apt_policy.robots.franka import FR3
from apt_policy.tasks.dataset import DemoConfig
from apt_policy.tasks.expert import ReachingExpert, goal_configuration
from apt_policy.tasks.instructions import make_instruction
from apt_policy.tasks.rollout import make_cameras, observe, rollout
from apt_policy.tasks.scene import COLORS, sample_scene
from apt_policy.tasks.sim import KinematicArm
from apt_policy.training.data import encode_dataset
from apt_policy.training.trainer import TrainConfig, train
from apt_policy.training.vocabulary import write_default_tokenizer

IMAGE = (96, 128)
HORIZON = 16


def generate(episodes: int, keep_every: int) -> dict[str, np.ndarray]:
    """Expert episodes as in tasks.dataset (execution noise 0.02), with qd, goal and block positions."""
    cfg = DemoConfig(image_size=IMAGE, render_size=None, horizon=HORIZON, steps_per_episode=24)
    cams = make_cameras(cfg.cameras, cfg.image_size, cfg.render_size)
    out: dict[str, list] = {k: [] for k in ("images", "q", "qd", "goal", "actions", "blocks", "episode")}
    for e in range(episodes):
        rng = np.random.default_rng(1_000_003 + e)
        scene = sample_scene(rng)
        color = scene.colors[int(rng.integers(len(scene.colors)))]
        instruction = make_instruction(color, rng)
        goal = goal_configuration(scene.block(color))
        expert = ReachingExpert(goal, cfg.dt, cfg.horizon, FR3, cfg.expert)
        q0 = FR3.clip_position(FR3.ready_pose + rng.uniform(-1, 1, 7) * cfg.start_noise, 0.05)
        arm = KinematicArm(q0, cfg.dt)
        blocks = [v for c in sorted(scene.colors) for v in (scene.block(c).x, scene.block(c).y)]
        for step in range(cfg.steps_per_episode):
            joints = expert.chunk(arm.q, arm.qd)
            if step % keep_every == e % keep_every:
                out["images"].append(observe(arm, scene, cams, instruction, step).images["front"])
                for key, value in (("q", arm.q), ("qd", arm.qd), ("goal", goal), ("actions", joints)):
                    out[key].append(np.array(value))
                out["blocks"].append(blocks)
                out["episode"].append(e)
            arm.command(FR3.clip_position(joints[0] + rng.normal(0, 0.02, 7)))
    return {k: np.array(v) for k, v in out.items()}


def probe(features: np.ndarray, target: np.ndarray, train_rows: np.ndarray) -> tuple[float, float]:
    """Held-out mean abs error of the best ridge fit, and of predicting the training mean."""
    x = features.reshape(len(features), -1).astype(np.float64)
    x = (x - x[train_rows].mean(0)) / (x[train_rows].std(0) + 1e-6)
    mean = target[train_rows].mean(0)
    a, test = x[train_rows], ~train_rows
    best = np.inf
    for lam in (1e-1, 1e1, 1e3, 1e4):
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (target[train_rows] - mean))
        best = min(best, float(np.abs(x[test] @ w + mean - target[test]).mean()))
    return best, float(np.abs(mean - target[test]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--keep-every", type=int, default=1, help="keep one step in N per episode")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-episodes", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    d = generate(args.episodes, args.keep_every)
    q, qd, goal, acts = d["q"], d["qd"], d["goal"], d["actions"]
    work = tempfile.mkdtemp(prefix="diagnose_reaching_")
    tok_path = write_default_tokenizer(os.path.join(work, "tokenizer.json"))
    tiny = Qwen3VLBackboneConfig.tiny()
    vision = dataclasses.replace(tiny.vision, patch_size=8, depth=1, deepstack_visual_indexes=(0,))
    backbone_cfg = tiny.replace(vision=vision, num_cameras=1, image_size=IMAGE, max_text_tokens=8)

    def config(state_dim: int):
        return tiny_policy_config(
            cameras=("front",),
            image_size=IMAGE,
            state_names=tuple(f"s{i}" for i in range(state_dim)),
            action_names=FR3.joint_names,
            horizon=HORIZON,
            expert=ExpertConfig(width=64, num_heads=4, head_dim=16, mlp_dim=128, num_layers=2),
            action_semantics=ActionSemantics(arm="absolute"),
            backbone=backbone_cfg.to_dict(),
        )

    torch.manual_seed(0)
    base = APTModel(config(7))
    tok = InstructionTokenizer(tok_path, 8)
    samples = [
        {
            "images": {"front": im},
            "state": s.astype(np.float32),
            "instruction": "",
            "actions": a.astype(np.float32),
        }
        for im, s, a in zip(d["images"], q, acts, strict=True)
    ]
    enc = encode_dataset(base, samples, tok, Normalizer.fit(q, acts, "quantile"), use_language=False)
    train_rows = d["episode"] < int(0.8 * args.episodes)
    vis = enc.vision_mask[0]
    for layer in range(enc.hidden.shape[1]):
        err, ref = probe(enc.hidden[:, layer][:, vis].numpy(), d["blocks"], train_rows)
        print(
            f"probe block xy from expert layer {layer} features: {err * 100:.1f} cm (mean {ref * 100:.1f} cm)"
        )

    pre = ImagePreprocessor(("front",), IMAGE, base.config.image_mean, base.config.image_std)
    ids, mask = (torch.from_numpy(np.array(v)) for v in tok(""))
    variants = {
        "absolute, state q": (lambda q_, qd_, g_: q_, False),
        "delta, state q+qd": (lambda q_, qd_, g_: np.concatenate([q_, qd_], -1), True),
        "delta, state q+qd+goal (oracle)": (lambda q_, qd_, g_: np.concatenate([q_, qd_, g_], -1), True),
    }
    for name, (features, delta) in variants.items():
        states = features(q, qd, goal)
        targets = acts - q[:, None] if delta else acts
        norm = Normalizer.fit(states, targets, "quantile")
        torch.manual_seed(0)
        model = APTModel(config(states.shape[1]), backbone=base.backbone)
        data = dataclasses.replace(
            enc,
            states=torch.from_numpy(norm.normalize_state(states)).float(),
            actions=torch.from_numpy(norm.normalize_actions(targets)).float(),
        )
        train(model, data, TrainConfig(steps=args.steps), os.path.join(work, name), progress=False)
        rows = torch.arange(0, len(data), 7)[:256]
        with torch.no_grad():
            hidden, vmask, lmask, st, _ = data.batch(rows)
            prefix = model.project_prefix(hidden, vmask, lmask, preselected=True)
            noise = torch.randn((len(rows), HORIZON, 7), generator=torch.Generator().manual_seed(1))
            pred = norm.unnormalize_actions(model.sample(*prefix, st, noise).numpy())
        r = rows.numpy()
        pred = pred + q[r][:, None] if delta else pred
        err, hold = np.abs(pred - acts[r]).mean(), np.abs(q[r][:, None] - acts[r]).mean()
        rng = np.random.default_rng(5)
        success, reached, dist = [], [], []
        for i in range(args.eval_episodes):
            scene, color = sample_scene(10_000 + i), tuple(COLORS)[i % 3]
            g = goal_configuration(scene.block(color))

            def policy(obs, g=g, model=model, norm=norm, features=features, delta=delta, rng=rng):
                s = features(obs.state[:7].astype(np.float64), obs.joint_velocity, g)
                with torch.no_grad():
                    prefix = model.encode_prefix(torch.from_numpy(pre(obs.images)), ids, mask)
                    ns = torch.from_numpy(norm.normalize_state(s)[None]).float()
                    z = torch.from_numpy(rng.standard_normal((1, HORIZON, 7)).astype(np.float32))
                    a = norm.unnormalize_actions(model.sample(*prefix, ns, z)[0].numpy())
                return a + obs.state[:7] if delta else a

            res = rollout(policy, scene, "", target=color, image_size=IMAGE, render_size=None, max_steps=60)
            success.append(res.success)
            reached.append(res.reached is not None)
            dist.append(res.final_distance)
        print(
            f"{name:34s} open-loop {err:.4f} rad (hold {hold:.4f});"
            f" closed loop success {np.mean(success):.0%},"
            f" reached any {np.mean(reached):.0%}, median {np.median(dist) * 100:.1f} cm"
        )


if __name__ == "__main__":
    main()
