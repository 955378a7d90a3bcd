"""PolicyConfig: the schema of a policy bundle's ``config.json`` (torch-free).

Every consumer (trainer, torch policy, exporter, ONNX Runtime / TensorRT runtime, ROS node) reads the
same frozen dataclass, so a field means the same thing everywhere. ``validate()`` names the offending
field; ``from_json`` rejects unknown keys and unsupported format versions instead of guessing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .start_views import check_cameras

FORMAT_VERSION = 1
ARCHITECTURES = ("pi", "groot")
# The seed systems one bundle format carries (docs/ARCHITECTURE.md, "Policy families"): "apt" (flow-matching
# action expert fused layer-wise with the VLM), "action_prior" (a pretrained flow-matching action
# encoder-decoder reused by the VLA, with a one-token history encoder) and "action_distillation" (an action
# token and a state token on the VLM, mapped onto a small action model's frozen decoder).
FAMILIES = ("apt", "action_prior", "action_distillation")
ARM_SEMANTICS = ("absolute", "delta", "velocity")
GRIPPER_SEMANTICS = ("absolute", "binary", "none")
NORMALIZATION_MODES = ("mean_std", "quantile")


_TUPLE_FIELDS = (
    "layer_map",
    "cameras",
    "image_size",
    "state_names",
    "action_names",
    "image_mean",
    "image_std",
)


class ConfigError(ValueError):
    """A policy config is malformed; the message names the field and the problem."""


@dataclass(frozen=True)
class ActionSemantics:
    """How the arm/gripper parts of an action are to be interpreted by the controller.

    arm: "absolute" joint positions, "delta" (target = measured + arm_scale * a) or "velocity"
         (rad/s = arm_scale * a). gripper: "absolute" width, "binary" open/close at 0.5, or "none".
    """

    arm: str = "absolute"
    arm_scale: float = 1.0
    gripper: str = "none"

    def validate(self) -> None:
        if self.arm not in ARM_SEMANTICS:
            raise ConfigError(f"action_semantics.arm={self.arm!r}: expected one of {ARM_SEMANTICS}")
        if self.gripper not in GRIPPER_SEMANTICS:
            raise ConfigError(
                f"action_semantics.gripper={self.gripper!r}: expected one of {GRIPPER_SEMANTICS}"
            )
        if not (math.isfinite(self.arm_scale) and self.arm_scale > 0):
            raise ConfigError(f"action_semantics.arm_scale={self.arm_scale!r}: must be a finite number > 0")


@dataclass(frozen=True)
class ExpertConfig:
    """Action-expert dimensions. ``num_layers`` counts Stage-1 layers; Stage 2 inserts as many again."""

    width: int = 128
    num_heads: int = 4
    head_dim: int = 32
    mlp_dim: int = 256
    num_layers: int = 2

    def validate(self) -> None:
        for name in ("width", "num_heads", "head_dim", "mlp_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"expert.{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class PolicyConfig:
    """The bundle's config.json. See docs/APT_MODEL.md for the meaning of each field."""

    architecture: str
    backbone: Mapping[str, Any]
    expert: ExpertConfig
    layer_map: tuple[int, ...]
    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    max_instruction_tokens: int
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    horizon: int
    control_dt: float
    sampling_steps: int = 10
    noise_scale: float = 1.0
    stage: int = 1
    action_semantics: ActionSemantics = field(default_factory=ActionSemantics)
    normalization: str = "quantile"
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    model_id: str = "apt"
    rtc_max_delay: int = 0  # trained real-time chunking: largest prefix (actions) seen in training; 0 = none
    family: str = "apt"  # which seed system this bundle is (FAMILIES); absent in older bundles = "apt"
    # family-specific settings, validated by that family's own schema; {} for "apt"
    family_config: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ----------------------------------------------------------------- derived
    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def history_steps(self) -> int:
        """K past (state, executed action) steps the policy reads (family_config; 0: stateless, APT)."""
        return int(self.family_config.get("history_steps", 0))

    @property
    def num_expert_layers(self) -> int:
        """Attention layers actually present: N in Stage 1, 2N in Stage 2 (one inserted after each)."""
        return self.expert.num_layers * (2 if self.stage == 2 else 1)

    def with_stage(self, stage: int) -> PolicyConfig:
        """The same policy at another training stage (Stage 2 adds the inserted layers)."""
        return replace(self, stage=stage).validate()

    def with_rtc_max_delay(self, rtc_max_delay: int) -> PolicyConfig:
        """The same policy trained for real-time chunking up to ``rtc_max_delay`` actions (0: not)."""
        return replace(self, rtc_max_delay=rtc_max_delay).validate()

    # -------------------------------------------------------------- validation
    def validate(self) -> PolicyConfig:
        """Check every field; raise ConfigError naming the first problem. Returns self for chaining."""
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(
                f"format_version={self.format_version!r}: this apt_policy reads version {FORMAT_VERSION}"
            )
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r}: expected one of {FAMILIES}")
        if not isinstance(self.family_config, Mapping):
            raise ConfigError("family_config: must be a mapping (the family's own settings)")
        if self.family == "apt" and self.family_config:
            raise ConfigError(f"family_config: the 'apt' family takes none, got {sorted(self.family_config)}")
        if self.family == "action_distillation":  # its own schema (core/distillation_config.py)
            from .distillation_config import DistillationConfig

            DistillationConfig.from_mapping(self.family_config).check_horizon(self.horizon)
        if self.family == "action_prior":  # its own schema (core/action_prior.py)
            from .action_prior import ActionPriorConfig

            ActionPriorConfig.from_mapping(self.family_config)
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture={self.architecture!r}: expected one of {ARCHITECTURES}")
        if not isinstance(self.backbone, Mapping):
            raise ConfigError("backbone: must be a mapping (the backbone's config dict)")
        self.expert.validate()
        self.action_semantics.validate()
        if len(self.layer_map) != self.expert.num_layers:
            raise ConfigError(
                f"layer_map has {len(self.layer_map)} entries but expert.num_layers={self.expert.num_layers}"
                " (one VLM layer per Stage-1 expert layer)"
            )
        self._check_backbone_agrees()
        num_vlm_layers = self.backbone.get("num_layers")
        for i, layer in enumerate(self.layer_map):
            if not isinstance(layer, int) or layer < 0:
                raise ConfigError(f"layer_map[{i}]={layer!r}: must be a VLM layer index >= 0")
            if isinstance(num_vlm_layers, int) and layer >= num_vlm_layers:
                raise ConfigError(
                    f"layer_map[{i}]={layer}: the backbone has only {num_vlm_layers} layers"
                    f" (0..{num_vlm_layers - 1})"
                )
        _check_names("cameras", self.cameras)
        try:
            check_cameras(self.cameras)
        except ValueError as exc:
            raise ConfigError(f"cameras={list(self.cameras)!r}: {exc}") from None
        _check_names("state_names", self.state_names)
        _check_names("action_names", self.action_names)
        if len(self.image_size) != 2 or any(not isinstance(s, int) or s <= 0 for s in self.image_size):
            raise ConfigError(f"image_size={self.image_size!r}: expected (height, width) positive integers")
        for name in ("max_instruction_tokens", "horizon", "sampling_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r}: must be a positive integer")
        if not (
            isinstance(self.control_dt, (int, float))
            and math.isfinite(self.control_dt)
            and self.control_dt > 0
        ):
            raise ConfigError(f"control_dt={self.control_dt!r}: must be a finite number of seconds > 0")
        if not (
            isinstance(self.noise_scale, (int, float))
            and not isinstance(self.noise_scale, bool)
            and math.isfinite(self.noise_scale)
            and 0.0 <= self.noise_scale <= 1.0
        ):
            raise ConfigError(f"noise_scale={self.noise_scale!r}: must be a number in [0, 1]")
        if self.stage not in (1, 2):
            raise ConfigError(f"stage={self.stage!r}: expected 1 or 2")
        d = self.rtc_max_delay
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < self.horizon:
            raise ConfigError(
                f"rtc_max_delay={d!r}: must be an integer in [0, horizon - 1 = {self.horizon - 1}]"
                " (0: not trained for real-time chunking)"
            )
        if self.normalization not in NORMALIZATION_MODES:
            raise ConfigError(f"normalization={self.normalization!r}: expected one of {NORMALIZATION_MODES}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or any(
                not isinstance(v, (int, float)) or isinstance(v, bool) or not abs(v) < 1e3 for v in value
            ):
                raise ConfigError(f"{name}={value!r}: expected 3 finite numbers (R, G, B)")
        if any(v <= 0 for v in self.image_std):
            raise ConfigError(f"image_std={self.image_std!r}: must be > 0")
        return self

    def _check_backbone_agrees(self) -> None:
        """The backbone dict fixes graph shapes too; both descriptions must agree."""
        pairs = (
            ("num_cameras", len(self.cameras), "len(cameras)"),
            ("image_size", list(self.image_size), "image_size"),
            ("max_text_tokens", self.max_instruction_tokens, "max_instruction_tokens"),
        )
        for key, ours, our_name in pairs:
            if key in self.backbone:
                theirs = self.backbone[key]
                theirs = list(theirs) if isinstance(theirs, (list, tuple)) else theirs
                if theirs != ours:
                    raise ConfigError(f"backbone.{key}={theirs!r} disagrees with {our_name}={ours!r}")

    # --------------------------------------------------------------- json I/O
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backbone"] = dict(self.backbone)
        data["family_config"] = dict(self.family_config)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise (and write to ``path`` if given). Returns the JSON text."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        if not isinstance(data, Mapping):
            raise ConfigError("config: expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(f"format_version={version!r}: this apt_policy reads version {FORMAT_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: unknown field(s) {unknown}")
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"config: missing field(s) {missing}")
        kw = dict(data)
        try:
            kw["expert"] = _sub(ExpertConfig, kw["expert"], "expert")
            if "action_semantics" in kw:
                kw["action_semantics"] = _sub(ActionSemantics, kw["action_semantics"], "action_semantics")
            for key in (
                "layer_map",
                "cameras",
                "image_size",
                "state_names",
                "action_names",
                "image_mean",
                "image_std",
            ):
                if key in kw:
                    if not isinstance(kw[key], (list, tuple)):
                        raise ConfigError(f"{key}: expected a list, got {type(kw[key]).__name__}")
                    kw[key] = tuple(kw[key])
            kw["backbone"] = dict(kw["backbone"]) if isinstance(kw["backbone"], Mapping) else kw["backbone"]
            if isinstance(kw.get("family_config"), Mapping):
                kw["family_config"] = dict(kw["family_config"])
        except TypeError as exc:  # pragma: no cover - defensive, _sub converts most
            raise ConfigError(f"config: {exc}") from exc
        try:
            return cls(**kw).validate()
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong type deep inside
            raise ConfigError(f"config: a field has a value of the wrong type: {exc}") from exc

    @classmethod
    def from_json(cls, source: str | Path) -> PolicyConfig:
        """Read from a path to config.json (or a JSON string starting with '{')."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _sub(cls: type, value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {unknown}")
    return cls(**value)


def _check_names(field_name: str, names: tuple[str, ...]) -> None:
    if len(names) == 0:
        raise ConfigError(f"{field_name}: must not be empty")
    if any(not isinstance(n, str) or not n for n in names):
        raise ConfigError(f"{field_name}={list(names)!r}: every entry must be a non-empty string")
    if len(set(names)) != len(names):
        raise ConfigError(f"{field_name}={list(names)!r}: names must be unique")
