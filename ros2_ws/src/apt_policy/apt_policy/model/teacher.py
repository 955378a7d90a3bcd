"""A small Seer-like action model: the teacher of the action-distillation family.

Seer (OpenRobotLab/Seer, ``models/seer_model.py``) reads image, state and language tokens with a
transformer and decodes action-query features with a deterministic MLP. This compact version, sized for
the reaching task on a CPU:

    text    instruction ids/mask -> mean of token embeddings -> one token, and FiLM of every conv block
    image   [B, n_cam, 3, H, W] (the policy's preprocessing) + image coordinates -> instruction-conditioned
            CNN -> one token per channel (its spatial-softmax keypoint) + one per pooled cell (3 x 4)
    state   normalised robot state -> Linear -> one token
    queries ``num_action_tokens`` learnable action queries
    -> transformer encoder (``width``, ``num_layers``) -> action features [B, K, width] (the queries' outputs)
    -> ActionDecoder: Linear(D, D/2), ReLU, Linear(D/2, D/2), ReLU, Linear(D/2, pred_steps * action_dim)
       -> [B, K * pred_steps, action_dim] normalised actions

``features`` (what the student aligns to) and ``decoder`` (what the student reuses, frozen) are separate.
Training adds an auxiliary grounding loss (``grounding_prediction``): the first keypoint of the first
camera is the named block's image position, a linear head on the features its table position. Trained
from scratch in minutes, the CNN does not find the named block from the action loss alone (measured:
0-3 % success with a plain CNN and a mean-embedding text token, docs/ACTION_DISTILLATION.md).
History: one observation (Seer uses 7-10); the reaching task is Markovian in (image, joint state).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.distillation_config import DistillationConfig


class ActionDecoder(nn.Module):
    """Seer's deterministic action decoder over action features: [B, K, D] (+ normalised state) ->
    normalised actions [B, K * steps, action_dim].

    Seer predicts relative (delta) arm actions; the reaching task's actions are absolute joint targets, so
    the MLP predicts each action relative to the current state, standardised: ``action = base(state) +
    delta_scale * mlp(features)`` where ``base`` maps the normalised state of the same-named joint into the
    action normalisation (0 for an action with no state of its name) and ``delta_scale`` is the spread of
    those residuals in the data (``fit_residual``; buffers, saved with the weights). A 3-step chunk of
    absolute targets differs from "stay where you are" by a few hundredths of the joint range: predicted
    absolutely, that motion drowns in the error (measured: 0 % success, docs/ACTION_DISTILLATION.md).
    Seer squashes arm actions with Tanh and the gripper with Sigmoid; here the output layer is linear.
    """

    def __init__(self, width: int, pred_steps: int, action_dim: int, state_dim: int) -> None:
        super().__init__()
        half = width // 2
        self.mlp = nn.Sequential(nn.Linear(width, half), nn.ReLU(), nn.Linear(half, half), nn.ReLU())
        self.out = nn.Linear(half, pred_steps * action_dim)
        self.pred_steps = pred_steps
        self.action_dim = action_dim
        # base(state) = state @ state_to_action + base_offset; identity-free until fit_residual
        self.register_buffer("state_to_action", torch.zeros(state_dim, action_dim))
        self.register_buffer("base_offset", torch.zeros(action_dim))
        self.register_buffer("delta_scale", torch.ones(action_dim))

    def base(self, state: torch.Tensor) -> torch.Tensor:
        """[B, action_dim]: the current state in normalised action units (0 where no joint matches)."""
        return state @ self.state_to_action + self.base_offset

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        b, k, _ = features.shape
        y = self.out(self.mlp(features)).reshape(b, k * self.pred_steps, self.action_dim)
        return self.base(state)[:, None, :] + y * self.delta_scale

    @torch.no_grad()
    def fit_residual(
        self,
        state_names: tuple[str, ...],
        action_names: tuple[str, ...],
        normalizer: object,
        states: object,
        actions: object,
    ) -> None:
        """Set ``base`` (per same-named joint, exact for the affine normalisation) and ``delta_scale`` (std of
        the normalised residuals, floor 1e-3) from training data (robot units)."""
        import numpy as np

        norm = normalizer
        s = np.asarray(states, np.float32)
        a = np.asarray(actions, np.float32)
        zero, one = np.zeros((1, len(state_names)), np.float32), np.ones((1, len(state_names)), np.float32)
        s0, s1 = norm.normalize_state(zero)[0], norm.normalize_state(one)[0]  # type: ignore[attr-defined]
        a_zero = norm.normalize_actions(np.zeros((1, len(action_names)), np.float32))[0]  # type: ignore[attr-defined]
        a_one = norm.normalize_actions(np.ones((1, len(action_names)), np.float32))[0]  # type: ignore[attr-defined]
        m = np.zeros((len(state_names), len(action_names)), np.float32)
        c = np.zeros(len(action_names), np.float32)
        for j, name in enumerate(action_names):
            if name in state_names:
                i = state_names.index(name)
                k = (a_one[j] - a_zero[j]) / (s1[i] - s0[i])  # action-normalised per state-normalised unit
                m[i, j] = k
                c[j] = a_zero[j] - k * s0[i]
        s_n = norm.normalize_state(s)  # type: ignore[attr-defined]
        a_n = norm.normalize_actions(a)  # type: ignore[attr-defined]
        residual = a_n - (s_n @ m + c)[:, None, :]
        spread = np.maximum(residual.reshape(-1, len(action_names)).std(0), 1e-3)
        self.state_to_action.copy_(torch.from_numpy(m))
        self.base_offset.copy_(torch.from_numpy(c))
        self.delta_scale.copy_(torch.from_numpy(spread.astype(np.float32)))


class FiLM(nn.Module):
    """Feature-wise modulation of a conv block by the instruction: ``x * (1 + gamma) + beta`` per channel
    (zero-initialised: starts as the identity)."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[..., None, None].chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class ImageEncoder(nn.Module):
    """An instruction-conditioned CNN with spatial-softmax keypoints: [N, 3, H, W] + instruction embedding
    [N, cond_dim] -> [N, channels + cells, width] tokens.

    2x average pooling, image-coordinate channels (CoordConv), three convolutions (strides 2, 1, 2), each
    followed by FiLM from the instruction, so the feature maps can pick out the named block; then one
    token per channel from its spatial-softmax keypoint (expected image x, y; the standard small
    visuomotor encoder, sub-cell precise) and one token per cell of the map average-pooled to ``cells``.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        image_size: tuple[int, int],
        cond_dim: int,
        cells: tuple[int, int] = (3, 4),
    ) -> None:
        super().__init__()
        c = channels
        self.pool = nn.AvgPool2d(2)  # half resolution: blocks stay ~6 px wide, 4x less convolution
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3 + 2, c // 2, 5, stride=2, padding=2),
                nn.Conv2d(c // 2, c, 3, stride=1, padding=1),
                nn.Conv2d(c, c, 3, stride=2, padding=1),
            ]
        )
        self.films = nn.ModuleList([FiLM(cond_dim, c // 2), FiLM(cond_dim, c), FiLM(cond_dim, c)])
        h, w = image_size[0] // 2, image_size[1] // 2
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        for _ in range(2):  # the two stride-2 convolutions
            h, w = (h + 1) // 2, (w + 1) // 2
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)
        self.cell_grid = cells
        self.tokens_per_camera = c + cells[0] * cells[1]
        self.keypoint = nn.Linear(2, width)
        self.keypoint_id = nn.Parameter(torch.randn(c, width) * 0.02)
        self.temperature = nn.Parameter(torch.zeros(()))  # log of the spatial softmax's inverse temperature
        self.proj = nn.Linear(c, width)
        self.position = nn.Parameter(torch.randn(cells[0] * cells[1], width) * 0.02)

    def forward(self, images: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N, channels + cells, width], keypoints [N, channels, 2] in [-1, 1] image x, y)."""
        x = self.pool(images)
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        for conv, film in zip(self.convs, self.films, strict=True):
            x = nn.functional.gelu(film(conv(x), cond))
        attn = torch.softmax(x.flatten(2) * self.temperature.exp(), dim=-1)  # [N, C, h*w]
        keypoints = attn @ self.grid  # [N, C, 2] expected (x, y) in [-1, 1]
        kp = self.keypoint(keypoints) + self.keypoint_id
        cells = nn.functional.adaptive_avg_pool2d(x, self.cell_grid).flatten(2).transpose(1, 2)
        return torch.cat([kp, self.proj(cells) + self.position], dim=1), keypoints


