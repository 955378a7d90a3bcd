"""The demo's episodes: each colour in turn, the held-out phrasing, and one instruction switched mid-motion.

Every episode starts like the training data: the arm at the FR3 ready pose (training starts within
+-0.15 rad of it) over a scene of three blocks sampled from a seed that no training or evaluation episode
uses (training: ``seed * 1_000_003 + episode``; ``apt-train`` evaluation: 10_000 + i; demo: 20_000 + i).
"""

from __future__ import annotations

import itertools
import math

from apt_policy.demo.recording import EpisodePlan
from apt_policy.robots.franka import FR3
from apt_policy.tasks.instructions import HELD_OUT_TEMPLATE, TRAIN_TEMPLATES
from apt_policy.tasks.scene import COLORS, sample_scene

__all__ = ["DEMO_SEED", "plan_episodes"]

DEMO_SEED = 20_000


def _farthest_pair(seed: int) -> tuple[str, str]:
    """The two colours whose blocks are farthest apart in the scene of ``seed`` (a visible switch)."""
    scene = sample_scene(seed)
    pairs = itertools.permutations(scene.blocks, 2)
    a, b = max(pairs, key=lambda p: math.hypot(p[0].x - p[1].x, p[0].y - p[1].y))
    return a.color, b.color


def plan_episodes(
    seed: int = DEMO_SEED,
    switch_after_s: float = 1.0,
    timeout_s: float = 12.0,
    held_out: bool = True,
) -> list[EpisodePlan]:
    """Episodes in order: one per colour (training phrasings), the held-out phrasing, the switch."""
    start = tuple(float(v) for v in FR3.ready_pose)
    plans = []
    for i, color in enumerate(COLORS):
        text = TRAIN_TEMPLATES[i % len(TRAIN_TEMPLATES)].format(color=color)
        plans.append(
            EpisodePlan(f"ep{len(plans) + 1}", seed + len(plans), color, ((0.0, text),), start, timeout_s)
        )
    if held_out:
        color = list(COLORS)[1]
        text = HELD_OUT_TEMPLATE.format(color=color)
        plans.append(
            EpisodePlan(f"ep{len(plans) + 1}", seed + len(plans), color, ((0.0, text),), start, timeout_s)
        )
    switch_seed = seed + len(plans)
    first, second = _farthest_pair(switch_seed)
    instructions = (
        (0.0, TRAIN_TEMPLATES[0].format(color=first)),
        (float(switch_after_s), TRAIN_TEMPLATES[4].format(color=second)),
    )
    plans.append(
        EpisodePlan(
            f"ep{len(plans) + 1}-switch", switch_seed, second, instructions, start, timeout_s + switch_after_s
        )
    )
    return plans
