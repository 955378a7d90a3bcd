"""Remote inference over real DDS on loopback: apt-inference-node (a real process, real ONNX Runtime) and a
RemotePolicy in this process. The remote answer equals the local policy's for the same inputs (raw frames;
for a stateful model, its history too; a start view travels like any frame), a malformed request is answered
with its reason, and a server that is gone makes predict fail within its timeout instead of hanging."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

import dataclasses

import rclpy
from apt_policy.runtime.policy import InferenceError

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


def _server(processes, model: Path, *params: str):
    args = [sys.executable, "-m", "apt_policy.ros.inference_node", "--ros-args", "-p", f"model:={model}"]
    for p in params:
        args += ["-p", p]
    return processes.start("inference_node", args)


@pytest.fixture
def rclpy_context(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def _inputs(info, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for c in info.cameras}
    state = rng.normal(0, 0.3, len(info.state_names))
    noise = rng.standard_normal((info.horizon, info.action_dim)).astype(np.float32)
    return images, state, noise


def test_remote_answers_equal_the_local_policy(processes, tiny_export, rclpy_context) -> None:
    from apt_policy.ros.remote_policy import RemotePolicy
    from apt_policy.runtime.load import load_policy

    _server(processes, tiny_export, "inference_process:=false")
    local = load_policy(tiny_export, "onnxruntime", intra_op_threads=1)
    raw = RemotePolicy(image_encoding="rgb8", timeout_s=5.0, connect_timeout_s=60, context=rclpy_context)
    jpeg = RemotePolicy(image_encoding="jpeg", timeout_s=5.0, connect_timeout_s=60, context=rclpy_context)
    try:
        assert raw.info.backend == "remote:onnxruntime"
        assert dataclasses.replace(raw.info, backend="x") == dataclasses.replace(local.info, backend="x")
        raw.warmup()
        jpeg.warmup()
        for seed in range(3):
            images, state, noise = _inputs(raw.info, seed)
            expected = local.predict(images, state, "pick the red block", noise)
            got = raw.predict(images, state, "pick the red block", noise)
            np.testing.assert_allclose(got, expected, atol=1e-5)
            approx = jpeg.predict(images, state, "pick the red block", noise)
            assert approx.shape == expected.shape and np.all(np.isfinite(approx))
        if raw.info.rtc_inputs:  # the RTC prefix travels: the committed rows come back as sent
            prefix = expected[:3]
            got = raw.predict(images, state, "pick the red block", noise, prefix=prefix)
            np.testing.assert_allclose(
                got, local.predict(images, state, "pick the red block", noise, prefix=prefix), atol=1e-5
            )
        assert min(jpeg.request_bytes) < max(raw.request_bytes) / 2
        print(f"bytes per observation: rgb8 {raw.request_bytes[-1]}, jpeg {jpeg.request_bytes[-1]}")
    finally:
        raw.close()
        jpeg.close()


def test_a_stateful_model_gets_its_history_over_the_wire(
    processes, tiny_action_prior_export, rclpy_context
) -> None:
    """The action-prior family (3 history steps): the history travels with the request and the answer
    equals the local policy's with that history; no history is an episode start (every step invalid); a
    history shorter than the model's is refused with its reason."""
    from apt_policy.ros.remote_policy import RemotePolicy
    from apt_policy.runtime.load import load_policy
    from apt_policy.runtime.policy import History

    _server(processes, tiny_action_prior_export, "inference_process:=false")
    local = load_policy(tiny_action_prior_export, "onnxruntime", intra_op_threads=1)
    remote = RemotePolicy(image_encoding="rgb8", timeout_s=5.0, connect_timeout_s=60, context=rclpy_context)
    try:
        info = remote.info
        k, sd, ad = info.history_steps, len(info.state_names), info.action_dim
        assert k == local.info.history_steps == 3
        remote.warmup()
        images, state, noise = _inputs(info)
        rng = np.random.default_rng(7)
        past = History(
            (state + rng.normal(0, 0.02, (k, sd))).astype(np.float32),
            (state[:ad] + rng.normal(0, 0.02, (k, ad))).astype(np.float32),
            np.array([False, True, True]),
        )
        moved = History(past.states + 0.3, past.actions - 0.3, np.ones(k, bool))
        text = "reach the red block"
        expected = local.predict(images, state, text, noise, history=past)
        got = remote.predict(images, state, text, noise, history=past)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        other = local.predict(images, state, text, noise, history=moved)
        assert np.abs(other - expected).max() > 1e-3, "the tiny model must depend on its history"
        got = remote.predict(images, state, text, noise, history=moved)
        np.testing.assert_allclose(got, other, atol=1e-5)
        start = local.predict(images, state, text, noise, history=History.empty(k, sd, ad))
        np.testing.assert_allclose(remote.predict(images, state, text, noise), start, atol=1e-5)
        short = History(past.states[1:], past.actions[1:], past.valid[1:])
        with pytest.raises(InferenceError, match="expected >= 3 steps"):
            remote.predict(images, state, text, noise, history=short)
    finally:
        remote.close()


