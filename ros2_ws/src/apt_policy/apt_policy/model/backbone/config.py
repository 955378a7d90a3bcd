"""Configuration of the deployment Qwen3-VL backbone (torch-free).

The vision and text sub-configs mirror the field names of transformers' ``Qwen3VLVisionConfig`` and
``Qwen3VLTextConfig`` so that a checkpoint's ``config.json`` maps onto them one to one. The deployment
fields (cameras, image size, text length, truncation, deepstack) fix every shape of the graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Qwen3-VL's processor normalises RGB in [0, 1] with mean = std = 0.5 per channel, i.e. maps to [-1, 1]:
#   pixel = (rgb_uint8 / 255 - IMAGE_MEAN[c]) / IMAGE_STD[c]
IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_VISION_ACTS = ("gelu_pytorch_tanh", "gelu", "gelu_new", "quick_gelu", "silu")
_TEXT_ACTS = ("silu", "gelu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class VisionConfig:
    """Qwen3-VL vision tower (field names as in transformers' ``Qwen3VLVisionConfig``)."""

    depth: int = 24
    hidden_size: int = 1024
    hidden_act: str = "gelu_pytorch_tanh"
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 2048
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (5, 11, 17)
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "deepstack_visual_indexes", tuple(int(i) for i in self.deepstack_visual_indexes)
        )
        _require(
            self.hidden_act in _VISION_ACTS, f"vision hidden_act {self.hidden_act!r} not in {_VISION_ACTS}"
        )
        _require(self.hidden_size % self.num_heads == 0, "vision hidden_size must be divisible by num_heads")
        _require(
            (self.hidden_size // self.num_heads) % 4 == 0, "vision head_dim must be divisible by 4 (2-D rope)"
        )
        side = round(self.num_position_embeddings**0.5)
        _require(side * side == self.num_position_embeddings, "num_position_embeddings must be a square")
        for i in self.deepstack_visual_indexes:
            _require(0 <= i < self.depth, f"deepstack_visual_indexes entry {i} outside 0..{self.depth - 1}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TextConfig:
    """Qwen3 text decoder (field names as in transformers' ``Qwen3VLTextConfig``)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))
        _require(self.hidden_act in _TEXT_ACTS, f"text hidden_act {self.hidden_act!r} not in {_TEXT_ACTS}")
        _require(len(self.mrope_section) == 3, "mrope_section must have 3 entries (T, H, W)")
        _require(
            sum(self.mrope_section) == self.head_dim // 2,
            f"sum(mrope_section)={sum(self.mrope_section)} must equal head_dim // 2 = {self.head_dim // 2}",
        )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_attention_heads must be a multiple of num_key_value_heads",
        )


@dataclass(frozen=True)
class Qwen3VLBackboneConfig:
    """Everything that fixes the backbone graph: architecture (vision, text) plus deployment shapes.

    Deployment fields:
      num_cameras      images per observation, each laid out as ``<|vision_start|> tokens <|vision_end|>``
      image_size       (H, W) in pixels of every camera image after preprocessing; multiple of
                       patch_size * spatial_merge_size (32 for Qwen3-VL)
      max_text_tokens  instruction length T; instructions are right-padded to it
      num_layers       decoder layers kept (truncation); ``None`` means all, resolved to an int
      use_deepstack    add the deepstack visual features to the first decoder layers as Qwen3-VL does
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 151655
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    num_cameras: int = 1
    image_size: tuple[int, int] = (224, 224)
    max_text_tokens: int = 32
    num_layers: int | None = None
    use_deepstack: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.vision, Mapping):
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        if isinstance(self.text, Mapping):
            object.__setattr__(self, "text", TextConfig(**self.text))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if self.num_layers is None:
            object.__setattr__(self, "num_layers", self.text.num_hidden_layers)
        _require(len(self.image_size) == 2, f"image_size must be (H, W), got {self.image_size}")
        factor = self.vision.patch_size * self.vision.spatial_merge_size
        for side in self.image_size:
            _require(
                side > 0 and side % factor == 0,
                f"image_size {self.image_size} must be positive multiples of patch_size * spatial_merge_size"
                f" = {factor}",
            )
        _require(self.num_cameras >= 1, "num_cameras must be >= 1")
        _require(self.max_text_tokens >= 1, "max_text_tokens must be >= 1")
        _require(
            1 <= self.num_layers <= self.text.num_hidden_layers,
            f"num_layers={self.num_layers} must be in 1..{self.text.num_hidden_layers}",
        )
        _require(
            self.vision.out_hidden_size == self.text.hidden_size,
            "vision out_hidden_size must equal text hidden_size",
        )
        for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
            token = getattr(self, name)
            _require(0 <= token < self.text.vocab_size, f"{name}={token} outside the vocabulary")

    # ----------------------------------------------------------------------------------------- shapes
    @property
    def hidden_size(self) -> int:
        """D of the returned hidden states."""
        return self.text.hidden_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(grid_h, grid_w): patches per camera image before merging."""
        return (self.image_size[0] // self.vision.patch_size, self.image_size[1] // self.vision.patch_size)

    @property
    def merged_grid(self) -> tuple[int, int]:
        """(h, w) of the vision tokens per camera after the 2x2 merger."""
        gh, gw = self.patch_grid
        m = self.vision.spatial_merge_size
        return (gh // m, gw // m)

    @property
    def num_vision_tokens_per_camera(self) -> int:
        """Image tokens per camera (merged patches), without the start/end markers."""
        h, w = self.merged_grid
        return h * w

    @property
    def camera_block_length(self) -> int:
        """Sequence positions per camera: start marker + image tokens + end marker."""
        return self.num_vision_tokens_per_camera + 2

    @property
    def text_offset(self) -> int:
        """Index of the first instruction token in the sequence."""
        return self.num_cameras * self.camera_block_length

    @property
    def sequence_length(self) -> int:
        """S: all camera blocks followed by max_text_tokens instruction positions."""
        return self.text_offset + self.max_text_tokens

    @property
    def num_deepstack_layers(self) -> int:
        """Decoder layers that receive a deepstack feature (0 when disabled)."""
        if not self.use_deepstack:
            return 0
        return min(len(self.vision.deepstack_visual_indexes), self.num_layers)

    # ------------------------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides: Any) -> Qwen3VLBackboneConfig:
        """A few-hundred-k-parameter config with every Qwen3-VL feature, for tests and demos."""
        base: dict[str, Any] = {
            "vision": VisionConfig(
                depth=3,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                patch_size=8,
                out_hidden_size=64,
                num_position_embeddings=64,
                deepstack_visual_indexes=(0, 1),
            ),
            "text": TextConfig(
                vocab_size=512,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                rope_theta=10000.0,
                mrope_section=(4, 2, 2),
            ),
            "image_token_id": 500,
            "vision_start_token_id": 501,
            "vision_end_token_id": 502,
            "image_size": (64, 64),
            "max_text_tokens": 8,
        }
        base.update(overrides)
        return cls(**base)

    @classmethod
    def qwen3vl_2b(cls, **deployment_fields: Any) -> Qwen3VLBackboneConfig:
        """The shape of Qwen/Qwen3-VL-2B-Instruct (its config.json), for sizing without weights."""
        return cls(vision=VisionConfig(), text=TextConfig(), **deployment_fields)

    # -------------------------------------------------------------------------------- conversion
    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **deployment_fields: Any) -> Qwen3VLBackboneConfig:
        """Build from a Qwen3-VL ``config.json`` dict (or ``PretrainedConfig.to_dict()``)."""
        if hasattr(hf, "to_dict"):
            hf = hf.to_dict()
        model_type = hf.get("model_type", "qwen3_vl")
        if model_type != "qwen3_vl":
            raise ValueError(f"not a Qwen3-VL (dense) config: model_type={model_type!r}, expected 'qwen3_vl'")
        if "text_config" not in hf or "vision_config" not in hf:
            raise ValueError("not a Qwen3-VL config: 'text_config' and 'vision_config' are required")
        return cls(
            vision=_vision_from_hf(hf["vision_config"]),
            text=_text_from_hf(hf["text_config"], hf),
            image_token_id=int(hf.get("image_token_id", 151655)),
            vision_start_token_id=int(hf.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(hf.get("vision_end_token_id", 151653)),
            **deployment_fields,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of :meth:`from_dict`."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Qwen3VLBackboneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Qwen3VLBackboneConfig fields: {unknown}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> Qwen3VLBackboneConfig:
        return dataclasses.replace(self, **changes)


def _vision_from_hf(v: Mapping[str, Any]) -> VisionConfig:
    names = {f.name for f in dataclasses.fields(VisionConfig)}
    kwargs = {k: v[k] for k in names if k in v}
    if "num_heads" not in v and "num_attention_heads" in v:
        kwargs["num_heads"] = v["num_attention_heads"]
    rope = v.get("rope_parameters") or {}
    if "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]
    for key in ("patch_size", "temporal_patch_size"):
        if isinstance(kwargs.get(key), Sequence):
            sizes = set(kwargs[key])
            _require(len(sizes) == 1, f"non-square {key} {kwargs[key]} not supported")
            kwargs[key] = sizes.pop()
    return VisionConfig(**kwargs)


def _text_from_hf(t: Mapping[str, Any], top: Mapping[str, Any]) -> TextConfig:
    names = {f.name for f in dataclasses.fields(TextConfig)} - {"rope_theta", "mrope_section"}
    kwargs: dict[str, Any] = {k: t[k] for k in names if k in t and t[k] is not None}
    rope = dict(t.get("rope_scaling") or {})
    rope.update(t.get("rope_parameters") or {})
    theta = rope.get("rope_theta", t.get("rope_theta"))
    if theta is not None:
        kwargs["rope_theta"] = float(theta)
    if "mrope_section" in rope:
        kwargs["mrope_section"] = tuple(rope["mrope_section"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    _require(rope_type == "default", f"text rope_type {rope_type!r} not supported (only 'default')")
    _require(rope.get("mrope_interleaved", True), "only interleaved M-RoPE (Qwen3-VL) is supported")
    return TextConfig(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
