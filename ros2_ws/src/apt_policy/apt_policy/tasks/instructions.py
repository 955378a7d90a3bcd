"""Instruction phrasings for the reaching task, with one phrasing held out of training.

``TRAIN_TEMPLATES`` are used to label Stage-2 data; ``HELD_OUT_TEMPLATE`` is never used in training and
measures instruction generalisation. ``target_color`` recovers the named colour from any phrasing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from apt_policy.tasks.scene import COLORS

__all__ = [
    "HELD_OUT_INSTRUCTIONS",
    "HELD_OUT_TEMPLATE",
    "TRAIN_TEMPLATES",
    "make_instruction",
    "target_color",
]

TRAIN_TEMPLATES: tuple[str, ...] = (
    "reach the {color} block",
    "move to the {color} cube",
    "reach for the {color} cube",
    "put your gripper above the {color} block",
    "go to the {color} block",
    "move the arm to the {color} cube",
)
HELD_OUT_TEMPLATE = "go touch the {color} one"
HELD_OUT_INSTRUCTIONS: tuple[str, ...] = tuple(HELD_OUT_TEMPLATE.format(color=c) for c in COLORS)


def make_instruction(color: str, rng: np.random.Generator | None = None, held_out: bool = False) -> str:
    """An instruction naming ``color``: a random training template, or the held-out phrasing."""
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; known: {sorted(COLORS)}")
    if held_out:
        return HELD_OUT_TEMPLATE.format(color=color)
    templates: Sequence[str] = TRAIN_TEMPLATES
    index = 0 if rng is None else int(rng.integers(len(templates)))
    return templates[index].format(color=color)


def target_color(instruction: str) -> str | None:
    """The single colour word in ``instruction`` (``None`` if there is none or more than one)."""
    words = set(re.findall(r"[a-z]+", instruction.lower()))
    found = [c for c in COLORS if c in words]
    return found[0] if len(found) == 1 else None
