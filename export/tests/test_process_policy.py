"""ProcessPolicy: the policy in a child interpreter gives the same actions, reports its errors, and fails
clearly (never silently) when the child is gone."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from apt_policy.bench.procfs import gone as _gone
from apt_policy.runtime import InferenceError, load_policy
from apt_policy.runtime.process_policy import ARENA_PREFIX, ProcessPolicy


def _inputs(policy, seed: int):
    rng = np.random.default_rng(seed)
    h, w = policy.info.image_size
    state = rng.normal(0.3, 0.5, len(policy.info.state_names)).astype(np.float32)
    noise = rng.standard_normal((policy.info.horizon, policy.info.action_dim)).astype(np.float32)
    frames = {c: rng.integers(0, 256, (h * 2 + 3, w * 3 + 8, 4), dtype=np.uint8) for c in policy.info.cameras}
    # strided views as the node hands them over: bgra8 -> reversed channels, padded rows cropped
    images = {c: f[:, : w * 3, 2::-1] for c, f in frames.items()}
    return images, state, noise


def test_same_actions_as_in_process_and_images_may_be_strided_views(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    local = load_policy(out)
    remote = ProcessPolicy(out)
    try:
        assert remote.info == local.info and remote.pid != os.getpid()
        remote.warmup()
        for seed in range(3):
            images, state, noise = _inputs(local, seed)
            assert not next(iter(images.values())).flags.c_contiguous
            np.testing.assert_allclose(
                remote.predict(images, state, "reach the red cube", noise),
                local.predict(images, state, "reach the red cube", noise),
                rtol=0,
                atol=1e-6,
            )
        # a larger frame than before: the shared memory grows, results stay right
        images, state, noise = _inputs(local, 7)
        big = {c: np.ascontiguousarray(np.tile(img, (2, 2, 1))) for c, img in images.items()}
        np.testing.assert_allclose(
            remote.predict(big, state, "touch the green ball", noise),
            local.predict(big, state, "touch the green ball", noise),
            atol=1e-6,
        )
    finally:
        remote.close()


def test_errors_in_the_child_come_back_and_it_keeps_serving(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    policy = ProcessPolicy(out)
    try:
        images, state, noise = _inputs(policy, 0)
        with pytest.raises(InferenceError, match=r"predict failed in the inference process: .*camera"):
            policy.predict({"not_a_camera": next(iter(images.values()))}, state, "reach the red cube")
        assert policy.predict(images, state, "reach the red cube", noise).shape == (
            policy.info.horizon,
            policy.info.action_dim,
        )
    finally:
        policy.close()


def test_a_dead_child_is_reported_and_close_cleans_up(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    policy = ProcessPolicy(out)
    images, state, noise = _inputs(policy, 0)
    arena = Path(tempfile.gettempdir() if not os.path.isdir("/dev/shm") else "/dev/shm")
    before = set(arena.glob(ARENA_PREFIX + "*"))
    first = policy.predict(images, state, "reach the red cube", noise)
    # the child mapped the arena and unlinked it: nothing is left behind even if this process dies now
    assert set(arena.glob(ARENA_PREFIX + "*")) == before
    np.testing.assert_array_equal(policy.predict(images, state, "reach the red cube", noise), first)
    os.kill(policy.pid, signal.SIGKILL)
    with pytest.raises(InferenceError, match=r"exited with code -9|connection lost|cannot reach"):
        policy.predict(images, state, "reach the red cube", noise)
    with pytest.raises(InferenceError, match="unavailable"):  # stays failed: no silent restart
        policy.predict(images, state, "reach the red cube", noise)
    policy.close()
    assert policy._arena is None and policy._process.returncode is not None


def test_close_ends_a_prediction_stuck_on_a_hung_child(exported_pi: tuple[Path, Path]):
    _, out = exported_pi
    policy = ProcessPolicy(out)
    images, state, noise = _inputs(policy, 0)
    os.kill(policy.pid, signal.SIGSTOP)  # hung: alive, never answers
    errors: list[BaseException] = []

    def predict() -> None:
        try:
            policy.predict(images, state, "reach the red cube", noise)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=predict)
    caller.start()
    time.sleep(0.5)
    assert caller.is_alive()  # waiting on the child, holding the request lock
    t0 = time.monotonic()
    policy.close(timeout_s=0.5)  # cannot ask: stops the child (SIGTERM stays pending on a stopped one: kill)
    caller.join(5.0)
    assert not caller.is_alive() and time.monotonic() - t0 < 4.0
    assert len(errors) == 1 and isinstance(errors[0], InferenceError), errors
    assert policy._process.returncode is not None


def test_a_model_that_does_not_load_says_why(tmp_path: Path):
    with pytest.raises(InferenceError, match=r"loading the policy failed in the inference process: \w+"):
        ProcessPolicy(tmp_path)


def test_a_killed_child_is_replaced_and_serving_goes_on(exported_pi: tuple[Path, Path]):
    """Issue #17: a killed inference process was never replaced (the node held forever with a zombie)."""
    from apt_policy.runtime.process_policy import RestartingProcessPolicy

    _, out = exported_pi
    waits: list[float] = []
    policy = RestartingProcessPolicy(out, max_restarts=2, backoff_s=0.5, sleep=waits.append)
    images, state, noise = _inputs(policy, 0)
    first = policy.predict(images, state, "reach the red cube", noise)
    old = policy.pid
    os.kill(old, signal.SIGKILL)
    with pytest.raises(InferenceError, match="a new inference process was started"):
        policy.predict(images, state, "reach the red cube", noise)
    assert policy.pid != old and policy.alive and policy.restarts == 1 and waits == [0.5]
    assert _gone(old), "the dead child was not reaped"
    np.testing.assert_array_equal(policy.predict(images, state, "reach the red cube", noise), first)
    assert policy.failures_in_a_row == 0
    policy.close()
    assert _gone(policy.pid)


