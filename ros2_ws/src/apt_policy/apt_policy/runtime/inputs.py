"""Observation -> graph inputs and graph outputs -> actions, identical for every backend.

Wraps the core preprocessing (images, tokenizer) and normalisation so each backend only runs graphs.
Buffers are allocated once; the arrays returned by ``encode`` are overwritten by the next call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..core.preprocess import ImagePreprocessor, InstructionTokenizer, PreprocessError
from .manifest import Manifest, ManifestError
from .policy import History, InferenceError


@dataclass(frozen=True)
class ModelInputs:
    """Batch-of-one graph inputs: pixel_values [1, n_cam, 3, H, W] f32, input_ids / text_mask [1, T] i64,
    state [1, state_dim] f32 (normalised), noise [1, horizon, action_dim] f32, and the real-time-chunking
    action prefix [1, horizon, action_dim] f32 (normalised, zero after the first prefix_len rows) with
    prefix_len [1] i64 (0: no prefix)."""

    pixel_values: np.ndarray
    input_ids: np.ndarray
    text_mask: np.ndarray
    state: np.ndarray
    noise: np.ndarray
    prefix: np.ndarray
    prefix_len: np.ndarray
    history_states: np.ndarray | None = None  # [1, K, state_dim] f32 normalised, 0 where invalid (K > 0)
    history_actions: np.ndarray | None = None  # [1, K, action_dim] f32 normalised, 0 where invalid
    history_mask: np.ndarray | None = None  # [1, K] f32: 1 = a real past step


class ObservationEncoder:
    """Turns (images, state, instruction, noise) into ModelInputs and normalised actions into robot units."""

    def __init__(
        self, config: PolicyConfig, normalizer: Normalizer, tokenizer: str | Path, seed: int | None = None
    ) -> None:
        self.config = config
        self.normalizer = normalizer
        self.images = ImagePreprocessor(
            config.cameras, config.image_size, config.image_mean, config.image_std
        )
        self.tokenizer = InstructionTokenizer(tokenizer, config.max_instruction_tokens)
        self.noise_shape = (1, config.horizon, config.action_dim)
        self._state = np.empty((1, config.state_dim), dtype=np.float32)
        self._noise = np.empty(self.noise_shape, dtype=np.float32)
        self._prefix = np.zeros(self.noise_shape, dtype=np.float32)
        self._prefix_len = np.zeros((1,), dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        self.history_steps = config.history_steps
        k = self.history_steps
        self._history = (
            np.zeros((1, k, config.state_dim), np.float32),
            np.zeros((1, k, config.action_dim), np.float32),
            np.zeros((1, k), np.float32),
        )

    @classmethod
    def from_manifest(
        cls, directory: str | Path, manifest: Manifest, seed: int | None = None
    ) -> ObservationEncoder:
        """The encoder of an export/engine directory: its config, normalisation stats and tokenizer."""
        config = PolicyConfig.from_dict(manifest.config)
        normalizer = Normalizer.from_dict(manifest.normalization, config.normalization)
        if manifest.tokenizer is None:
            raise ManifestError(f"{directory} lists no tokenizer file")
        return cls(config, normalizer, Path(directory) / manifest.tokenizer, seed)

    def encode(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> ModelInputs:
        """Validate and convert one observation; raises PreprocessError naming the bad input.

        ``prefix``: (d, action_dim) committed actions in robot units, 0 <= d <= horizon (None: d = 0),
        normalised with the action statistics."""
        pixel_values = self.images(images)
        input_ids, text_mask = self.tokenizer(instruction)
        state = np.asarray(state)
        if state.shape != (self.config.state_dim,):
            raise PreprocessError(
                f"state has shape {state.shape}, expected ({self.config.state_dim},) "
                f"= {list(self.config.state_names)}"
            )
        if not np.all(np.isfinite(state)):
            raise PreprocessError(f"state contains non-finite values: {state.tolist()}")
        self._state[0] = self.normalizer.normalize_state(state)
        if noise is None:
            self._noise[...] = self._rng.standard_normal(self.noise_shape, dtype=np.float32)
            self._noise *= self.config.noise_scale  # the bundle's noise scale (0: deterministic)
        else:
            noise = np.asarray(noise)
            if noise.shape not in (self.noise_shape, self.noise_shape[1:]):
                raise PreprocessError(f"noise has shape {noise.shape}, expected {self.noise_shape[1:]}")
            if not np.all(np.isfinite(noise)):
                raise PreprocessError("noise contains non-finite values")
            self._noise[...] = noise.reshape(self.noise_shape)
        self._encode_prefix(prefix)
        if self.history_steps == 0:  # stateless (APT): the history is not read
            return ModelInputs(
                pixel_values, input_ids, text_mask, self._state, self._noise, self._prefix, self._prefix_len
            )
        self._encode_history(history)
        return ModelInputs(
            pixel_values,
            input_ids,
            text_mask,
            self._state,
            self._noise,
            self._prefix,
            self._prefix_len,
            *self._history,
        )

    def _encode_history(self, history: History | None) -> None:
        """The last K steps of ``history`` normalised, zero where invalid (None: none valid)."""
        states, actions, mask = self._history
        states.fill(0.0)
        actions.fill(0.0)
        mask.fill(0.0)
        if history is None:
            return
        k = self.history_steps
        hs, ha, hv = (np.asarray(v) for v in (history.states, history.actions, history.valid))
        n = hv.shape[0] if hv.ndim == 1 else -1
        if n < k or hs.shape != (n, self.config.state_dim) or ha.shape != (n, self.config.action_dim):
            raise PreprocessError(
                f"history has states {hs.shape}, actions {ha.shape}, valid {hv.shape}; expected >= {k}"
                f" steps of"
                f" ({self.config.state_dim},) states and ({self.config.action_dim},) actions"
            )
        valid = hv[-k:].astype(bool)
        hs, ha = hs[-k:], ha[-k:]
        if not (np.all(np.isfinite(hs[valid])) and np.all(np.isfinite(ha[valid]))):
            raise PreprocessError("history contains non-finite values in valid steps")
        if valid.any():
            states[0, valid] = self.normalizer.normalize_state(hs[valid].astype(np.float32))
            actions[0, valid] = self.normalizer.normalize_actions(ha[valid].astype(np.float32))
        mask[0] = valid

    def _encode_prefix(self, prefix: np.ndarray | None) -> None:
        horizon, action_dim = self.noise_shape[1:]
        self._prefix.fill(0.0)
        if prefix is None:
            self._prefix_len[0] = 0
            return
        prefix = np.asarray(prefix)
        if prefix.ndim != 2 or prefix.shape[1] != action_dim or prefix.shape[0] > horizon:
            raise PreprocessError(
                f"prefix has shape {prefix.shape}, expected (d, {action_dim}), 0 <= d <= horizon {horizon}"
            )
        if not np.issubdtype(prefix.dtype, np.number) or not np.all(np.isfinite(prefix)):
            raise PreprocessError("prefix contains non-finite or non-numeric values")
        d = prefix.shape[0]
        if d:
            self._prefix[0, :d] = self.normalizer.normalize_actions(prefix.astype(np.float32))
        self._prefix_len[0] = d

    def decode(self, normalized_actions: np.ndarray) -> np.ndarray:
        """[1, horizon, action_dim] normalised -> fresh (horizon, action_dim) float32 in robot units."""
        out = np.asarray(normalized_actions, dtype=np.float32)
        if out.shape != self.noise_shape:
            raise InferenceError(
                f"backend returned actions of shape {out.shape}, expected {self.noise_shape}"
            )
        actions = self.normalizer.unnormalize_actions(out[0])
        if not np.all(np.isfinite(actions)):
            raise InferenceError("backend returned non-finite actions")
        return actions
