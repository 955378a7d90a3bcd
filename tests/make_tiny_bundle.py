"""Write a tiny random one-camera FR3 policy bundle (test fixture): ``python make_tiny_bundle.py OUT_DIR``.

Run in a subprocess so the test process never imports torch; the weights are random (seeded), so the model
exercises every code path of export, runtime and node but does not solve the task.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import build_word_tokenizer
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import save_bundle
from apt_policy.model.presets import tiny_policy_config

torch.manual_seed(0)
torch.set_num_threads(1)
root = Path(sys.argv[1])
config = tiny_policy_config("pi", cameras=("front",), model_id="apt-tiny-launch-test")
rng = np.random.default_rng(0)
states = rng.normal(0.0, 0.5, size=(100, config.state_dim))
actions = rng.normal(0.0, 0.5, size=(100, config.horizon, config.action_dim))
normalizer = Normalizer.fit(states, actions, config.normalization)
tokenizer = root / "tokenizer.json"
build_word_tokenizer(["reach the red block", "reach the blue block"], tokenizer)
print(save_bundle(root / "bundle", APTModel(config), normalizer, tokenizer))
