"""ONNX Runtime backend of the action-prior family (torch-free): its graph set behind the Policy contract.

Graphs (apt-export onnx of an ``action_prior`` bundle; docs/ACTION_PRIOR.md):

    prefix    pixel_values, input_ids, text_mask, state -> latent   (a Stage-1 prior reads only the state)
    history   history_states, history_actions, history_mask -> history_token   (absent when K = 0)
    sampler   latent, history_token, state, noise[, prefix, prefix_len, rtc_trained] -> actions

Each graph gets exactly the inputs its manifest lists (the exporter prunes unused ones). The history token
is computed by the ``history`` graph from the K executed steps the encoder normalised.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import ModelInputs, ObservationEncoder
from .manifest import Manifest, ManifestError, load_manifest
from .onnx_backend import choose_providers, graph_path, open_session, session_options
from .policy import GraphPolicy, InferenceError, PolicyInfo, resolve_rtc_mode

GRAPHS = ("prefix", "history", "sampler")


class OnnxActionPriorPolicy(GraphPolicy):
    """Policy over an action-prior export directory, run by ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(
        self,
        directory: str | Path,
        manifest: Manifest | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        seed: int | None = None,
        allow_spinning: bool = True,
        rtc_mode: str = "auto",
        use_optimized: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else load_manifest(self.directory)
        self.encoder = ObservationEncoder.from_manifest(self.directory, self.manifest, seed)
        self.config = self.encoder.config
        if self.config.family != "action_prior":
            raise ManifestError(f"{self.directory}: family {self.config.family!r} is not 'action_prior'")
        needed = [g for g in GRAPHS if g != "history" or self.config.history_steps > 0]
        missing = [g for g in needed if g not in self.manifest.graphs]
        if missing:
            raise ManifestError(
                f"{self.directory} lacks the graph(s) {missing}; re-export with apt-export onnx"
            )
        options = session_options(ort, intra_op_threads, allow_spinning)
        self.providers = choose_providers(ort.get_available_providers(), providers)
        use_opt = use_optimized and self.providers == ["CPUExecutionProvider"]
        self._sessions: dict[str, Any] = {
            name: open_session(
                ort,
                graph_path(self.directory, self.manifest, name, use_opt, ort.__version__),
                options,
                self.providers,
                self.manifest.graphs[name],
            )
            for name in needed
        }
        self._inputs = {name: list(self.manifest.graphs[name].input_names) for name in needed}
        self._rtc = self.manifest.rtc_inputs
        mode = resolve_rtc_mode(rtc_mode, self.config)
        self._info = PolicyInfo.from_config(
            self.config, self.backend, self.manifest.steps, rtc_inputs=self._rtc, rtc_mode=mode
        )
        self._rtc_trained = np.full((1,), 1.0 if mode == "trained" else 0.0, np.float32)
        latent = self.manifest.graphs["prefix"].outputs[0]
        self._zero_history = np.zeros((1, int(latent.shape[-1])), np.float32)
        self._lock = threading.RLock()

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self._sessions[name].run(None, {k: feeds[k] for k in self._inputs[name]})
        return np.asarray(out)

    def run_inputs(self, x: ModelInputs) -> np.ndarray:
        """Encoded inputs -> normalised actions [1, horizon, action_dim] (prefix, history, sampler)."""
        has_prefix = int(np.max(x.prefix_len, initial=0)) > 0
        if has_prefix and not self._rtc:
            raise InferenceError(f"{self.directory}: the sampler graph has no real-time-chunking inputs")
        feeds: dict[str, np.ndarray] = {
            "pixel_values": x.pixel_values,
            "input_ids": x.input_ids,
            "text_mask": x.text_mask,
            "state": x.state,
            "noise": x.noise,
            "prefix": x.prefix,
            "prefix_len": x.prefix_len,
            "rtc_trained": self._rtc_trained,
        }
        if x.history_states is not None and x.history_actions is not None and x.history_mask is not None:
            feeds.update(
                history_states=x.history_states,
                history_actions=x.history_actions,
                history_mask=x.history_mask,
            )
        try:
            feeds["latent"] = self._run("prefix", feeds)
            feeds["history_token"] = (
                self._run("history", feeds) if "history" in self._sessions else self._zero_history
            )
            return self._run("sampler", feeds)
        except Exception as exc:  # onnxruntime raises its own exception types for shape/type errors
            raise InferenceError(f"ONNX Runtime inference failed: {exc}") from exc
