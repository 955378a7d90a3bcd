"""Instruction templates: the held-out phrasing must never appear in training data."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.tasks.reaching import (
    COLORS,
    HELD_OUT_INSTRUCTIONS,
    HELD_OUT_TEMPLATE,
    TRAIN_TEMPLATES,
    make_instruction,
    target_color,
)


def test_held_out_phrasing_is_not_a_training_template() -> None:
    assert HELD_OUT_TEMPLATE not in TRAIN_TEMPLATES
    rng = np.random.default_rng(0)
    produced = {make_instruction(c, rng) for _ in range(300) for c in COLORS}
    assert produced == {t.format(color=c) for t in TRAIN_TEMPLATES for c in COLORS}
    assert not produced & set(HELD_OUT_INSTRUCTIONS)
    # Not even the verb phrase of the held-out template is in training.
    assert not any("touch" in t or "one" in t.split() for t in TRAIN_TEMPLATES)


def test_target_colour_is_recovered_from_every_phrasing() -> None:
    for color in COLORS:
        for template in (*TRAIN_TEMPLATES, HELD_OUT_TEMPLATE):
            assert target_color(template.format(color=color)) == color
        assert make_instruction(color, held_out=True) == HELD_OUT_TEMPLATE.format(color=color)
    assert target_color("reach the block") is None
    assert target_color("red or blue") is None
    with pytest.raises(ValueError, match="unknown colour"):
        make_instruction("purple")
