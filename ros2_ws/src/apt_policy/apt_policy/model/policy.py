"""APTPolicy: the torch implementation of the Policy contract (runtime/policy.py).

Input validation, preprocessing, tokenisation, noise and (un)normalisation are the runtime's
``ObservationEncoder``, shared with the ONNX Runtime and TensorRT backends, so backends differ only in how
the graphs run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..runtime.inputs import ObservationEncoder
from ..runtime.policy import PolicyInfo
from .apt import APTModel
from .bundle import load_bundle


class APTPolicy:
    """images + state + instruction -> action chunk (horizon, action_dim) in robot units.

    Validation, preprocessing, noise and (un)normalisation are the runtime's ``ObservationEncoder``, the
    same object the ONNX Runtime and TensorRT backends use; only running the graphs is torch here.
    """

    def __init__(
        self,
        model: APTModel,
        normalizer: Normalizer,
        tokenizer: str | Path,
        seed: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.config: PolicyConfig = model.config
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.normalizer = normalizer
        self.encoder = ObservationEncoder(self.config, normalizer, tokenizer, seed)
        self._lock = threading.Lock()  # the encoder's buffers are reused: one prediction at a time
        self._info = PolicyInfo.from_config(self.config, backend="torch")

    @classmethod
    def from_bundle(cls, path: str | Path, seed: int | None = None, device: str = "cpu") -> APTPolicy:
        """Load and validate a bundle directory (see model/bundle.py for the checks)."""
        bundle = load_bundle(path)
        return cls(bundle.model, bundle.normalizer, bundle.tokenizer_path, seed=seed, device=device)

    @property
    def info(self) -> PolicyInfo:
        return self._info

    @torch.inference_mode()
    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Action chunk (horizon, action_dim) float32 in robot units; raises PreprocessError on bad input
        and InferenceError on non-finite output."""
        dev = self.device
        with self._lock:
            x = self.encoder.encode(images, state, instruction, noise)
            prefix = self.model.encode_prefix(
                torch.from_numpy(x.pixel_values).to(dev),
                torch.from_numpy(x.input_ids.copy()).to(dev),  # the tokenizer's cached arrays are read-only
                torch.from_numpy(x.text_mask.copy()).to(dev),
            )
            actions = self.model.sample(
                *prefix, torch.from_numpy(x.state).to(dev), torch.from_numpy(x.noise).to(dev)
            )
            return self.encoder.decode(actions.cpu().numpy())

    def warmup(self) -> None:
        """One prediction on blank inputs (allocations, lazy init)."""
        h, w = self.config.image_size
        images = {c: np.zeros((h, w, 3), np.uint8) for c in self.config.cameras}
        state = self.normalizer.unnormalize_state(np.zeros(self.config.state_dim, np.float32))
        self.predict(images, state, "", noise=np.zeros(self.encoder.noise_shape[1:], np.float32))
