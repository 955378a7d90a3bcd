"""torch backend of the action-distillation family: DistillationPolicy behind the Policy contract.

One forward pass per prediction (prefix then head; docs/ACTION_DISTILLATION.md): the policy draws no noise
and takes no committed prefix, so ``info.steps`` is 0, ``info.noise_scale`` 0 and ``info.rtc_inputs``
False; the ``noise`` argument of ``predict`` is accepted and ignored.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..core.normalize import Normalizer
from ..model.action_distillation import DistillationModel
from ..model.bundle import load_bundle
from .inputs import ObservationEncoder
from .policy import GraphPolicy, PolicyInfo


class DistillationPolicy(GraphPolicy):
    """images + state + instruction -> a short deterministic action chunk (horizon, action_dim)."""

    warmup_iterations = 1

    def __init__(
        self,
        model: DistillationModel,
        normalizer: Normalizer,
        tokenizer: str | Path,
        seed: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.config = model.config
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.normalizer = normalizer
        self.encoder = ObservationEncoder(self.config, normalizer, tokenizer, seed)
        self._lock = threading.Lock()
        self._info = PolicyInfo.from_config(self.config, backend="torch")

    @classmethod
    def from_bundle(
        cls, path: str | Path, seed: int | None = None, device: str = "cpu"
    ) -> DistillationPolicy:
        bundle = load_bundle(path)
        if not isinstance(bundle.model, DistillationModel):
            raise ValueError(f"{path}: family {bundle.config.family!r} is not 'action_distillation'")
        return cls(bundle.model, bundle.normalizer, bundle.tokenizer_path, seed=seed, device=device)

    @torch.inference_mode()
    def run(
        self,
        pixel_values: np.ndarray,
        input_ids: np.ndarray,
        text_mask: np.ndarray,
        state: np.ndarray,
        noise: np.ndarray,
        prefix: np.ndarray | None = None,
        prefix_len: np.ndarray | None = None,
    ) -> np.ndarray:
        """Encoded inputs -> normalised actions; ``noise`` and ``prefix`` do not apply to this family."""
        dev = self.device
        prefix_tensors = self.model.encode_prefix(
            torch.from_numpy(pixel_values).to(dev),
            torch.from_numpy(input_ids.copy()).to(dev),
            torch.from_numpy(text_mask.copy()).to(dev),
        )
        return self.model.head(*prefix_tensors, torch.from_numpy(state).to(dev)).cpu().numpy()
