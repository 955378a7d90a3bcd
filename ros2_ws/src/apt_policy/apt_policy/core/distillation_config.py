"""The action-distillation family's settings (``PolicyConfig.family_config`` when ``family`` is
"action_distillation"; torch-free). See docs/ACTION_DISTILLATION.md.

The student is a VLM with a state token and ``num_action_tokens`` learnable action tokens appended to its
sequence; each action token's final hidden state goes through the action mapper (an MLP, VLM width ->
``teacher_width``) into the teacher's frozen action decoder (Seer's deterministic MLP), which predicts
``pred_steps`` future actions per token; the chunk is the tokens' predictions in order, so
``horizon == num_action_tokens * pred_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .config import ConfigError

FAMILY = "action_distillation"


class DistillationConfigError(ConfigError):
    """``family_config`` of an action-distillation bundle is malformed; the message names the field."""


@dataclass(frozen=True)
class TeacherConfig:
    """The small Seer-like action model (model/teacher.py): width of its transformer and action features."""

    width: int = 64  # D: transformer width = action-feature size = decoder input
    num_heads: int = 4
    num_layers: int = 2
    cnn_channels: int = 32  # last channel count of the image encoder
    vocab_size: int = 512  # instruction token embedding rows (the tokenizer's ids must fit)

    def validate(self, prefix: str = "teacher") -> TeacherConfig:
        for f in fields(self):
            _positive_int(f"{prefix}.{f.name}", getattr(self, f.name))
        if self.width % self.num_heads:
            raise DistillationConfigError(
                f"{prefix}.width={self.width}: must be divisible by {prefix}.num_heads={self.num_heads}"
            )
        if self.width < 2:
            raise DistillationConfigError(
                f"{prefix}.width={self.width}: must be >= 2 (the decoder halves it)"
            )
        return self


@dataclass(frozen=True)
class DistillationConfig:
    """Validated ``family_config`` of the action-distillation family."""

    teacher: TeacherConfig = TeacherConfig()
    num_action_tokens: int = 1
    pred_steps: int = 3  # future actions the decoder predicts per action token (Seer: 3)
    mapper_hidden: int = 128  # the action mapper's hidden width
    state_hidden: int = 64  # the state encoder's hidden width

    def validate(self) -> DistillationConfig:
        self.teacher.validate("family_config.teacher")
        for name in ("num_action_tokens", "pred_steps", "mapper_hidden", "state_hidden"):
            _positive_int(f"family_config.{name}", getattr(self, name))
        return self

    @property
    def chunk(self) -> int:
        """Actions per prediction: every action token decodes ``pred_steps`` of them."""
        return self.num_action_tokens * self.pred_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DistillationConfig:
        """Parse and validate (unknown keys and wrong types are named, never guessed)."""
        if not isinstance(data, Mapping):
            raise DistillationConfigError("family_config: expected a JSON object")
        _known(data, cls, "family_config")
        kw = dict(data)
        if "teacher" in kw:
            teacher = kw["teacher"]
            if isinstance(teacher, Mapping):
                _known(teacher, TeacherConfig, "family_config.teacher")
                kw["teacher"] = TeacherConfig(**teacher)
            elif not isinstance(teacher, TeacherConfig):
                raise DistillationConfigError("family_config.teacher: expected a JSON object")
        return cls(**kw).validate()

    def check_horizon(self, horizon: int) -> None:
        if horizon != self.chunk:
            raise DistillationConfigError(
                f"horizon={horizon}: the action-distillation family predicts num_action_tokens"
                f" ({self.num_action_tokens}) x pred_steps ({self.pred_steps}) = {self.chunk} actions"
            )


def _known(data: Mapping[str, Any], cls: type, name: str) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise DistillationConfigError(f"{name}: unknown field(s) {unknown}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise DistillationConfigError(f"{name}={value!r}: must be a positive integer")
