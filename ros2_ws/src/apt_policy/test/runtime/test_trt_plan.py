"""TensorRT decisions made without TensorRT: build flags, profiles, cache keys, engine checks, buffers."""

from __future__ import annotations

import pytest
from apt_policy.runtime.manifest import RTC_SAMPLER_INPUTS, EngineSpec, GraphSpec, Manifest, TensorSpec
from apt_policy.runtime.trt_plan import (
    EngineMismatchError,
    buffer_plan,
    build_plan,
    check_engine_compatible,
    check_host_inputs,
    engine_cache_key,
    engine_order,
    fed_inputs,
    resolve_profile,
)

PREFIX_IN = (
    TensorSpec("pixel_values", ("batch", 2, 3, 32, 32), "float32"),
    TensorSpec("input_ids", ("batch", 8), "int64"),
    TensorSpec("text_mask", ("batch", 8), "int64"),
)
PREFIX_OUT = (
    TensorSpec("prefix_kv", ("batch", 2, 40, 16), "float32"),
    TensorSpec("prefix_mask", ("batch", 40), "bool"),
)
SAMPLER_IN = (
    TensorSpec("prefix_kv", ("batch", 2, 40, 16), "float32"),
    TensorSpec("prefix_mask", ("batch", 40), "bool"),
    TensorSpec("state", ("batch", 8), "float32"),
    TensorSpec("noise", ("batch", 4, 8), "float32"),
)
SAMPLER_OUT = (TensorSpec("actions", ("batch", 4, 8), "float32"),)


def test_build_plan_strongly_typed_only_when_graph_types_are_the_target():
    assert build_plan("fp16", "fp16").strongly_typed
    plan = build_plan("fp32", "bf16")
    assert not plan.strongly_typed and plan.flags == ("BF16",)
    assert build_plan("fp32", "fp16").flags == ("FP16",)
    with pytest.raises(ValueError, match="explicitly quantised"):
        build_plan("fp32", "fp8")
    assert build_plan("fp32", "fp8", has_fp8_qdq=True).strongly_typed
    with pytest.raises(ValueError, match="cannot build a bf16"):
        build_plan("fp16", "bf16")
    with pytest.raises(ValueError, match="engine precision"):
        build_plan("fp32", "int4")


def test_profile_fixed_dims_and_batch_range():
    profile = resolve_profile(PREFIX_IN, {"batch": (1, 2, 4)})
    assert profile["pixel_values"] == ((1, 2, 3, 32, 32), (2, 2, 3, 32, 32), (4, 2, 3, 32, 32))
    assert profile["input_ids"] == ((1, 8), (2, 8), (4, 8))
    assert resolve_profile(PREFIX_IN)["text_mask"] == ((1, 8), (1, 8), (1, 8))


def test_profile_refuses_unknown_axes_and_bad_ranges():
    with pytest.raises(ValueError, match="tokens"):
        resolve_profile([TensorSpec("ids", ("batch", "tokens"), "int64")])
    with pytest.raises(ValueError, match="min <= opt <= max"):
        resolve_profile(PREFIX_IN, {"batch": (2, 1, 4)})
    with pytest.raises(ValueError, match="unnamed"):
        resolve_profile([TensorSpec("ids", (-1, 8), "int64")])


def test_cache_key_changes_with_every_ingredient_and_only_then():
    profile = resolve_profile(PREFIX_IN)
    base = ("a" * 64, "10.3.0", "NVIDIA Orin", "8.7", "fp16", profile)
    key = engine_cache_key(*base)
    assert key == engine_cache_key(*base)
    assert engine_cache_key(*base[:5], dict(reversed(list(profile.items())))) == key  # order-free
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "10.4.0", *base[2:]),
        (*base[:2], "NVIDIA H100", *base[3:]),
        (*base[:3], "9.0", *base[4:]),
        (*base[:4], "bf16", profile),
        (*base[:5], resolve_profile(PREFIX_IN, {"batch": (1, 1, 2)})),
    ]
    assert len({engine_cache_key(*v) for v in variants} | {key}) == len(variants) + 1


def _engine(**over):
    fields = dict(
        file="prefix.engine",
        graph_sha256="a" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        strongly_typed=True,
        profile={},
        cache_key="k",
    )
    fields.update(over)
    return EngineSpec(**fields)


def test_engine_compatibility_names_what_differs():
    check_engine_compatible(_engine(), "10.3.0", "Orin", "8.7", "a" * 64)
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10\.3\.0 \(this machine has 10\.7\.0\)"):
        check_engine_compatible(_engine(), "10.7.0", "Orin", "8.7", "a" * 64)
    with pytest.raises(EngineMismatchError, match=r"sm_8\.7.*H100 sm_9\.0"):
        check_engine_compatible(_engine(), "10.3.0", "H100", "9.0", "a" * 64)
    with pytest.raises(EngineMismatchError, match="another ONNX graph"):
        check_engine_compatible(_engine(), "10.3.0", "Orin", "8.7", "b" * 64)


