"""The inference worker: a thread that runs ``policy.predict`` on the freshest observation set on request.

ROS-free. The stream thread never waits on it: it calls :meth:`InferenceWorker.request` (sets a flag) when the
executing chunk runs low, and the worker hands each finished chunk to ``on_chunk`` (called from the worker
thread). Instructions carry an epoch: a result computed for an older instruction is discarded, and the epoch
check plus the hand-over happen under the worker's lock so a new instruction cannot slip in between.
Failures (exception, wrong shape, NaN/inf, slower than ``timeout_s``) go to ``on_error`` and produce no chunk.
With ``prefix`` (real-time chunking), the committed prefix for each observation is asked for right after the
observation is taken and passed to ``predict(..., prefix=rows)``; the chunk carries ``prefix_len``.
With ``history`` (stateful policies), its value taken after the observation goes to ``predict(history=)``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from apt_policy.control.observations import ObservationSet, StaleInputsError

FAILURE_BACKOFF_S = 0.1  # wait after a failed inference before the next attempt
PredictFn = Callable[..., np.ndarray]  # (images, state, instruction[, prefix=rows]) -> (horizon, action_dim)
PrefixFn = Callable[[ObservationSet], "np.ndarray | None"]
HistoryFn = Callable[
    [], object
]  # the executed-step history for predict(history=...) (runtime.policy.History)


@dataclass(frozen=True)
class ChunkResult:
    """A chunk of actions (horizon, action_dim) in robot units and where it came from."""

    actions: np.ndarray
    t_obs: float  # monotonic time of the observation (schedule origin)
    stamp_s: float  # sensor stamp of the observation
    state: np.ndarray  # measured state in the observation (for delta semantics)
    instruction: str
    epoch: int
    chunk_id: int
    inference_s: float  # observation set taken -> actions ready
    prefix_len: int = 0  # committed rows sent with the request (real-time chunking)
    prefix: np.ndarray | None = None  # those rows (robot units)
    history: Any = None  # the executed-step history predict() was given (runtime.policy.History), if any


class InferenceWorker:
    """Runs inference on its own thread; see the module docstring for the protocol.

    ``observe(now)`` returns the freshest :class:`ObservationSet` or raises :class:`StaleInputsError` (the
    worker then retries every ``retry_s`` while the request stands). ``expected_shape`` (horizon, action_dim)
    is checked on every result.
    """

    def __init__(
        self,
        predict: PredictFn,
        observe: Callable[[float], ObservationSet],
        on_chunk: Callable[[ChunkResult], None],
        on_error: Callable[[str], None],
        expected_shape: tuple[int, int],
        timeout_s: float = 1.0,
        retry_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        latency_window: int = 200,
        prefix: PrefixFn | None = None,
        history: HistoryFn | None = None,
        first_chunk_id: int = 1,
    ) -> None:
        """``first_chunk_id``: the id of this worker's first chunk (a node that replaces its worker continues
        its ids: they stay unique over the node's lifetime)."""
        if timeout_s <= 0 or retry_s <= 0:
            raise ValueError("timeout_s and retry_s must be positive")
        self._predict = predict
        self._observe = observe
        self._on_chunk = on_chunk
        self._on_error = on_error
        self.expected_shape = tuple(expected_shape)
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)
        self._clock = clock
        self._prefix = prefix
        self._history = history
        self._cond = threading.Condition()
        self._instruction: str | None = None
        self._epoch = 0
        self._requested = False
        self._stopping = False
        self._busy_since: float | None = None
        self._waiting_reason: str | None = None
        self._thread: threading.Thread | None = None
        self._next_id = int(first_chunk_id) - 1  # the id of the last chunk produced
        self.latencies_s: deque[float] = deque(maxlen=latency_window)
        self.chunks_produced = 0
        self.discarded_stale_epoch = 0
        self.failures = 0
        self.waits_for_inputs = 0

    @property
    def last_chunk_id(self) -> int:
        """The id of the last chunk produced (``first_chunk_id - 1`` before the first)."""
        with self._cond:
            return self._next_id

    # -- control (any thread) ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self._run, name="apt-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and wait up to ``timeout_s`` (a running predict cannot be interrupted)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def set_instruction(self, instruction: str | None, epoch: int | None = None) -> int:
        """Switch to ``instruction`` (None: no instruction, worker idles); returns the new epoch.

        ``epoch``: the controller's epoch for this instruction (must increase); default: the next one. Any
        inference in flight belongs to the old epoch and its result will be discarded. A request for the new
        instruction is raised at once.
        """
        with self._cond:
            if epoch is not None and epoch <= self._epoch:
                raise ValueError(f"epoch must increase: {epoch} <= {self._epoch}")
            self._instruction = instruction
            self._epoch = self._epoch + 1 if epoch is None else int(epoch)
            self._requested = instruction is not None
            self._cond.notify_all()
            return self._epoch

    def request(self) -> None:
        """Ask for a new chunk (non-blocking; repeated requests before the next result coalesce)."""
        with self._cond:
            if not self._requested:
                self._requested = True
                self._cond.notify_all()

    @property
    def epoch(self) -> int:
        with self._cond:
            return self._epoch

    @property
    def instruction(self) -> str | None:
        with self._cond:
            return self._instruction

    @property
    def busy_since(self) -> float | None:
        """When the inference now running began (clock s), None when idle; the watchdog judges it."""
        return self._busy_since

    @property
    def waiting_reason(self) -> str | None:
        """Why the last attempt could not form an observation set (None once one was formed)."""
        return self._waiting_reason

    # -- the thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._requested and self._instruction is not None):
                    self._cond.wait()
                if self._stopping:
                    return
                instruction, epoch = self._instruction, self._epoch
            assert instruction is not None
            try:
                obs = self._observe(self._clock())
            except StaleInputsError as exc:
                self.waits_for_inputs += 1
                self._waiting_reason = str(exc)
                self._sleep(self.retry_s)  # the controller reports why; keep the request standing
                continue
            self._waiting_reason = None
            self._infer(obs, instruction, epoch)

    def _infer(self, obs: ObservationSet, instruction: str, epoch: int) -> None:
        t0 = self._clock()
        self._busy_since = t0
        prefix = None
        try:
            extra = {} if self._history is None else {"history": self._history()}
            if self._prefix is not None:
                prefix = self._prefix(obs)
            if prefix is not None and len(prefix) > 0:
                prefix = np.asarray(prefix, dtype=np.float64)
                actions = np.asarray(
                    self._predict(obs.images, obs.state, instruction, prefix=prefix, **extra)
                )
            else:
                prefix = None
                actions = np.asarray(self._predict(obs.images, obs.state, instruction, **extra))
            error = _check_actions(actions, self.expected_shape)
        except Exception as exc:  # any backend failure is reported, never propagated into the stream
            error = f"inference failed: {type(exc).__name__}: {exc}"
            actions = None
        elapsed = self._clock() - t0
        self._busy_since = None
        if error is None and elapsed > self.timeout_s:
            error = f"inference took {elapsed * 1e3:.0f} ms > timeout {self.timeout_s * 1e3:.0f} ms"
        if error is not None:
            self.failures += 1
            self._on_error(error)
            self._sleep(max(self.retry_s, FAILURE_BACKOFF_S))  # a broken backend is not retried in a hot loop
            return
        self.latencies_s.append(elapsed)
        with self._cond:
            if epoch != self._epoch:
                self.discarded_stale_epoch += 1
                return
            self._next_id += 1
            result = ChunkResult(
                actions=np.asarray(actions, dtype=np.float64),
                t_obs=obs.t_obs,
                stamp_s=obs.stamp_s,
                state=obs.state,
                instruction=instruction,
                epoch=epoch,
                chunk_id=self._next_id,
                inference_s=elapsed,
                prefix_len=0 if prefix is None else len(prefix),
                prefix=prefix,
                history=extra.get("history"),
            )
            self._on_chunk(result)
            self.chunks_produced += 1
            self._requested = False

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(seconds)


def _check_actions(actions: np.ndarray, expected_shape: tuple[int, ...]) -> str | None:
    if actions.shape != expected_shape:
        return f"inference returned shape {actions.shape}, expected {expected_shape}"
    if not np.all(np.isfinite(actions)):
        return f"inference returned {int(np.sum(~np.isfinite(actions)))} NaN/inf values"
    return None
