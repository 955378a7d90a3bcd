"""torch backend: APTPolicy, the bundle's PyTorch model behind the Policy contract.

Input validation, preprocessing, tokenisation, noise and (un)normalisation are the runtime's
``ObservationEncoder``, shared with the ONNX Runtime and TensorRT backends, so backends differ only in how
the graphs run. This module imports torch: ``load_policy`` imports it only when ``backend == "torch"``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from ..core.config import PolicyConfig
from ..core.normalize import Normalizer
from ..model.action_prior import ActionPriorModel
from ..model.apt import APTModel
from ..model.bundle import load_bundle, read_config
from .inputs import ModelInputs, ObservationEncoder
from .policy import GraphPolicy, Policy, PolicyInfo, resolve_rtc_mode


def load_torch_policy(
    path: str | Path, seed: int | None = None, device: str = "cpu", rtc_mode: str = "auto"
) -> Policy:
    """The bundle's family policy (APTPolicy / ActionPriorPolicy / DistillationPolicy).from_bundle (validates
    config, weights, norm stats, tokenizer)."""
    family = read_config(path).family
    if family == "action_distillation":
        from .distillation_torch import DistillationPolicy

        return DistillationPolicy.from_bundle(path, seed=seed, device=device)
    if family == "action_prior":
        return ActionPriorPolicy.from_bundle(path, seed=seed, device=device, rtc_mode=rtc_mode)
    return APTPolicy.from_bundle(path, seed=seed, device=device, rtc_mode=rtc_mode)


class APTPolicy(GraphPolicy):
    """images + state + instruction -> action chunk (horizon, action_dim) in robot units.

    ``predict`` and ``warmup`` are the runtime's ``GraphPolicy``: validation, preprocessing, noise and
    (un)normalisation by the same ``ObservationEncoder`` the ONNX Runtime and TensorRT backends use; only
    running the graphs (:meth:`run`) is torch here. ``rtc_mode`` ("auto", "trained", "training_free"; see
    ``runtime.policy.resolve_rtc_mode``) says how a real-time-chunking prefix is used.
    """

    warmup_iterations = 1

    def __init__(
        self,
        model: APTModel,
        normalizer: Normalizer,
        tokenizer: str | Path,
        seed: int | None = None,
        device: str = "cpu",
        rtc_mode: str = "auto",
    ) -> None:
        self.config: PolicyConfig = model.config
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.normalizer = normalizer
        self.encoder = ObservationEncoder(self.config, normalizer, tokenizer, seed)
        self._lock = threading.Lock()  # the encoder's buffers are reused: one prediction at a time
        mode = resolve_rtc_mode(rtc_mode, self.config)
        self._info = PolicyInfo.from_config(self.config, backend="torch", rtc_inputs=True, rtc_mode=mode)
        self._rtc_trained = torch.full((1,), 1.0 if mode == "trained" else 0.0, device=self.device)

    @classmethod
    def from_bundle(
        cls, path: str | Path, seed: int | None = None, device: str = "cpu", rtc_mode: str = "auto"
    ) -> APTPolicy:
        """Load and validate a bundle directory (see model/bundle.py for the checks)."""
        bundle = load_bundle(path)
        return cls(
            bundle.model,
            bundle.normalizer,
            bundle.tokenizer_path,
            seed=seed,
            device=device,
            rtc_mode=rtc_mode,
        )

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
        """The model on encoded inputs -> normalised actions (GraphPolicy.predict encodes and decodes).

        Without a prefix (None or length 0) this is the prefix-less sampler, exactly as before RTC."""
        dev = self.device
        keys, values, vision_mask, context_mask = self.model.encode_prefix(
            torch.from_numpy(pixel_values).to(dev),
            torch.from_numpy(input_ids.copy()).to(dev),  # the tokenizer's cached arrays are read-only
            torch.from_numpy(text_mask.copy()).to(dev),
        )
        state_t, noise_t = torch.from_numpy(state).to(dev), torch.from_numpy(noise).to(dev)
        if prefix is None or prefix_len is None or int(prefix_len.max(initial=0)) == 0:
            actions = self.model.sample(keys, values, vision_mask, context_mask, state_t, noise_t)
        else:
            actions = self.model.sample(
                keys,
                values,
                vision_mask,
                context_mask,
                state_t,
                noise_t,
                torch.from_numpy(prefix).to(dev),
                torch.from_numpy(prefix_len).to(dev),
                self._rtc_trained.expand(noise_t.shape[0]),
            )
        return actions.cpu().numpy()


class ActionPriorPolicy(APTPolicy):
    """The action-prior family (model/action_prior.py) behind the same contract: the VLM latent, the history
    token from ``predict(history=...)`` (the last K executed steps; None = episode start) and the decoder's
    sampler with APT's real-time-chunking prefix."""

    @classmethod
    def from_bundle(
        cls, path: str | Path, seed: int | None = None, device: str = "cpu", rtc_mode: str = "auto"
    ) -> ActionPriorPolicy:
        bundle = load_bundle(path)
        if not isinstance(bundle.model, ActionPriorModel):
            raise ValueError(f"{path}: family {bundle.config.family!r} is not 'action_prior'")
        return cls(
            bundle.model,
            bundle.normalizer,
            bundle.tokenizer_path,
            seed=seed,
            device=device,
            rtc_mode=rtc_mode,
        )

    @torch.inference_mode()
    def run_inputs(self, x: ModelInputs) -> np.ndarray:
        model = self.model
        assert isinstance(model, ActionPriorModel)
        dev = self.device

        def t(a: np.ndarray | None) -> torch.Tensor:
            assert a is not None  # the encoder fills every input of a K > 0 policy
            return torch.from_numpy(np.array(a)).to(dev)

        state = t(x.state)
        latent = model.encode_prefix(t(x.pixel_values), t(x.input_ids), t(x.text_mask), state)
        if model.history_steps > 0:
            history = model.encode_history(t(x.history_states), t(x.history_actions), t(x.history_mask))
        else:
            history = torch.zeros(state.shape[0], model.settings.latent_dim, device=dev)
        if int(x.prefix_len.max(initial=0)) == 0:
            actions = model.sample(latent, history, state, t(x.noise))
        else:
            trained = self._rtc_trained.expand(state.shape[0])
            actions = model.sample(latent, history, state, t(x.noise), t(x.prefix), t(x.prefix_len), trained)
        return actions.cpu().numpy()