def test_buffer_plan_shares_prefix_outputs_with_sampler_inputs():
    shapes = {s.name: (1, *s.shape[1:]) for s in (*PREFIX_IN, *PREFIX_OUT, *SAMPLER_IN, *SAMPLER_OUT)}
    plan = {
        b.name: b
        for b in buffer_plan(
            {"prefix": (PREFIX_IN, PREFIX_OUT), "sampler": (SAMPLER_IN, SAMPLER_OUT)},
            ["prefix", "sampler"],
            shapes,
            outputs=["actions"],
        )
    }
    assert set(plan) == {
        "pixel_values",
        "input_ids",
        "text_mask",
        "prefix_kv",
        "prefix_mask",
        "state",
        "noise",
        "actions",
    }
    kv = plan["prefix_kv"]
    assert kv.bindings == (("prefix", "prefix_kv"), ("sampler", "prefix_kv")) and not kv.host_input
    assert kv.nbytes == 4 * 2 * 40 * 16
    assert plan["prefix_mask"].nbytes == 40
    assert plan["input_ids"].nbytes == 8 * 8 and plan["input_ids"].host_input
    assert plan["state"].host_input and not plan["state"].host_output
    assert plan["actions"].host_output and plan["actions"].nbytes == 4 * 4 * 8


def test_buffer_plan_rejects_mismatched_links_and_symbolic_shapes():
    bad_in = (TensorSpec("prefix_kv", ("batch", 2, 41, 16), "float32"),)
    shapes = {"prefix_kv": (1, 2, 40, 16)}
    with pytest.raises(ValueError, match="was planned as"):
        buffer_plan(
            {"a": ((), (TensorSpec("prefix_kv", (1, 2, 40, 16), "float16"),)), "b": (bad_in, ())},
            ["a", "b"],
            shapes,
            outputs=[],
        )
    with pytest.raises(ValueError, match="symbolic"):
        buffer_plan({"a": (PREFIX_IN, ())}, ["a"], {}, outputs=[])
    with pytest.raises(ValueError, match="produced by no graph"):
        buffer_plan({"a": ((), ())}, ["a"], {}, outputs=["actions"])


RTC_IN = (  # what apt-export onnx adds to the sampler (see export/tests for the real interface)
    TensorSpec("prefix", ("batch", 4, 8), "float32"),
    TensorSpec("prefix_len", ("batch",), "int64"),
    TensorSpec("rtc_trained", ("batch",), "float32"),
)


def test_rtc_inputs_get_profiles_and_host_buffers():
    """The real-time-chunking sampler inputs are in the engine's optimisation profile and are host inputs
    the runtime feeds (copied to the device before each run); an unfed host input is refused."""
    sampler_in = (*SAMPLER_IN, *RTC_IN)
    profile = resolve_profile(sampler_in)
    assert profile["prefix"] == ((1, 4, 8),) * 3
    assert profile["prefix_len"] == ((1,),) * 3 and profile["rtc_trained"] == ((1,),) * 3
    assert resolve_profile(sampler_in, {"batch": (1, 2, 4)})["prefix_len"] == ((1,), (2,), (4,))
    shapes = {s.name: (1, *s.shape[1:]) for s in (*PREFIX_IN, *PREFIX_OUT, *sampler_in, *SAMPLER_OUT)}
    graphs = {"prefix": (PREFIX_IN, PREFIX_OUT), "sampler": (sampler_in, SAMPLER_OUT)}
    plan = buffer_plan(graphs, ["prefix", "sampler"], shapes, outputs=["actions"])
    by_name = {b.name: b for b in plan}
    for name in RTC_SAMPLER_INPUTS:
        assert by_name[name].host_input and by_name[name].bindings == (("sampler", name),)
    assert by_name["prefix"].nbytes == 4 * 4 * 8 and by_name["prefix_len"].nbytes == 8
    fed = ("pixel_values", "input_ids", "text_mask", "state", "noise")
    check_host_inputs(plan, (*fed, *RTC_SAMPLER_INPUTS))
    with pytest.raises(ValueError, match=r"\['prefix', 'prefix_len', 'rtc_trained'\]"):
        check_host_inputs(plan, fed)
    # the cache key follows the profile: an engine built before the RTC inputs is not reused for them
    old = engine_cache_key("a" * 64, "10.3.0", "Orin", "8.7", "fp16", resolve_profile(SAMPLER_IN))
    assert engine_cache_key("a" * 64, "10.3.0", "Orin", "8.7", "fp16", profile) != old


def test_manifest_says_whether_the_sampler_takes_a_prefix():
    def manifest(sampler_in: tuple[TensorSpec, ...]) -> Manifest:
        graph = GraphSpec("sampler.onnx", sampler_in, SAMPLER_OUT)
        return Manifest("m", "fp32", 18, 5, {"sampler": graph}, {}, {}, None, {})

    assert manifest((*SAMPLER_IN, *RTC_IN)).rtc_inputs
    assert not manifest(SAMPLER_IN).rtc_inputs  # exported before RTC
    assert not manifest((*SAMPLER_IN, RTC_IN[0])).rtc_inputs  # incomplete


def test_engine_order_is_one_chain_for_every_family():
    assert engine_order(["sampler", "prefix"]) == ("prefix", "sampler")
    assert engine_order({"sampler", "history", "prefix"}) == ("prefix", "history", "sampler")
    with pytest.raises(ValueError, match="sampler"):
        engine_order(["prefix", "history", "denoiser"])


def test_fed_inputs_per_family():
    base = ("pixel_values", "input_ids", "text_mask", "state", "noise")
    assert fed_inputs("apt", ("prefix", "sampler"), rtc=False) == base
    assert fed_inputs("apt", ("prefix", "sampler"), rtc=True) == (*base, *RTC_SAMPLER_INPUTS)
    with_history = fed_inputs("action_prior", ("prefix", "history", "sampler"), rtc=False)
    assert with_history == (*base, "history_states", "history_actions", "history_mask")
    assert fed_inputs("action_prior", ("prefix", "sampler"), rtc=False) == (*base, "history_token")
