"""Load a Hugging Face Qwen3-VL checkpoint directory into a :class:`Qwen3VLBackbone`.

The module is built on the meta device (no memory, no random init), materialised empty, then filled
tensor by tensor from each safetensors shard: peak memory is the model plus one tensor. Nothing is
downloaded; the directory must hold ``config.json`` and ``model.safetensors`` or a sharded checkpoint
with ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import Qwen3VLBackboneConfig
from .modeling import Qwen3VLBackbone

log = logging.getLogger(__name__)

# Checkpoint prefixes: Qwen3VLForConditionalGeneration saves "model.visual.*" / "model.language_model.*",
# Qwen3VLModel saves "visual.*" / "language_model.*".
_PREFIXES = ("model.", "")
_ALWAYS_UNUSED = (re.compile(r"^lm_head\."), re.compile(r"^language_model\.norm\."))


class CheckpointError(RuntimeError):
    """The checkpoint does not match the backbone (missing, unexpected or mis-shaped tensors)."""


def load_qwen3vl_checkpoint(
    path: str | Path,
    num_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
    **deployment_fields: Any,
) -> Qwen3VLBackbone:
    """Build the backbone from ``path/config.json`` and load its weights.

    Args:
        path: checkpoint directory (as written by ``save_pretrained``).
        num_layers: keep only the first decoder layers (truncation); ``None`` keeps all.
        dtype: parameter dtype (weights are converted while copying).
        **deployment_fields: num_cameras, image_size, max_text_tokens, use_deepstack.
    Raises:
        FileNotFoundError: no config.json / no safetensors weights.
        CheckpointError: naming every missing, unexpected or mis-shaped tensor.
    """
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {root}")
    hf_config = json.loads(config_file.read_text())
    config = Qwen3VLBackboneConfig.from_hf_config(hf_config, num_layers=num_layers, **deployment_fields)
    shards = _shard_files(root)

    with torch.device("meta"):
        model = Qwen3VLBackbone(config)
    model = model.to(dtype).to_empty(device="cpu")
    params = dict(model.named_parameters())

    loaded: set[str] = set()
    unexpected: list[str] = []
    mis_shaped: list[str] = []
    ignored = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = _strip_prefix(key)
                if name not in params:
                    if _unused_by_design(name, config):
                        ignored += 1
                    else:
                        unexpected.append(key)
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(params[name].shape):
                    mis_shaped.append(f"{key}: checkpoint {shape} vs model {tuple(params[name].shape)}")
                    continue
                with torch.no_grad():
                    params[name].copy_(f.get_tensor(key))
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {sorted(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped tensors: {mis_shaped}")
    if problems:
        raise CheckpointError(
            f"checkpoint {root} does not match the Qwen3-VL backbone; " + "; ".join(problems)
        )
    log.info("loaded %d tensors from %s (%d unused by design)", len(loaded), root, ignored)
    return model.eval()


def _shard_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [root / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"shards listed in {index} are missing: {absent}")
        return files
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {root}")


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if prefix and key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _unused_by_design(name: str, config: Qwen3VLBackboneConfig) -> bool:
    """Checkpoint tensors the backbone deliberately drops: LM head, final norm, truncated layers."""
    if any(p.match(name) for p in _ALWAYS_UNUSED):
        return True
    layer = re.match(r"^language_model\.layers\.(\d+)\.", name)
    return layer is not None and config.num_layers <= int(layer.group(1)) < config.text.num_hidden_layers
