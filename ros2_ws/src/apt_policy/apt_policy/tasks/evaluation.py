"""Success rates of a policy on seeded reaching episodes, with training or held-out phrasings.

``evaluate(policy_fn, episodes=30, instructions="held_out")`` runs :func:`rollout` on scenes
``sample_scene(seed + i)``, cycling the target colour, and reports the success rate, the rate of reaching
a wrong block, and the mean final distance. ``instructions="none"`` evaluates a Stage-1 (language-free)
policy: the instruction is empty and success means reaching *any* block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from apt_policy.tasks.instructions import make_instruction
from apt_policy.tasks.rollout import PolicyFn, RolloutResult, rollout
from apt_policy.tasks.scene import sample_scene

__all__ = ["INSTRUCTION_MODES", "EvaluationResult", "evaluate", "held_out_gap"]

INSTRUCTION_MODES = ("train", "held_out", "none")


@dataclass
class EvaluationResult:
    """Aggregate outcome of :func:`evaluate` (rates in [0, 1], distance in metres)."""

    mode: str
    success_rate: float
    wrong_block_rate: float
    mean_final_distance: float
    violations: int
    episodes: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "episodes": len(self.episodes),
            "success_rate": self.success_rate,
            "wrong_block_rate": self.wrong_block_rate,
            "mean_final_distance": self.mean_final_distance,
            "violations": self.violations,
        }


def evaluate(
    policy_fn: PolicyFn,
    episodes: int = 30,
    instructions: str = "train",
    seed: int = 10_000,
    progress: bool = True,
    **rollout_kwargs: Any,
) -> EvaluationResult:
    """Roll ``policy_fn`` out on ``episodes`` seeded scenes; ``rollout_kwargs`` go to :func:`rollout`."""
    if instructions not in INSTRUCTION_MODES:
        raise ValueError(f"instructions={instructions!r}: expected one of {INSTRUCTION_MODES}")
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    successes = wrong = violations = 0
    distances: list[float] = []
    for i in tqdm(range(episodes), desc=f"eval ({instructions})", unit="ep", disable=not progress):
        scene = sample_scene(seed + i)
        color = scene.colors[i % len(scene.colors)]
        text = (
            ""
            if instructions == "none"
            else make_instruction(color, rng, held_out=instructions == "held_out")
        )
        result: RolloutResult = rollout(policy_fn, scene, text, target=color, **rollout_kwargs)
        ok = result.reached is not None if instructions == "none" else result.success
        is_wrong = instructions != "none" and result.reached not in (None, color)
        successes += ok
        wrong += is_wrong
        violations += result.violations.total
        distances.append(result.final_distance)
        rows.append(
            {
                "seed": seed + i,
                "instruction": text,
                "target": color,
                "success": bool(ok),
                "reached": result.reached,
                "final_distance": result.final_distance,
                "steps": result.steps,
            }
        )
    return EvaluationResult(
        mode=instructions,
        success_rate=successes / episodes,
        wrong_block_rate=wrong / episodes,
        mean_final_distance=float(np.mean(distances)),
        violations=violations,
        episodes=rows,
    )


def held_out_gap(train: EvaluationResult, held_out: EvaluationResult) -> float:
    """Success-rate drop from training to held-out phrasings (the instruction-generalisation gap)."""
    return train.success_rate - held_out.success_rate