def test_it_gives_up_after_max_restarts_in_a_row_and_can_be_revived(exported_pi: tuple[Path, Path]):
    from apt_policy.runtime.process_policy import RestartingProcessPolicy

    _, out = exported_pi
    waits: list[float] = []
    policy = RestartingProcessPolicy(out, max_restarts=1, backoff_s=0.25, sleep=waits.append)
    images, state, noise = _inputs(policy, 0)
    os.kill(policy.pid, signal.SIGKILL)
    with pytest.raises(InferenceError, match="new inference process"):
        policy.predict(images, state, "reach the red cube", noise)
    os.kill(policy.pid, signal.SIGKILL)  # dies again before any successful prediction
    with pytest.raises(InferenceError, match=r"down: 2 failures in a row"):
        policy.predict(images, state, "reach the red cube", noise)
    assert policy.down and not policy.alive and waits == [0.25]
    with pytest.raises(InferenceError, match="down"):
        policy.predict(images, state, "reach the red cube", noise)
    dead = policy.pid
    assert _gone(dead)
    policy.revive()  # the operator cleared the fault: try again
    with pytest.raises(InferenceError, match="new inference process"):
        policy.predict(images, state, "reach the red cube", noise)
    assert policy.predict(images, state, "reach the red cube", noise).shape == (
        policy.info.horizon,
        policy.info.action_dim,
    )
    policy.close()
    assert _gone(policy.pid)


def test_a_model_error_in_a_serving_child_is_not_a_restart(exported_pi: tuple[Path, Path]):
    from apt_policy.runtime.process_policy import RestartingProcessPolicy

    _, out = exported_pi
    policy = RestartingProcessPolicy(out, max_restarts=0, sleep=lambda s: None)
    images, state, _ = _inputs(policy, 0)
    with pytest.raises(InferenceError, match="failed in the inference process"):
        policy.predict(images, state[:2], "reach the red cube")  # wrong state size: the model refuses
    assert policy.alive and policy.restarts == 0 and policy.down is None
    policy.close()