def test_malformed_request_is_answered_with_its_reason(processes, tiny_export, rclpy_context) -> None:
    from apt_policy.ros.remote_policy import RemotePolicy

    _server(processes, tiny_export, "inference_process:=false")
    policy = RemotePolicy(image_encoding="rgb8", timeout_s=5.0, connect_timeout_s=60, context=rclpy_context)
    try:
        policy.warmup()
        images, state, _ = _inputs(policy.info)
        h, w = policy.info.image_size
        policy._info = dataclasses.replace(policy.info, image_size=(h // 2, w // 2))  # a confused client
        t0 = time.monotonic()
        with pytest.raises(InferenceError, match="the model takes"):
            policy.predict(images, state, "pick the red block")
        assert time.monotonic() - t0 < 2.0  # answered, not timed out
        policy._info = dataclasses.replace(policy.info, image_size=(h, w))
        with pytest.raises(InferenceError, match="state has"):
            policy.predict(images, np.full(len(policy.info.state_names), np.nan), "pick the red block")
        assert policy.predict(images, state, "pick the red block").shape == (
            policy.info.horizon,
            policy.info.action_dim,
        )
    finally:
        policy.close()


def test_a_server_that_is_gone_fails_predict_within_the_timeout(
    processes, tiny_export, rclpy_context
) -> None:
    from apt_policy.ros.remote_policy import RemotePolicy

    server = _server(processes, tiny_export, "inference_process:=false")
    policy = RemotePolicy(image_encoding="jpeg", timeout_s=0.5, connect_timeout_s=60, context=rclpy_context)
    try:
        policy.warmup()
        images, state, _ = _inputs(policy.info)
        policy.predict(images, state, "pick the red block")
        server.kill()
        server.wait(10)
        t0 = time.monotonic()
        with pytest.raises(InferenceError, match="no chunk for request"):
            policy.predict(images, state, "pick the red block")
        assert time.monotonic() - t0 < 1.5
        assert policy.resends >= 1
    finally:
        policy.close()


def test_executor_node_drives_the_arm_through_a_remote_policy_and_survives_a_server_restart(
    tiny_export, tmp_path, ros_env
) -> None:
    """The policy node with backend remote (executor) + fake_franka + fake_camera, the model in
    apt-inference-node: RUNNING with 0 contract violations; the inference node killed -> HOLD (the executor
    decides, with nothing to execute); a new inference node -> RUNNING again, still 0 violations."""
    import signal
    import subprocess

    from apt_policy.bench.rig import Rig
    from apt_policy.bench.split import SIM_ARM_MARGINS, TIMING_VIOLATIONS

    args = ["-p", "backend:=remote", "-p", "inference_timeout:=1.0", "-p", "remote_connect_timeout:=60.0"]
    args += SIM_ARM_MARGINS  # config/sim.yaml's settings for the simulated arm
    server_cmd = [
        sys.executable,
        "-m",
        "apt_policy.ros.inference_node",
        "--ros-args",
        "-p",
        f"model:={tiny_export}",
    ]
    servers: list[subprocess.Popen] = []

    def start_server() -> None:
        log = (tmp_path / f"inference_node{len(servers)}.log").open("wb")
        servers.append(subprocess.Popen(server_cmd, env=rig.env, stdout=log, stderr=subprocess.STDOUT))

    rig = Rig(tiny_export, tmp_path, args, domain=int(ros_env["ROS_DOMAIN_ID"]))
    try:
        start_server()
        rig.wait_streaming(120.0)
        assert rig.probe.wait_state((1,), 60.0), rig.probe.timeline
        time.sleep(2.0)
        assert rig.probe.status.backend.startswith("remote:")
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(10)
        t = time.monotonic()
        assert rig.probe.wait_state((2,), 5.0), "no HOLD after the inference node died"
        held_after = rig.probe.first_state_after(t, (2,))
        start_server()
        assert rig.probe.wait_state((1,), 60.0), (
            f"not RUNNING again with a new inference node: {rig.probe.timeline}"
        )
        chunks = int(rig.probe.status.chunks_produced)
        time.sleep(2.0)
        assert int(rig.probe.status.chunks_produced) > chunks  # the new inference node serves
        time.sleep(1.2)  # the next violations report (1 Hz)
        kinds = dict(rig.probe.violations.get("violations", {}))
        timing = sum(int(kinds.get(k, 0)) for k in TIMING_VIOLATIONS)
        # content violations never; late arrivals on this loaded machine (issue 17's class) are printed
        assert rig.probe.total_violations() - timing == 0, rig.probe.violations
        print(f"timing violations (late delivery on this machine): {timing}")
        print(
            f"held {held_after:.2f} s after the inference node died; status {rig.probe.status.last_fault!r}"
        )
    finally:
        rig.close()
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
                server.wait(15)


def test_the_policy_node_sends_a_start_view_model_its_start_view(
    tiny_start_view_export, tmp_path, ros_env, rclpy_context
) -> None:
    """A model with ``front@start`` in apt-inference-node, executed by the policy node (backend remote) with
    fake_franka and fake_camera: the node subscribes the live camera only and every request carries both
    views; each episode's first request has the start view equal to its front frame, and every request of
    an instruction carries that same start view until a new instruction starts a new episode."""
    import hashlib
    import signal
    import subprocess
    import threading

    from apt_msgs.msg import ObservationRequest
    from apt_policy.bench.rig import INSTRUCTIONS, Rig
    from apt_policy.bench.split import SIM_ARM_MARGINS
    from apt_policy.ros.remote_policy import REQUEST_QOS
    from apt_policy.runtime.observation_codec import decode_images
    from rclpy.executors import SingleThreadedExecutor

    requests: list[tuple[int, tuple[str, ...], str, str]] = []  # (epoch, cameras, front, start digests)
    said: set[int] = set()  # the epochs of the instructions this test gave
    cameras = ("front", "front@start")

    def on_request(msg) -> None:
        names = tuple(msg.camera_names)
        if msg.instruction in INSTRUCTIONS[1:]:
            said.add(int(msg.epoch))
        if names != cameras:
            requests.append((int(msg.epoch), names, "", ""))
            return
        images = decode_images(
            msg.image_encoding, msg.image_height, msg.image_width, names, list(msg.image_sizes),
            bytes(msg.image_data), cameras, (msg.image_height, msg.image_width),
        )  # fmt: skip
        digest = {c: hashlib.sha1(images[c].tobytes()).hexdigest() for c in cameras}
        requests.append((int(msg.epoch), names, digest["front"], digest["front@start"]))

    watcher = rclpy.create_node("request_watcher", context=rclpy_context)
    watcher.create_subscription(ObservationRequest, "/apt_inference/request", on_request, REQUEST_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(watcher)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node_args = ["-p", "backend:=remote", "-p", "remote_image_encoding:=rgb8", "-p", "inference_timeout:=2.0"]
    node_args += ["-p", "remote_connect_timeout:=60.0", *SIM_ARM_MARGINS]
    rig = Rig(tiny_start_view_export, tmp_path, node_args, domain=int(ros_env["ROS_DOMAIN_ID"]))
    log = (tmp_path / "inference_node.log").open("wb")
    cmd = [sys.executable, "-m", "apt_policy.ros.inference_node", "--ros-args"]
    server = subprocess.Popen(
        [*cmd, "-p", f"model:={tiny_start_view_export}"], env=rig.env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        rig.wait_streaming(120.0)
        assert rig.probe.wait_state((1,), 60.0), rig.probe.timeline
        deadline = time.monotonic() + 30.0
        while not requests and time.monotonic() < deadline:  # the watcher discovered the robot's writer
            time.sleep(0.1)
        for text in INSTRUCTIONS[1:]:  # two episodes seen from their start
            rig.probe.say(text)
            time.sleep(3.0)
        assert int(rig.probe.status.chunks_produced) >= 4, rig.probe.timeline
    finally:
        rig.close()
        server.send_signal(signal.SIGINT)
        server.wait(15)
        log.close()
        executor.shutdown()
        watcher.destroy_node()
    assert requests and all(names == cameras for _, names, _, _ in requests), requests[:3]
    epochs = sorted(said)
    assert len(epochs) >= 2, epochs  # both instructions' requests came
    with rig.probe.lock:  # a hold (stale input on a loaded machine) also starts an episode: one more view
        holds = sum(state == 2 for _, state, _ in rig.probe.timeline[1:])
    views: dict[int, set[str]] = {}
    for epoch in epochs:
        mine = [(front, start) for e, _, front, start in requests if e == epoch]
        views[epoch] = {start for _, start in mine}
        assert 1 <= len(views[epoch]) <= 1 + holds, f"epoch {epoch}: {len(views[epoch])} start views"
        if len(views[epoch]) == 1 and len(mine) > 1:  # the live view moves with the arm, the start view not
            assert len({front for front, _ in mine}) > 1, f"epoch {epoch}: the front view never changed"
    assert views[epochs[0]] != views[epochs[-1]], "the new instruction kept the old episode's start view"
