"""APTPolicy: the torch implementation of the Policy contract (runtime/policy.py).

Preprocessing, tokenisation and (un)normalisation use the same ``core`` functions as the ONNX Runtime
and TensorRT backends, so backends differ only in how the graphs run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer
from ..runtime.policy import PolicyInfo
from .apt import APTModel
from .bundle import load_bundle


class APTPolicy:
    """images + state + instruction -> action chunk (horizon, action_dim) in robot units."""

    def __init__(
        self,
        model: APTModel,
        normalizer: Normalizer,
        tokenizer: str | Path | InstructionTokenizer,
        seed: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.config: PolicyConfig = model.config
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.normalizer = normalizer
        cfg = self.config
        self.images = ImagePreprocessor(cfg.cameras, cfg.image_size, cfg.image_mean, cfg.image_std)
        self.tokenizer = (
            tokenizer
            if isinstance(tokenizer, InstructionTokenizer)
            else InstructionTokenizer(tokenizer, cfg.max_instruction_tokens)
        )
        self._rng = np.random.default_rng(seed)
        self._info = PolicyInfo.from_config(cfg, backend="torch")

    @classmethod
    def from_bundle(cls, path: str | Path, seed: int | None = None, device: str = "cpu") -> APTPolicy:
        """Load and validate a bundle directory (see model/bundle.py for the checks)."""
        bundle = load_bundle(path)
        return cls(bundle.model, bundle.normalizer, bundle.tokenizer_path, seed=seed, device=device)

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def check_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float32)
        if state.shape != (self.config.state_dim,):
            raise ValueError(f"state must have shape ({self.config.state_dim},), got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or inf")
        return state

    def check_noise(self, noise: np.ndarray | None) -> np.ndarray:
        shape = (self.config.horizon, self.config.action_dim)
        if noise is None:  # the initial noise of the flow, scaled as the bundle asks (0: deterministic)
            return (self._rng.standard_normal(shape) * self.config.noise_scale).astype(np.float32)
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != shape:
            raise ValueError(f"noise must have shape {shape}, got {noise.shape}")
        if not np.all(np.isfinite(noise)):
            raise ValueError("noise contains NaN or inf")
        return noise

    @torch.inference_mode()
    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """Action chunk (horizon, action_dim) float32 in robot units; raises on bad input or bad output."""
        state = self.check_state(state)
        noise = self.check_noise(noise)
        pixels = self.images(images)
        ids, mask = self.tokenizer(instruction)
        dev = self.device
        prefix = self.model.encode_prefix(
            torch.from_numpy(pixels).to(dev),
            torch.from_numpy(ids.copy()).to(dev),
            torch.from_numpy(mask.copy()).to(dev),
        )
        norm_state = torch.from_numpy(self.normalizer.normalize_state(state)[None]).to(dev)
        actions = self.model.sample(*prefix, norm_state, torch.from_numpy(noise[None]).to(dev))
        out = self.normalizer.unnormalize_actions(actions[0].cpu().numpy())
        if not np.all(np.isfinite(out)):
            raise RuntimeError("policy produced non-finite actions")
        return out

    def warmup(self) -> None:
        """One prediction on blank inputs (allocations, lazy init)."""
        h, w = self.config.image_size
        images = {c: np.zeros((h, w, 3), np.uint8) for c in self.config.cameras}
        state = self.normalizer.unnormalize_state(np.zeros(self.config.state_dim, np.float32))
        self.predict(
            images, state, "", noise=np.zeros((self.config.horizon, self.config.action_dim), np.float32)
        )
