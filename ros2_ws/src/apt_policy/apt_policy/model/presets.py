"""Ready-made PolicyConfigs: a tiny one for tests and the CPU demo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.config import ActionSemantics, ExpertConfig, PolicyConfig
from .backbone import IMAGE_MEAN, IMAGE_STD, Qwen3VLBackboneConfig


def tiny_policy_config(
    architecture: str = "pi",
    *,
    cameras: Sequence[str] = ("front", "wrist"),
    image_size: tuple[int, int] = (32, 32),
    max_instruction_tokens: int = 8,
    state_names: Sequence[str] = tuple(f"fr3_joint{i}" for i in range(1, 8)),
    action_names: Sequence[str] = tuple(f"fr3_joint{i}" for i in range(1, 8)),
    horizon: int = 8,
    control_dt: float = 0.1,
    sampling_steps: int = 5,
    expert: ExpertConfig | None = None,
    layer_map: Sequence[int] | None = None,
    vlm_layers: int = 3,
    action_semantics: ActionSemantics | None = None,
    normalization: str = "quantile",
    model_id: str = "apt-tiny",
    backbone: Mapping[str, Any] | None = None,
) -> PolicyConfig:
    """A Stage-1 config around ``Qwen3VLBackboneConfig.tiny`` (random weights; seconds on a CPU).

    Pass ``backbone`` (a ``Qwen3VLBackboneConfig.to_dict()``) to use another backbone, e.g. a loaded
    Qwen3-VL checkpoint; its deployment fields must match cameras/image_size/max_instruction_tokens.
    """
    if backbone is None:
        tiny = Qwen3VLBackboneConfig.tiny()
        backbone = tiny.replace(
            num_cameras=len(cameras),
            image_size=tuple(image_size),
            max_text_tokens=max_instruction_tokens,
            num_layers=vlm_layers,
            text=tiny.text.__class__(**{**tiny.text.__dict__, "num_hidden_layers": vlm_layers}),
        ).to_dict()
    vlm_layers = int(backbone["num_layers"])
    expert = expert or ExpertConfig(width=64, num_heads=4, head_dim=16, mlp_dim=128, num_layers=2)
    if layer_map is None:  # spread the expert layers over the VLM depth, ending at the last layer
        n = expert.num_layers
        layer_map = [round((i + 1) * vlm_layers / n) - 1 for i in range(n)]
    return PolicyConfig(
        architecture=architecture,
        backbone=dict(backbone),
        expert=expert,
        layer_map=tuple(int(i) for i in layer_map),
        cameras=tuple(cameras),
        image_size=(int(image_size[0]), int(image_size[1])),
        max_instruction_tokens=max_instruction_tokens,
        state_names=tuple(state_names),
        action_names=tuple(action_names),
        horizon=horizon,
        control_dt=control_dt,
        sampling_steps=sampling_steps,
        stage=1,
        action_semantics=action_semantics or ActionSemantics(arm="absolute"),
        normalization=normalization,
        image_mean=tuple(IMAGE_MEAN),
        image_std=tuple(IMAGE_STD),
        model_id=model_id,
    ).validate()
