"""Remote inference over DDS, the robot's side: :class:`RemotePolicy` satisfies the Policy contract by asking
an inference node (``apt-inference-node``, ros/inference_node.py) on another computer.

The executor node (the ordinary policy node with ``backend: remote``) keeps everything that decides what the
arm does: schedule, real-time chunking or blending, safety filter, watchdog, stream, gripper, services. Only
``predict`` crosses the network. One request at a time:

* ``predict`` resizes the images to the model's input (the encoder's own ``resize_rgb``), encodes them (raw
  ``rgb8`` or ``jpeg``) and publishes an ``apt_msgs/ObservationRequest`` on ``<server>/request`` with this
  client's id, a new request id, its instruction epoch, the state and the RTC prefix.
* The server answers with an ``apt_msgs/ActionChunk`` on ``<server>/chunk`` carrying the client and request
  id. Answers to other clients or older requests are ignored.
* Latency is measured on this computer's monotonic clock from the first send of the request to the
  answer's arrival; the two computers' clocks are never compared.
* Lost packets: both topics are best effort (a late observation is worthless); a request not answered
  within ``resend_after`` (twice the recent median round trip, 30 ms at least) is sent again with the same
  id; the server answers a repeated request from its cache and never computes one twice. No answer within
  ``timeout_s`` raises InferenceError: the worker reports it, the controller holds (watchdog) and the next
  request starts afresh once the link is back.

The server describes its policy (PolicyInfo as JSON) on the latched ``<server>/info``; the constructor waits
for it (``connect_timeout_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from apt_policy.core.config import ActionSemantics
from apt_policy.runtime.observation_codec import encode_images
from apt_policy.runtime.policy import History, InferenceError, PolicyInfo

__all__ = [
    "CHUNK_QOS",
    "INFO_QOS",
    "REQUEST_QOS",
    "RemotePolicy",
    "info_from_json",
    "info_to_json",
    "topic",
]

# Requests and chunks: only the newest matters and a late one is worthless; losses are repaired by the
# client's resend (same request id), not by DDS retransmission, whose timing is the writer's heartbeat.
REQUEST_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
CHUNK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=4, reliability=ReliabilityPolicy.BEST_EFFORT)
# The server's PolicyInfo: a late-joining executor must get it, across loss.
INFO_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

MIN_RESEND_S = 0.03


def topic(server: str, name: str) -> str:
    """``<server>/<name>`` with ``server`` made absolute (``apt_inference`` -> ``/apt_inference``)."""
    return "/" + server.strip("/") + "/" + name


def info_to_json(info: PolicyInfo) -> str:
    return json.dumps(dataclasses.asdict(info))


def info_from_json(text: str) -> PolicyInfo:
    """A PolicyInfo from :func:`info_to_json`; ValueError for anything else."""
    try:
        data = json.loads(text)
        data["action_semantics"] = ActionSemantics(**data["action_semantics"])
        for key in ("cameras", "action_names", "state_names", "image_size"):
            data[key] = tuple(data[key])
        return PolicyInfo(**data)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not a policy description: {exc}") from None


class RemotePolicy:
    """A Policy whose ``predict`` runs on an inference node over DDS (see the module docstring)."""

    def __init__(
        self,
        server: str = "apt_inference",
        image_encoding: str = "jpeg",
        jpeg_quality: int = 90,
        timeout_s: float = 1.0,
        connect_timeout_s: float = 30.0,
        context: Context | None = None,
    ) -> None:
        self.server = server
        self.image_encoding = image_encoding
        self.jpeg_quality = int(jpeg_quality)
        self.timeout_s = float(timeout_s)
        self.client_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._cond = threading.Condition()
        self._answer: Any = None
        self._waiting_for = 0
        self._request_id = 0
        self._epoch = 0
        self._instruction: str | None = None
        self._info_text: str | None = None
        self._predict_lock = threading.Lock()
        self.round_trips_s: deque[float] = deque(maxlen=200)  # robot clock: first send -> answer
        self.request_bytes: deque[int] = deque(maxlen=200)  # serialised image bytes per observation
        self.split_overhead_s: deque[float] = deque(maxlen=200)  # round trip - server compute, per answer
        self.resends = 0
        self.timeouts = 0
        self.ignored_answers = 0
        from apt_msgs.msg import ActionChunk, ObservationRequest
        from std_msgs.msg import String

        self._request_type = ObservationRequest
        self._node = rclpy.create_node(
            "apt_remote_policy_" + self.client_id.rsplit("-", 1)[-1], context=context
        )
        self._pub = self._node.create_publisher(ObservationRequest, topic(server, "request"), REQUEST_QOS)
        self._node.create_subscription(ActionChunk, topic(server, "chunk"), self._on_chunk, CHUNK_QOS)
        self._node.create_subscription(String, topic(server, "info"), self._on_info, INFO_QOS)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self._node)
        self._spinner = threading.Thread(target=self._spin, name="apt-remote-policy", daemon=True)
        self._closed = False
        self._spinner.start()
        try:
            self._info = self._wait_for_info(connect_timeout_s)
        except BaseException:
            self.close()
            raise

    # -- Policy contract -----------------------------------------------------------------------------------

    @property
    def info(self) -> PolicyInfo:
        return self._info

    def warmup(self) -> None:
        """Wait until the server's request subscription is matched (the first request is not lost to
        discovery); the server warms its model up itself."""
        deadline = time.monotonic() + self.timeout_s * 10
        while self._pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise InferenceError(f"inference node {self.server!r}: its request topic has no subscriber")
            time.sleep(0.01)

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> np.ndarray:
        """(horizon, action_dim) actions from the inference node; InferenceError when none come in
        ``timeout_s`` or the server reports an error. ``history`` travels with the request for a stateful
        model (``info.history_steps`` > 0; None: an episode start); a stateless model ignores it."""
        info = self._info
        with self._predict_lock:
            t0 = time.monotonic()
            msg = self._request(images, state, instruction, noise, prefix)
            if history is not None and info.history_steps > 0:
                _put_history(msg, history, len(info.state_names), info.action_dim, info.history_steps)
            answer = self._exchange(msg)
            # What the split adds: encode + network both ways + decode, without the server's own compute
            # (a duration on its clock, never a time compared with ours).
            self.split_overhead_s.append(time.monotonic() - t0 - float(answer.inference_time_ms) * 1e-3)
        if answer.error:
            raise InferenceError(f"inference node {self.server!r}: {answer.error}")
        shape = (int(answer.horizon), int(answer.action_dim))
        actions = np.asarray(answer.actions, dtype=np.float32)
        if shape != (info.horizon, info.action_dim) or actions.size != shape[0] * shape[1]:
            raise InferenceError(
                f"inference node {self.server!r}: chunk of shape {shape}, {actions.size} values"
            )
        return actions.reshape(shape)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(timeout_sec=1.0)
        self._spinner.join(2.0)
        self._node.destroy_node()

    # -- internals -----------------------------------------------------------------------------------------

    def _request(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None,
        prefix: np.ndarray | None,
    ) -> Any:
        info = self._info
        encoded = encode_images(images, info.cameras, info.image_size, self.image_encoding, self.jpeg_quality)
        if instruction != self._instruction:
            self._instruction = instruction
            self._epoch += 1
        self._request_id += 1
        msg = self._request_type()
        now_ns = self._node.get_clock().now().nanoseconds
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        msg.client_id = self.client_id
        msg.request_id = self._request_id
        msg.epoch = self._epoch
        msg.instruction = instruction
        msg.camera_names = list(encoded.names)
        msg.image_encoding = encoded.encoding
        msg.image_height, msg.image_width = encoded.height, encoded.width
        msg.image_sizes = list(encoded.sizes)
        msg.image_data = encoded.data
        msg.state = np.asarray(state, dtype=np.float64).ravel().tolist()
        if prefix is not None and np.size(prefix) > 0:
            p = np.asarray(prefix, dtype=np.float32).reshape(-1, info.action_dim)
            msg.prefix_len = int(p.shape[0])
            msg.prefix = p.ravel().tolist()
        if noise is not None:
            msg.noise = np.asarray(noise, dtype=np.float32).ravel().tolist()
        self.request_bytes.append(encoded.nbytes)
        return msg

    def _resend_after(self) -> float:
        if not self.round_trips_s:
            return 0.1
        return min(max(MIN_RESEND_S, 2.0 * float(np.median(self.round_trips_s))), self.timeout_s / 3)

    def _exchange(self, msg: Any) -> Any:
        """Publish ``msg`` (again every resend interval) until its answer arrives or ``timeout_s`` passes."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        resend = self._resend_after()
        with self._cond:
            self._waiting_for = msg.request_id
            self._answer = None
        try:
            while True:
                self._pub.publish(msg)
                next_send = min(time.monotonic() + resend, deadline)
                with self._cond:
                    while self._answer is None and time.monotonic() < next_send:
                        self._cond.wait(max(0.0, next_send - time.monotonic()))
                    answer = self._answer
                if answer is not None:
                    self.round_trips_s.append(time.monotonic() - t0)
                    return answer
                if time.monotonic() >= deadline:
                    self.timeouts += 1
                    raise InferenceError(
                        f"inference node {self.server!r}: no chunk for request {msg.request_id} within "
                        f"{self.timeout_s * 1e3:.0f} ms"
                    )
                self.resends += 1
        finally:
            with self._cond:
                self._waiting_for = 0

    def _on_chunk(self, msg: Any) -> None:
        with self._cond:
            if msg.client_id != self.client_id or msg.request_id != self._waiting_for or not msg.request_id:
                if msg.client_id == self.client_id:
                    self.ignored_answers += 1  # a late or repeated answer to an older request
                return
            self._answer = msg
            self._cond.notify_all()

    def _on_info(self, msg: Any) -> None:
        with self._cond:
            self._info_text = msg.data
            self._cond.notify_all()

    def _wait_for_info(self, timeout_s: float) -> PolicyInfo:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._info_text is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InferenceError(
                        f"no inference node {self.server!r} found within {timeout_s:.0f} s (is it running, "
                        "on the same ROS_DOMAIN_ID, with a discovery range that reaches this computer?)"
                    )
                self._cond.wait(min(left, 0.1))
            text = self._info_text
        try:
            info = info_from_json(text)
        except ValueError as exc:
            raise InferenceError(f"inference node {self.server!r}: {exc}") from None
        return dataclasses.replace(info, backend=f"remote:{info.backend}")

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # shut down (context gone): nothing left to serve
            self._executor.spin()


def _put_history(msg: Any, history: History, state_dim: int, action_dim: int, steps: int) -> None:
    """Fill the request's history fields with the last ``steps`` rows (oldest first); InferenceError when
    the arrays do not fit together. The server's policy checks the rest (at least K steps, finite values)."""
    states = np.asarray(history.states, dtype=np.float32)
    actions = np.asarray(history.actions, dtype=np.float32)
    valid = np.asarray(history.valid, dtype=bool).reshape(-1)
    k = valid.size
    if states.shape != (k, state_dim) or actions.shape != (k, action_dim):
        raise InferenceError(
            f"history of states {states.shape} and actions {actions.shape} for {k} steps; the model takes "
            f"(K, {state_dim}) and (K, {action_dim})"
        )
    keep = slice(max(k - steps, 0), k)
    msg.history_steps = k - keep.start
    msg.history_states = states[keep].ravel().tolist()
    msg.history_actions = actions[keep].ravel().tolist()
    msg.history_valid = valid[keep].tolist()
