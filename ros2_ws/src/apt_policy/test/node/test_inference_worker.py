"""InferenceWorker on a real thread with a controllable policy: requests, epochs, failures, timeouts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from apt_policy.control.inference_worker import ChunkResult, InferenceWorker
from apt_policy.control.observations import ObservationSet, StaleInputsError
from apt_policy.control.watchdog import WatchdogConfig, stale_input_reason

SHAPE = (4, 8)


class GatedPolicy:
    """predict blocks until released; returns the instruction's length everywhere (results are traceable)."""

    def __init__(self) -> None:
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.calls: list[str] = []
        self.fail_with: Exception | None = None
        self.output: np.ndarray | None = None

    def __call__(self, images, state, instruction):
        self.calls.append(instruction)
        self.started.release()
        assert self.release.acquire(timeout=5)
        if self.fail_with is not None:
            raise self.fail_with
        if self.output is not None:
            return self.output
        return np.full(SHAPE, float(len(instruction)), np.float32)


def _obs(now: float) -> ObservationSet:
    return ObservationSet(
        images={"front": np.zeros((2, 2, 3), np.uint8)}, state=np.zeros(8), t_obs=now, stamp_s=now, skew_s=0.0
    )


class Harness:
    def __init__(self, observe=_obs, timeout_s: float = 5.0) -> None:
        self.policy = GatedPolicy()
        self.chunks: list[ChunkResult] = []
        self.errors: list[str] = []
        self.got = threading.Semaphore(0)
        self.worker = InferenceWorker(
            self.policy, observe, self._chunk, self._error, SHAPE, timeout_s=timeout_s, retry_s=0.005
        )
        self.worker.start()

    def _chunk(self, c: ChunkResult) -> None:
        self.chunks.append(c)
        self.got.release()

    def _error(self, e: str) -> None:
        self.errors.append(e)
        self.got.release()

    def step(self) -> None:
        """Let one predict run to completion (callers wait for its outcome)."""
        assert self.policy.started.acquire(timeout=5), "predict was not called"
        self.policy.release.release()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    for _ in range(4):
        harness.policy.release.release()
    harness.worker.stop()