class TeacherModel(nn.Module):
    """The teacher (see module doc). ``forward`` returns normalised actions [B, horizon, action_dim]."""

    def __init__(
        self,
        config: DistillationConfig,
        *,
        num_cameras: int,
        image_size: tuple[int, int],
        state_dim: int,
        action_dim: int,
    ) -> None:
        super().__init__()
        t = config.teacher
        d = t.width
        self.config = config
        self.text = nn.Embedding(t.vocab_size, d)
        self.image = ImageEncoder(t.cnn_channels, d, image_size, cond_dim=d)
        self.camera = nn.Parameter(torch.zeros(num_cameras, 1, d))
        self.state = nn.Linear(state_dim, d)
        self.queries = nn.Parameter(torch.randn(config.num_action_tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, t.num_heads, 2 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, t.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.decoder = ActionDecoder(d, config.pred_steps, action_dim, state_dim)
        # training-only grounding head: the named block's (x, y) table position from the action features
        # (training/distillation.py: train_teacher's auxiliary loss; see grounding_prediction)
        self.grounding = nn.Linear(d, 2)

    def encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        state: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action features [B, num_action_tokens, width], keypoints [B, n_cam, channels, 2])."""
        b, n_cam = pixel_values.shape[:2]
        mask = text_mask.to(pixel_values.dtype)[..., None]
        text = (self.text(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        cond = text.repeat_interleave(n_cam, dim=0)
        img, keypoints = self.image(pixel_values.flatten(0, 1), cond)
        img = (img.reshape(b, n_cam, -1, self.queries.shape[-1]) + self.camera).flatten(1, 2)
        queries = self.queries.expand(b, -1, -1)
        tokens = torch.cat([text[:, None], self.state(state)[:, None], img, queries], dim=1)
        out = self.encoder(tokens)
        return self.norm(out[:, -queries.shape[1] :]), keypoints.reshape(b, n_cam, -1, 2)

    def features(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        """Action features [B, num_action_tokens, width]: the action queries' final hidden states."""
        return self.encode(pixel_values, input_ids, text_mask, state)[0]

    def grounding_prediction(self, features: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """[B, 4]: the named block's (u, v) in the first camera = its first keypoint (the instruction-
        conditioned CNN is trained to put it there) and (x, y) on the table from the action features."""
        return torch.cat([keypoints[:, 0, 0], self.grounding(features.mean(1))], dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        return self.decoder(self.features(pixel_values, input_ids, text_mask, state), state)


# ------------------------------------------------------------------------------------------ bundle
TEACHER_CONFIG = "teacher.json"
TEACHER_WEIGHTS = "teacher.safetensors"


def save_teacher(out_dir: object, model: TeacherModel, meta: dict[str, object]) -> None:
    """Write the teacher's own bundle: teacher.json (family_config + ``meta``: cameras, image size, state /
    action names, dt, tokens) and teacher.safetensors; the caller adds norm_stats.json and tokenizer.json."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(str(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"family_config": model.config.to_dict(), **meta}
    (out / TEACHER_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / TEACHER_WEIGHTS))


def load_teacher(path: object) -> tuple[TeacherModel, dict[str, object]]:
    """(TeacherModel in eval mode, teacher.json) from a teacher bundle; ValueError names a bad file."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(str(path))
    doc = json.loads((root / TEACHER_CONFIG).read_text())
    config = DistillationConfig.from_mapping(doc["family_config"])
    model = TeacherModel(
        config,
        num_cameras=len(doc["cameras"]),
        image_size=tuple(doc["image_size"]),  # type: ignore[arg-type]
        state_dim=len(doc["state_names"]),
        action_dim=len(doc["action_names"]),
    )
    tensors = load_file(str(root / TEACHER_WEIGHTS))
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"{root / TEACHER_WEIGHTS}: tensors do not match teacher.json's model")
    model.load_state_dict(tensors)
    return model.eval(), doc
