"""Action-distillation family: the family_config schema, the student graph, teacher and student training,
bundles and the torch policy (real safetensors, real tokenizer, tiny models)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from apt_policy.core.config import ConfigError, PolicyConfig
from apt_policy.core.distillation_config import DistillationConfig, TeacherConfig
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import (
    ImagePreprocessor,
    InstructionTokenizer,
    PreprocessError,
    build_word_tokenizer,
)
from apt_policy.model.action_distillation import DistillationModel
from apt_policy.model.bundle import load_bundle, save_bundle
from apt_policy.model.presets import tiny_policy_config
from apt_policy.model.teacher import TeacherModel, load_teacher, save_teacher
from apt_policy.runtime.load import load_policy
from apt_policy.training.distillation import (
    StepConfig,
    build_inputs,
    encode_prefixes,
    student_config,
    teacher_features,
    train_student_stage,
    train_teacher,
)

FAMILY = DistillationConfig(
    teacher=TeacherConfig(width=16, num_heads=2, num_layers=1, cnn_channels=8, vocab_size=128)
)


def config(stage: int = 1) -> PolicyConfig:
    base = tiny_policy_config("pi", cameras=("front",), image_size=(32, 32))
    return student_config(base, FAMILY.to_dict(), stage)


# ------------------------------------------------------------------------------------------- schema
def test_family_config_round_trips_and_names_bad_fields():
    cfg = config()
    assert cfg.horizon == FAMILY.chunk == 3 and cfg.family == "action_distillation"
    again = PolicyConfig.from_json(cfg.to_json())
    assert again == cfg and DistillationConfig.from_mapping(again.family_config) == FAMILY
    bad = json.loads(cfg.to_json())
    bad["family_config"]["pred_steps"] = 0
    with pytest.raises(ConfigError, match=r"family_config\.pred_steps"):
        PolicyConfig.from_dict(bad)
    bad = json.loads(cfg.to_json())
    bad["family_config"]["teacher"]["depth"] = 3
    with pytest.raises(ConfigError, match=r"family_config.teacher: unknown field\(s\) \['depth'\]"):
        PolicyConfig.from_dict(bad)
    bad = json.loads(cfg.to_json())
    bad["family_config"]["teacher"]["width"] = 15
    with pytest.raises(ConfigError, match=r"family_config\.teacher\.width=15"):
        PolicyConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="horizon=4"):
        dataclasses.replace(cfg, horizon=4).validate()
    with pytest.raises(ConfigError, match="the 'apt' family takes none"):
        dataclasses.replace(cfg, family="apt").validate()


# -------------------------------------------------------------------------------------------- model
def inputs(cfg: PolicyConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    pixels = torch.randn(b, len(cfg.cameras), 3, h, w, generator=g)
    ids = torch.randint(1, 100, (b, cfg.max_instruction_tokens), generator=g)
    mask = torch.zeros(b, cfg.max_instruction_tokens, dtype=torch.int64)
    mask[0, :3] = 1
    mask[1, :] = 1
    return pixels, ids, mask, torch.randn(b, cfg.state_dim, generator=g)


def test_extended_sequence_is_the_vlm_sequence():
    """The prefix positions of the extended sequence are the backbone's own hidden states, layer by layer."""
    torch.manual_seed(0)
    model = DistillationModel(config())
    pixels, ids, mask, _ = inputs(model.config)
    sequence, deepstack, key_mask = model.encode_prefix(pixels, ids, mask)
    reference = model.backbone(pixels, ids, mask).hidden_states
    b, s, d = sequence.shape
    k = FAMILY.num_action_tokens
    x = torch.cat([sequence, torch.zeros(b, 1 + k, d)], dim=1)
    visible = torch.cat([key_mask, torch.ones(b, 1 + k)], dim=1)
    bias = model.causal + ((1 - visible) * -1e9)[:, None, None, :]
    valid = key_mask.bool()
    for i, layer in enumerate(model.backbone.language_model.layers):
        x = layer(x, model.rope_cos, model.rope_sin, bias)
        torch.testing.assert_close(x[:, :s][valid], reference[i][valid], rtol=0, atol=1e-5)
        if i < model.num_deepstack:
            x = x + torch.cat([deepstack[i], torch.zeros(b, 1 + k, d)], dim=1)