def _wait(cond, timeout=5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


def test_no_inference_without_instruction(h: Harness) -> None:
    h.worker.request()
    assert not h.policy.started.acquire(timeout=0.1)


def test_instruction_triggers_one_chunk_and_request_coalesces(h: Harness) -> None:
    h.worker.set_instruction("reach red")
    assert h.policy.started.acquire(timeout=5)
    h.worker.request()
    h.worker.request()  # both while in flight: served by the running inference
    h.policy.release.release()
    _wait(lambda: len(h.chunks) == 1)
    assert not h.policy.started.acquire(timeout=0.1), "delivery must clear the standing request"
    c = h.chunks[0]
    assert c.actions.shape == SHAPE and c.actions[0, 0] == len("reach red")
    assert c.epoch == h.worker.epoch and c.chunk_id == 1 and c.instruction == "reach red"
    h.worker.request()
    h.step()
    _wait(lambda: len(h.chunks) == 2)
    assert h.chunks[1].chunk_id == 2


def test_new_instruction_discards_in_flight_result(h: Harness) -> None:
    h.worker.set_instruction("old instruction")
    assert h.policy.started.acquire(timeout=5)
    h.worker.set_instruction("new")  # pre-empts while "old" is being computed
    h.policy.release.release()  # old result finishes: must be dropped
    h.step()  # the new instruction's inference
    _wait(lambda: len(h.chunks) == 1)
    assert h.policy.calls == ["old instruction", "new"]
    assert [c.instruction for c in h.chunks] == ["new"]
    assert h.worker.discarded_stale_epoch == 1


def test_failure_reported_no_chunk_and_retry_on_request(h: Harness) -> None:
    h.policy.fail_with = RuntimeError("engine exploded")
    h.worker.set_instruction("x")
    h.step()
    _wait(lambda: h.errors)
    assert "engine exploded" in h.errors[0] and not h.chunks
    h.policy.fail_with = None
    h.step()  # request still stands after a failure: the worker tries again
    _wait(lambda: h.chunks)


@pytest.mark.parametrize(
    ("output", "match"),
    [(np.zeros((3, 8), np.float32), "shape"), (np.full(SHAPE, np.nan, np.float32), "NaN")],
)
def test_bad_output_is_an_error(h: Harness, output, match) -> None:
    h.policy.output = output
    h.worker.set_instruction("x")
    h.step()
    _wait(lambda: h.errors)
    assert match in h.errors[0] and not h.chunks


def test_slow_inference_is_overdue_then_rejected() -> None:
    h = Harness(timeout_s=0.05)
    watchdog = WatchdogConfig(inference_timeout=0.05)  # the controller's watchdog judges the running time

    def overdue() -> str | None:
        return stale_input_reason(watchdog, time.monotonic(), None, None, None, h.worker.busy_since)

    try:
        h.worker.set_instruction("x")
        assert h.policy.started.acquire(timeout=5)
        time.sleep(0.08)
        assert "inference running for" in (overdue() or "")
        h.policy.release.release()
        _wait(lambda: h.errors)
        assert "timeout" in h.errors[0] and not h.chunks
        assert h.worker.busy_since is None and overdue() is None
    finally:
        for _ in range(4):
            h.policy.release.release()
        h.worker.stop()


def test_stale_inputs_wait_without_predicting() -> None:
    ready = threading.Event()

    def observe(now):
        if not ready.is_set():
            raise StaleInputsError("camera:front never received")
        return _obs(now)

    h = Harness(observe=observe)
    try:
        h.worker.set_instruction("x")
        assert not h.policy.started.acquire(timeout=0.1)
        assert h.worker.waits_for_inputs > 0
        assert h.worker.waiting_reason == "camera:front never received"  # reported by the controller
        ready.set()
        h.step()
        _wait(lambda: h.chunks)
        assert h.worker.waiting_reason is None
    finally:
        for _ in range(4):
            h.policy.release.release()
        h.worker.stop()


def test_clearing_instruction_stops_requests(h: Harness) -> None:
    h.worker.set_instruction("x")
    h.step()
    _wait(lambda: h.chunks)
    h.worker.set_instruction(None)
    h.worker.request()
    assert not h.policy.started.acquire(timeout=0.1)


def test_explicit_epochs_must_increase(h: Harness) -> None:
    assert h.worker.set_instruction("a", epoch=5) == 5
    with pytest.raises(ValueError, match="must increase"):
        h.worker.set_instruction("b", epoch=5)
    h.step()
    _wait(lambda: h.chunks)
    assert h.chunks[0].epoch == 5


def test_prefix_is_taken_per_observation_and_sent_with_the_request() -> None:
    """Real-time chunking: the committed prefix for the observation goes to predict(prefix=...) and the
    chunk records its length; without a prefix the 3-argument call is kept (policies without RTC inputs)."""
    calls: list[np.ndarray | None] = []
    prefixes = [np.ones((2, SHAPE[1])), None]
    asked: list[float] = []

    def predict(images, state, instruction, prefix=None):
        calls.append(prefix)
        return np.zeros(SHAPE)

    def prefix_for(obs: ObservationSet):
        asked.append(obs.t_obs)
        return prefixes[len(asked) - 1]

    chunks: list[ChunkResult] = []
    got = threading.Semaphore(0)

    def on_chunk(c: ChunkResult) -> None:
        chunks.append(c)
        got.release()

    worker = InferenceWorker(predict, _obs, on_chunk, lambda e: None, SHAPE, prefix=prefix_for)
    worker.start()
    try:
        worker.set_instruction("go")
        assert got.acquire(timeout=5)
        worker.request()
        assert got.acquire(timeout=5)
    finally:
        worker.stop()
    assert chunks[0].prefix_len == 2 and chunks[0].t_obs == asked[0]
    np.testing.assert_array_equal(calls[0], prefixes[0])
    assert calls[1] is None and chunks[1].prefix_len == 0 and chunks[1].prefix is None


def test_history_is_taken_after_each_observation_and_sent_with_the_request() -> None:
    """Stateful policies: the history function is read after the observation, for every request, and its
    value goes to predict(history=...); without one the call carries no history argument (APT)."""
    seen: list[tuple[str, object]] = []
    order: list[str] = []
    versions = iter(["h1", "h2"])

    def observe(now: float) -> ObservationSet:
        order.append("observe")
        return _obs(now)

    def history() -> object:
        order.append("history")
        return next(versions)

    def predict(images, state, instruction, **kwargs):
        seen.append(("history", kwargs.get("history", "absent")))
        return np.zeros(SHAPE)

    got = threading.Semaphore(0)
    worker = InferenceWorker(
        predict, observe, lambda c: got.release(), lambda e: None, SHAPE, history=history
    )
    worker.start()
    try:
        worker.set_instruction("go")
        assert got.acquire(timeout=5)
        worker.request()
        assert got.acquire(timeout=5)
    finally:
        worker.stop()
    assert [v for _, v in seen] == ["h1", "h2"]
    assert order[:4] == ["observe", "history", "observe", "history"]
    plain: list[object] = []
    worker = InferenceWorker(
        lambda i, s, t, **kw: plain.append(kw) or np.zeros(SHAPE),
        _obs,
        lambda c: got.release(),
        lambda e: None,
        SHAPE,
    )
    worker.start()
    try:
        worker.set_instruction("go")
        assert got.acquire(timeout=5)
    finally:
        worker.stop()
    assert plain == [{}]
