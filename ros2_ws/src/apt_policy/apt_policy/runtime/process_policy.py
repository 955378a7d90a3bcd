"""A policy served by a child process: the same Policy contract, another Python interpreter.

Why: a control loop written in Python shares one interpreter lock (GIL) with every thread of its process.
Model pre/post-processing and the backend's Python glue hold it for stretches that delay the command stream
(measured in docs/NODE.md); a child process has its own interpreter, so the stream thread of the node only
ever waits on the light executor work. Images travel through a shared memory file (``/dev/shm``), copied
in with NumPy (which releases the GIL for large copies: ~0.03 ms per 640x480 frame); pickling them into the
socket instead would hold the GIL for the whole copy. The socket carries only shapes, state and text. The
child unlinks the file once it has mapped it (both mappings stay valid), so a parent that dies without
closing leaves nothing behind in ``/dev/shm``.

The child is a fresh interpreter (``python -m apt_policy.runtime.inference_child FD``: no copied threads or
middleware state of the parent, and unlike multiprocessing's ``spawn`` it never re-imports the caller's main
module) talking over a socket pair; it runs with normal scheduling even if its parent is real-time, loads
the policy with
``load_policy(path, backend, **options)`` and answers requests in order. Errors in the child come back as
:class:`~apt_policy.runtime.inputs.InferenceError` with the child's message; a child that exits or stops
answering makes every later call of that ProcessPolicy raise ``InferenceError`` saying so.
:class:`RestartingProcessPolicy` (what the node uses) replaces a child that died, a bounded number of times
in a row with a growing back-off, and then stays down (the node FAULTs).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import count
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from .policy import History, InferenceError, PolicyInfo

START_TIMEOUT_S = 300.0  # loading (TensorRT engines, torch) can take a while on a Jetson
CLOSE_TIMEOUT_S = 5.0
ARENA_PREFIX = "apt_images_"  # the image arenas' file names in /dev/shm


def arena_files() -> set[str]:
    """Image arena files present in /dev/shm (each lives until its child has mapped it)."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(ARENA_PREFIX + "*")} if shm.is_dir() else set()


ImageSlot = tuple[str, tuple[int, ...], str, int]  # camera, shape, dtype, byte offset in the arena


# ---------------------------------------------------------------------------------- the pipe's messages
@dataclass(frozen=True)
class LoadRequest:
    """First message to the child: what to load (load_policy's arguments)."""

    path: str
    backend: str
    options: dict[str, Any]


@dataclass(frozen=True)
class PredictRequest:
    """One prediction: images in the shared arena (path, generation, size, layout), the rest pickled."""

    arena_path: str
    generation: int
    arena_size: int
    layout: list[ImageSlot]
    state: np.ndarray
    instruction: str
    noise: np.ndarray | None = None
    prefix: np.ndarray | None = None  # (d, action_dim) committed actions for real-time chunking
    history: History | None = None  # the last K executed steps (stateful policies)


@dataclass(frozen=True)
class WarmupRequest:
    """Run the policy's warm-up."""


@dataclass(frozen=True)
class CloseRequest:
    """Exit the child."""


@dataclass(frozen=True)
class Ready:
    """The child loaded the policy."""

    info: PolicyInfo


@dataclass(frozen=True)
class Done:
    """A request succeeded; ``actions`` for a prediction."""

    actions: np.ndarray | None = None


@dataclass(frozen=True)
class Failed:
    """A request (or loading) failed in the child; ``message`` says why."""

    message: str


Request = LoadRequest | PredictRequest | WarmupRequest | CloseRequest
Reply = Ready | Done | Failed