def test_padding_is_invisible_and_state_matters():
    torch.manual_seed(0)
    model = DistillationModel(config()).eval()
    pixels, ids, mask, state = inputs(model.config)
    out = model(pixels, ids, mask, state)
    assert out.shape == (2, 3, model.config.action_dim) and torch.isfinite(out).all()
    other_padding = ids.clone()
    other_padding[0, 3:] = 7  # sample 0 has 3 valid tokens: the rest is padding
    torch.testing.assert_close(model(pixels, other_padding, mask, state)[0], out[0], rtol=0, atol=1e-6)
    assert not torch.allclose(model(pixels, ids, mask, state + 1.0), out, atol=1e-4)
    other_word = ids.clone()
    other_word[0, 1] = 42
    assert not torch.allclose(model(pixels, other_word, mask, state)[0], out[0], atol=1e-6)


def test_stage_parameters_keep_vision_and_decoder_frozen():
    model = DistillationModel(config())
    s1 = {id(p) for p in model.stage_parameters(1)}
    s2 = {id(p) for p in model.stage_parameters(2)}
    assert s1 < s2
    lm = {id(p) for p in model.backbone.language_model.layers.parameters()}
    assert lm <= s2 and not (lm & s1)
    frozen = [
        *model.backbone.visual.parameters(),
        *model.decoder.parameters(),
        model.backbone.language_model.embed_tokens.weight,
    ]
    assert not ({id(p) for p in frozen} & s2)


