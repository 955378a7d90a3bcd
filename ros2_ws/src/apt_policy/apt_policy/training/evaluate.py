"""Closed-loop evaluation of a policy on the simulated reaching task, per instruction.

Episode i uses scene seed ``seed + i`` (scenes not used for training when seeds differ), target colour
``COLORS[i % 3]`` and phrasing ``TRAIN_TEMPLATES[(i // 3) % len]`` (or the held-out phrasing), so every
colour and phrasing is covered evenly and the Stage-1 and Stage-2 policies face identical episodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm import tqdm

from ..runtime.policy import Policy
from ..tasks.instructions import HELD_OUT_TEMPLATE, TRAIN_TEMPLATES
from ..tasks.rollout import Observation, rollout
from ..tasks.scene import COLORS, sample_scene


def evaluate(
    policy: Policy,
    episodes: int,
    *,
    held_out: bool,
    cameras: tuple[str, ...] | None = None,
    image_size: tuple[int, int] | None = None,
    render_size: tuple[int, int] | None = (480, 640),
    seed: int = 10_000,
    max_steps: int = 60,
    actions_per_chunk: int = 8,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, Any]:
    """Success rates overall, per instruction and per colour; also which block was reached."""
    colors = tuple(COLORS)
    per_instruction: dict[str, list[bool]] = defaultdict(list)
    per_color: dict[str, list[bool]] = defaultdict(list)
    reached_any = []
    distances = []
    violations = 0
    rng = np.random.default_rng(seed)
    info = policy.info
    noise_shape = (info.horizon, info.action_dim)

    def policy_fn(obs: Observation) -> np.ndarray:  # the noise the policy would draw, from our seed
        noise = (rng.standard_normal(noise_shape) * info.noise_scale).astype(np.float32)
        return policy.predict(obs.images, obs.state, obs.instruction, noise)

    for i in tqdm(range(episodes), desc=desc, unit="ep", disable=not progress):
        color = colors[i % len(colors)]
        template = (
            HELD_OUT_TEMPLATE if held_out else TRAIN_TEMPLATES[(i // len(colors)) % len(TRAIN_TEMPLATES)]
        )
        instruction = template.format(color=color)
        scene = sample_scene(seed + i)
        result = rollout(
            policy_fn,
            scene,
            instruction,
            target=color,
            cameras=cameras or info.cameras,
            image_size=image_size or info.image_size,
            render_size=render_size,
            dt=info.dt,
            max_steps=max_steps,
            actions_per_chunk=actions_per_chunk,
        )
        per_instruction[instruction].append(result.success)
        per_color[color].append(result.success)
        reached_any.append(result.reached is not None)
        distances.append(result.final_distance)
        violations += result.violations.total
    all_success = [s for v in per_instruction.values() for s in v]
    return {
        "episodes": episodes,
        "held_out_phrasing": held_out,
        "success_rate": _rate(all_success),
        "reached_some_block_rate": _rate(reached_any),
        "median_final_distance_m": float(np.median(distances)),
        "command_violations": int(violations),
        "per_color": {c: {"episodes": len(v), "success_rate": _rate(v)} for c, v in per_color.items()},
        "per_instruction": {
            k: {"episodes": len(v), "success_rate": _rate(v)} for k, v in per_instruction.items()
        },
    }


def _rate(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summary_line(name: str, report: Mapping[str, Any]) -> str:
    return (
        f"{name}: success {report['success_rate']:.0%} over {report['episodes']} episodes"
        f" (reached some block {report['reached_some_block_rate']:.0%},"
        f" median final distance {report['median_final_distance_m'] * 100:.1f} cm)"
    )