class ProcessPolicy:
    """:class:`~apt_policy.runtime.policy.Policy` whose ``predict`` runs in a child process."""

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        start_timeout_s: float = START_TIMEOUT_S,
        **options: Any,
    ) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the directory holding apt_policy/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "apt_policy.runtime.inference_child", str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_sock.close()
        self._conn = Connection(parent_sock.detach())
        self._conn.send(LoadRequest(str(path), backend, dict(options)))
        self._lock = threading.Lock()
        self._broken: str | None = None
        self._arena: _ImageArena | None = None
        try:
            reply = self._receive(start_timeout_s, "loading the policy")
        except InferenceError:
            self.close()
            raise
        if not isinstance(reply, Ready):
            self.close()
            raise _child_error(reply, "loading the policy")
        self._info: PolicyInfo = reply.info

    @property
    def info(self) -> PolicyInfo:
        return self._info

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        """The child is running (it may still be loading or hung; a dead one is not)."""
        return self._process.poll() is None

    @property
    def usable(self) -> bool:
        """The child runs and its connection works (a killed child may not be reaped yet when the
        connection already failed: then it is not usable although ``alive``)."""
        return self._broken is None and self.alive

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> np.ndarray:
        """Actions (horizon, action_dim) computed by the child; InferenceError on any failure (a bad prefix
        too: the child's PreprocessError comes back as InferenceError with its message)."""
        arrays = {name: np.asarray(img) for name, img in images.items()}
        with self._lock:
            need = sum(a.nbytes for a in arrays.values())
            if self._arena is None or self._arena.size < need:
                if self._arena is not None:
                    self._arena.close()
                self._arena = _ImageArena(max(need, 1))
            layout = self._arena.put(arrays)
            request = PredictRequest(
                self._arena.path,
                self._arena.generation,
                self._arena.size,
                layout,
                np.asarray(state),
                instruction,
                noise,
                None if prefix is None else np.asarray(prefix),  # (d, action_dim): small, pickled
                history,  # K steps: small, pickled
            )
            reply = self._call_locked(request, "predict")
        if reply.actions is None:
            raise self._fail("a prediction came back without actions")
        return reply.actions

    def warmup(self) -> None:
        self._call(WarmupRequest(), "warmup")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Ask the child to exit; terminate (then kill) it if it does not within ``timeout_s``.

        A prediction still waiting for a hung child keeps the request lock: the child is then stopped
        without asking, which ends that prediction with InferenceError, and the cleanup follows.
        """
        asked = self._lock.acquire(timeout=timeout_s)
        try:
            if asked and self._process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(CloseRequest())
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout_s)
            for stop in (self._process.terminate, self._process.kill):
                if self._process.poll() is not None:
                    break
                stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout_s)
        finally:
            if asked:
                self._lock.release()
        with self._lock:  # a prediction blocked on the child has returned now that it is gone
            with contextlib.suppress(OSError):
                self._conn.close()
            if self._arena is not None:
                self._arena.close()
                self._arena = None
            self._broken = self._broken or "closed"

    # ------------------------------------------------------------------------------------------ protocol

    def _call(self, request: Request, what: str) -> Done:
        with self._lock:
            return self._call_locked(request, what)

    def _call_locked(self, request: Request, what: str) -> Done:
        """Send ``request`` and wait for the reply (``self._lock`` held by the caller)."""
        if self._broken is not None:
            raise InferenceError(f"inference process unavailable: {self._broken}")
        try:
            self._conn.send(request)
        except (OSError, ValueError) as exc:
            raise self._fail(f"cannot reach it ({exc})") from None
        reply = self._receive(None, what)
        if not isinstance(reply, Done):
            raise _child_error(reply, what)
        return reply

    def _receive(self, timeout_s: float | None, what: str) -> Reply:
        """The child's next reply. ``timeout_s`` None: wait as long as the child lives."""
        waited = 0.0
        while not self._conn.poll(0.5):
            waited += 0.5
            if self._process.poll() is not None:
                raise self._fail(f"it exited with code {self._process.returncode} during {what}")
            if timeout_s is not None and waited >= timeout_s:
                raise self._fail(f"no answer within {timeout_s:.0f} s during {what}")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._fail(f"connection lost during {what} ({type(exc).__name__})") from None
        if not isinstance(reply, (Ready, Done, Failed)):
            raise self._fail(f"unexpected reply {type(reply).__name__} during {what}")
        return reply

    def _fail(self, reason: str) -> InferenceError:
        self._broken = reason
        return InferenceError(f"inference process (pid {self._process.pid}): {reason}")


class RestartingProcessPolicy:
    """A :class:`ProcessPolicy` whose child is replaced when it dies (killed, crashed, out of memory).

    A ``predict`` that finds the child dead raises ``InferenceError`` (the caller holds for that chunk) after
    starting a new child: the ``n``-th failure in a row waits ``backoff_s * 2**(n-1)`` s first, and a
    prediction that succeeds resets the count. After ``max_restarts`` failures in a row (a child that dies
    again at once, a model that no longer loads) it gives up: :attr:`down` says why, every call raises, and
    the node FAULTs. A model error in a child that keeps serving is passed on unchanged (no restart).
    """

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        max_restarts: int = 3,
        backoff_s: float = 1.0,
        start: Callable[..., ProcessPolicy] = ProcessPolicy,
        sleep: Callable[[float], None] = time.sleep,
        **options: Any,
    ) -> None:
        self._start = lambda: start(path, backend, **options)
        self.max_restarts = int(max_restarts)
        self.backoff_s = float(backoff_s)
        self._sleep = sleep
        self._lock = threading.Lock()  # the current child is swapped under it
        self._policy: ProcessPolicy = self._start()
        self._info = self._policy.info
        self.restarts = 0  # children started after the first one
        self.failures_in_a_row = 0
        self.down: str | None = None  # why it gave up (None while it serves or restarts)
        self._closed = False

    @property
    def info(self) -> PolicyInfo:
        return self._info

    @property
    def pid(self) -> int:
        return self._policy.pid

    @property
    def alive(self) -> bool:
        """A child is running and serving is not given up."""
        return self.down is None and not self._closed and self._policy.alive

    def warmup(self) -> None:
        self._policy.warmup()

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> np.ndarray:
        if self.down is not None:
            raise InferenceError(f"inference process down: {self.down}")
        policy = self._policy
        try:
            actions = policy.predict(images, state, instruction, noise, prefix, history)
        except InferenceError as exc:
            if policy.usable or self._closed:
                raise  # the model failed in a child that still serves (or we are closing): no restart
            self._replace(policy, str(exc))
            raise InferenceError(f"{exc}; a new inference process was started") from None
        self.failures_in_a_row = 0
        return actions

    def _replace(self, dead: ProcessPolicy, reason: str) -> None:
        """Start a new child for ``dead`` after the back-off, or give up (:attr:`down`)."""
        dead.close(timeout_s=1.0)  # reap it, close the socket and the image file
        self.failures_in_a_row += 1
        if self.failures_in_a_row > self.max_restarts:
            self.down = (
                f"{self.failures_in_a_row} failures in a row (max_restarts {self.max_restarts}): {reason}"
            )
            raise InferenceError(f"inference process down: {self.down}")
        self._sleep(self.backoff_s * 2 ** (self.failures_in_a_row - 1))
        try:
            fresh = self._start()
            fresh.warmup()
        except InferenceError as exc:  # it did not come up: counted, tried again at the next call
            reason = f"{reason}; restart failed: {exc}"
            if self.failures_in_a_row >= self.max_restarts:
                self.down = f"{self.failures_in_a_row} failures in a row: {reason}"
            raise InferenceError(f"inference process restart failed: {exc}") from None
        with self._lock:
            if self._closed:  # closed while it was starting: it must not outlive us
                fresh.close()
                return
            self._policy = fresh
            self.restarts += 1

    def revive(self) -> None:
        """After giving up (an operator cleared the fault): try again from the next ``predict``."""
        self.down = None
        self.failures_in_a_row = 0

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        with self._lock:
            self._closed = True
            policy = self._policy
        policy.close(timeout_s)