# ---------------------------------------------------------------------------------- tiny training
class TinyData:
    """A DemoDataset-like set where the action chunk is a function of the state (learnable)."""

    def __init__(self, cfg: PolicyConfig, n: int = 48) -> None:
        rng = np.random.default_rng(0)
        h, w = cfg.image_size
        self.images = {c: rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for c in cfg.cameras}
        self.states = rng.normal(size=(n, cfg.state_dim)).astype(np.float32)
        self.actions = (
            np.repeat(self.states[:, None, : cfg.action_dim], 16, axis=1)
            * np.linspace(1, 2, 16)[None, :, None]
        )
        self.instructions = np.array(["reach the red block", "touch the blue cube"] * (n // 2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("distill")
    cfg = config()
    build_word_tokenizer(["reach the red block", "touch the blue cube"], root / "tok.json")
    tok = InstructionTokenizer(root / "tok.json", cfg.max_instruction_tokens)
    data = TinyData(cfg)
    norm = Normalizer.fit(data.states, data.actions[:, : cfg.horizon], cfg.normalization)
    pre = ImagePreprocessor(cfg.cameras, cfg.image_size, cfg.image_mean, cfg.image_std)
    ins = build_inputs(data, tok, norm, cfg.horizon)
    teacher = TeacherModel(
        FAMILY, num_cameras=1, image_size=cfg.image_size, state_dim=cfg.state_dim, action_dim=cfg.action_dim
    )
    teacher.decoder.fit_residual(
        cfg.state_names, cfg.action_names, norm, data.states, data.actions[:, : cfg.horizon]
    )
    t_losses = train_teacher(teacher, ins, pre, StepConfig(steps=200, batch_size=16, lr=1e-2), progress=False)
    student = DistillationModel(cfg)
    student.decoder.load_state_dict(teacher.decoder.state_dict())
    vision_before = {k: v.clone() for k, v in student.backbone.visual.state_dict().items()}
    cache = encode_prefixes(student, ins, pre)
    targets = teacher_features(teacher, ins, pre)
    s1 = train_student_stage(
        student, 1, cache, ins, targets, StepConfig(steps=100, batch_size=16, lr=3e-3), progress=False
    )
    lm_after_stage1 = {k: v.clone() for k, v in student.backbone.language_model.state_dict().items()}
    student.config = config(stage=2)
    s2 = train_student_stage(
        student, 2, cache, ins, None, StepConfig(steps=100, batch_size=16, lr=3e-3), progress=False
    )
    save_bundle(root / "stage2", student, norm, root / "tok.json")
    save_teacher(
        root / "teacher",
        teacher,
        {"cameras": list(cfg.cameras)}
        | {
            "image_size": list(cfg.image_size),
            "state_names": list(cfg.state_names),
            "action_names": list(cfg.action_names),
        },
    )
    return {
        "root": root,
        "teacher": teacher,
        "student": student,
        "t_losses": t_losses,
        "s1": s1,
        "s2": s2,
        "vision_before": vision_before,
        "lm_after_stage1": lm_after_stage1,
        "ins": ins,
        "pre": pre,
        "norm": norm,
    }


def test_teacher_and_both_stages_learn(trained):
    for key in ("t_losses", "s1"):
        losses = trained[key]
        assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), key
    assert np.mean(trained["s2"][-20:]) < np.mean(trained["s2"][:20])  # starts low: Stage 1 aligned it
    student = trained["student"]
    for k, v in student.backbone.visual.state_dict().items():
        assert torch.equal(v, trained["vision_before"][k]), k  # the vision tower never trains
    teacher = trained["teacher"]
    for k, v in student.decoder.state_dict().items():
        assert torch.equal(v, teacher.decoder.state_dict()[k]), k  # the teacher's decoder, unchanged
    changed = [
        k
        for k, v in student.backbone.language_model.state_dict().items()
        if not torch.equal(v, trained["lm_after_stage1"][k])
    ]
    assert changed and all(k.startswith("layers.") for k in changed)  # Stage 2 tuned the decoder layers only


def test_teacher_bundle_round_trip(trained):
    model, doc = load_teacher(trained["root"] / "teacher")
    ins, pre = trained["ins"], trained["pre"]
    idx = np.arange(4)
    args = (ins.pixels(idx, pre), ins.input_ids[idx], ins.text_mask[idx], ins.states[idx])
    with torch.no_grad():
        torch.testing.assert_close(model(*args), trained["teacher"](*args), rtol=0, atol=0)
    assert doc["family_config"] == FAMILY.to_dict()


def test_student_bundle_and_policy_contract(trained):
    path = trained["root"] / "stage2"
    bundle = load_bundle(path)
    assert isinstance(bundle.model, DistillationModel) and bundle.config.family == "action_distillation"
    policy = load_policy(path, backend="torch")
    info = policy.info
    assert (info.steps, info.noise_scale, info.rtc_inputs, info.horizon) == (0, 0.0, False, 3)
    rng = np.random.default_rng(1)
    cfg = bundle.config
    images = {c: rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for c in cfg.cameras}
    state = rng.normal(size=cfg.state_dim).astype(np.float32)
    a = policy.predict(images, state, "reach the red block")
    b = policy.predict(
        images, state, "reach the red block", rng.normal(size=(3, cfg.action_dim)).astype(np.float32)
    )
    np.testing.assert_array_equal(a, b)  # deterministic: the noise argument does not apply
    assert a.shape == (3, cfg.action_dim) and np.isfinite(a).all()
    with pytest.raises(PreprocessError, match="takes no action prefix"):
        policy.predict(images, state, "reach the red block", prefix=a[:1])
    policy.warmup()


def test_decoder_predicts_relative_to_the_state(trained):
    """base(state) is the same joint's value in normalised action units; the MLP adds standardised deltas."""
    ins, teacher = trained["ins"], trained["teacher"]
    dec = teacher.decoder
    norm = trained["norm"]
    states = ins.states[:5]
    robot = norm.unnormalize_state(states.numpy())
    expected = norm.normalize_actions(robot[:, : dec.action_dim])  # TinyData: action names = state names
    np.testing.assert_allclose(dec.base(states).numpy(), expected, atol=1e-5)
    assert torch.all(dec.delta_scale > 0) and not torch.allclose(
        dec.delta_scale, torch.ones_like(dec.delta_scale)
    )
    features = torch.zeros(5, 1, dec.mlp[0].in_features)
    bias_only = dec(features, states) - dec.base(states)[:, None, :]
    torch.testing.assert_close(bias_only[:, 0], bias_only[:1, 0].expand(5, -1))  # the same delta for all


# ------------------------------------------------------------------------------- teacher grounding
def _two_block_scenes(n: int, size: int = 32, block: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Grey images with a red and a blue square at random, separate places; (u, v) of each in [-1, 1]."""
    rng = np.random.default_rng(3)
    images = np.full((n, size, size, 3), 128, np.uint8)
    centres = np.zeros((n, 2, 2), np.float32)
    for i in range(n):
        while True:
            corners = rng.integers(0, size - block, (2, 2))
            if np.abs(corners[0] - corners[1]).max() > block:
                break
        for k, colour in enumerate(((220, 30, 30), (30, 30, 220))):
            (x, y) = corners[k]
            images[i, y : y + block, x : x + block] = colour
            centres[i, k] = 2 * (corners[k] + (block - 1) / 2) / (size - 1) - 1
    return images, centres


def test_teacher_grounding_finds_the_named_block(tmp_path):
    """With the auxiliary grounding loss the instruction-conditioned CNN puts its first keypoint on the
    block the instruction names (the other block is a distractor), not between them."""
    torch.manual_seed(0)
    cfg = config()
    phrases = ["reach the red block", "touch the blue cube"]
    build_word_tokenizer(phrases, tmp_path / "tok.json")
    tok = InstructionTokenizer(tmp_path / "tok.json", cfg.max_instruction_tokens)
    n = 192
    images, centres = _two_block_scenes(n)
    named = np.arange(n) % 2  # 0: red, 1: blue
    data = TinyData(cfg, n)
    data.images = {"front": images}
    data.instructions = np.array([phrases[k] for k in named])
    norm = Normalizer.fit(data.states, data.actions[:, : cfg.horizon], cfg.normalization)
    pre = ImagePreprocessor(cfg.cameras, cfg.image_size, cfg.image_mean, cfg.image_std)
    ins = build_inputs(data, tok, norm, cfg.horizon)
    uv = torch.from_numpy(centres[np.arange(n), named])
    grounding = torch.cat([uv, uv], dim=1)  # (u, v) image and (x, y) "table": the same here
    teacher = TeacherModel(
        FAMILY, num_cameras=1, image_size=cfg.image_size, state_dim=cfg.state_dim, action_dim=cfg.action_dim
    )
    teacher.decoder.fit_residual(
        cfg.state_names, cfg.action_names, norm, data.states, data.actions[:, : cfg.horizon]
    )
    train_teacher(
        teacher,
        ins,
        pre,
        StepConfig(steps=300, batch_size=32, lr=1e-2),
        progress=False,
        grounding=grounding,
        grounding_weight=10.0,
    )
    idx = np.arange(n)
    with torch.no_grad():
        args = (ins.pixels(idx, pre), ins.input_ids[idx], ins.text_mask[idx], ins.states[idx])
        where = teacher.grounding_prediction(*teacher.encode(*args))
    err_named = (where[:, :2] - uv).norm(dim=1).mean()
    other = torch.from_numpy(centres[np.arange(n), 1 - named])
    err_other = (where[:, :2] - other).norm(dim=1).mean()
    assert err_named < 0.25 and err_other > 3 * err_named, (err_named, err_other)
