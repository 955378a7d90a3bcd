"""Write a tiny random FR3 policy bundle (test fixture): ``python make_tiny_bundle.py OUT_DIR
[FAMILY]`` (``apt``, the default; ``action_prior``: a stateful Stage-2 model with a 3-step history;
``apt_two_cameras``: APT with the cameras ``front`` and ``side``; ``action_prior_start_view``: the
action-prior model with ``front`` and its start view ``front@start``).

Run in a subprocess so the test process never imports torch; the weights are random (seeded), so the model
exercises every code path of export, runtime and node but does not solve the task. Its states and actions are
normalised around the FR3's ready pose (absolute joint targets), so its chunks stay inside the joint limits
like a trained policy's (the node's self-check refuses a model whose chunk is outside them).
"""

import sys
from pathlib import Path

import numpy as np
import torch
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import build_word_tokenizer
from apt_policy.model.action_prior import ActionPriorModel, tiny_action_prior_config
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import save_bundle
from apt_policy.model.presets import tiny_policy_config
from apt_policy.robots.franka import FR3

torch.manual_seed(0)
torch.set_num_threads(1)
root = Path(sys.argv[1])
family = sys.argv[2] if len(sys.argv) > 2 else "apt"
joints = tuple(f"fr3_joint{i}" for i in range(1, 8))
if family == "action_prior":  # the same inputs and actions as the APT one (the arm's 7 joints)
    config = tiny_action_prior_config(state_names=joints, action_names=joints).with_stage(2)
elif family == "action_prior_start_view":  # the action-prior demo's two views (core/start_views.py)
    config = tiny_action_prior_config(
        state_names=joints, action_names=joints, cameras=("front", "front@start")
    ).with_stage(2)
elif family == "apt_two_cameras":  # the demo's two views (demo/cameras.py)
    config = tiny_policy_config("pi", cameras=("front", "side"), model_id="apt-tiny-two-cameras")
else:
    config = tiny_policy_config("pi", cameras=("front",), model_id="apt-tiny-launch-test")
rng = np.random.default_rng(0)


def around_ready(size: int) -> np.ndarray:
    """The ready pose (then an open gripper, 0.04 m) padded or cut to ``size`` values."""
    return np.append(FR3.ready_pose, [0.04] * size)[:size]


states = around_ready(config.state_dim) + rng.normal(0.0, 0.05, size=(100, config.state_dim))
actions = around_ready(config.action_dim) + rng.normal(
    0.0, 0.05, size=(100, config.horizon, config.action_dim)
)
normalizer = Normalizer.fit(states, actions, config.normalization)
tokenizer = root / "tokenizer.json"
build_word_tokenizer(["reach the red block", "reach the blue block"], tokenizer)
model = ActionPriorModel(config) if family.startswith("action_prior") else APTModel(config)
print(save_bundle(root / "bundle", model, normalizer, tokenizer))