class _ImageArena:
    """A shared memory file the parent writes images into; the child maps the same file (read only) and
    unlinks it. ``generation`` tells arenas apart (a freed file name can be handed out again)."""

    _generations = count()

    def __init__(self, size: int) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.generation = next(self._generations)
        fd, self.path = tempfile.mkstemp(prefix=ARENA_PREFIX, dir=directory)
        try:
            os.ftruncate(fd, size)
            self.size = size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def put(self, arrays: Mapping[str, np.ndarray]) -> list[ImageSlot]:
        """Copy ``arrays`` in, back to back; returns (name, shape, dtype, offset) per array."""
        layout, offset = [], 0
        for name, arr in arrays.items():
            dst = np.ndarray(arr.shape, arr.dtype, buffer=self._map, offset=offset)
            np.copyto(dst, arr)  # handles strided views (bgr8 reversed channels, padded rows)
            layout.append((name, tuple(arr.shape), arr.dtype.str, offset))
            offset += arr.nbytes
        return layout

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # already gone once the child has mapped it


class _ArenaReader:
    """The child's read-only mapping of the parent's current arena (re-mapped when the parent replaces it;
    the file is unlinked as soon as it is mapped)."""

    def __init__(self) -> None:
        self.generation: int | None = None
        self._map: mmap.mmap | None = None

    def views(self, path: str, generation: int, size: int, layout: list[ImageSlot]) -> dict[str, np.ndarray]:
        if generation != self.generation:
            if self._map is not None:
                with contextlib.suppress(BufferError):
                    self._map.close()
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
            with contextlib.suppress(OSError):
                os.unlink(path)
            self.generation = generation
        return {
            name: np.ndarray(shape, np.dtype(dtype), buffer=self._map, offset=offset)
            for name, shape, dtype, offset in layout
        }


def _child_error(reply: Reply, what: str) -> InferenceError:
    if isinstance(reply, Failed):
        return InferenceError(f"{what} failed in the inference process: {reply.message}")
    return InferenceError(f"{what}: unexpected reply from the inference process: {type(reply).__name__}")


def serve(conn: Connection) -> None:
    """The child: load, say ready (or why not), then answer requests until "close" or a lost parent."""
    load = conn.recv()
    if not isinstance(load, LoadRequest):
        conn.send(Failed(f"expected a LoadRequest first, got {type(load).__name__}"))
        return
    if hasattr(os, "sched_setscheduler"):
        # A real-time parent must not make model inference real-time (it would starve the machine).
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    from .load import load_policy

    try:
        policy = load_policy(load.path, load.backend, **load.options)
    except Exception as exc:
        conn.send(Failed(f"{type(exc).__name__}: {exc}"))
        return
    conn.send(Ready(policy.info))
    arena = _ArenaReader()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if isinstance(request, CloseRequest):
            return
        try:
            if isinstance(request, PredictRequest):
                r = request
                images = arena.views(r.arena_path, r.generation, r.arena_size, r.layout)
                actions = policy.predict(images, r.state, r.instruction, r.noise, r.prefix, r.history)
                conn.send(Done(np.asarray(actions)))
            elif isinstance(request, WarmupRequest):
                policy.warmup()
                conn.send(Done())
            else:
                conn.send(Failed(f"unknown request {type(request).__name__}"))
        except Exception as exc:  # reported to the caller, the child keeps serving
            conn.send(Failed(f"{type(exc).__name__}: {exc}"))
