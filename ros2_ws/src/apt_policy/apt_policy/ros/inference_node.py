"""The inference node (``apt-inference-node``), the GPU host's side of remote inference.

It loads the model like the policy node does (a child process, ``inference_process``), describes it on the
latched ``~/info`` (PolicyInfo as JSON), and answers every ``apt_msgs/ObservationRequest`` on ``~/request``
with an ``apt_msgs/ActionChunk`` on ``~/chunk`` that carries the request's client and request id (an
``error`` instead of actions when the request was malformed or the model failed). It decides nothing about
the arm: the executor (the policy node with ``backend: remote``, ros/remote_policy.py) does.

Serving: one prediction at a time on the ``apt-serve`` thread; per client only the newest request waits
(an older one is dropped and counted), a request of an older instruction epoch than that client's last is
dropped, and a repeated request (the client resends when an answer is late or lost) is answered again from
the cache without computing it twice. ``simulated_latency`` (simulation only) delays each answer to a
latency profile: the executor cannot tell it from network delay.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node

from apt_policy.ros.remote_policy import CHUNK_QOS, INFO_QOS, REQUEST_QOS, info_to_json
from apt_policy.ros.spin import spin_node
from apt_policy.runtime.observation_codec import ImageCodecError, decode_images
from apt_policy.runtime.policy import History, Policy

NODE_NAME = "apt_inference"


class RequestError(ValueError):
    """A request that cannot be served (the message says why); answered with ``error``."""


@dataclass
class ClientState:
    """What the server remembers about one executor."""

    epoch: int = 0
    pending: Any = None  # the newest request not yet served
    answered_id: int = 0
    answer: Any = None  # the chunk sent for answered_id (resent on a repeated request)
    busy_id: int = 0  # request being computed


@dataclass
class ServerStats:
    served: int = 0
    repeated: int = 0
    superseded: int = 0
    stale_epoch: int = 0
    errors: int = 0
    compute_s: list[float] = field(default_factory=list)


class InferenceNode(Node):
    """Serves a Policy to executors over DDS (see the module docstring). ``policy`` may be injected."""

    def __init__(self, policy: Policy | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        model = str(self.declare_parameter("model", "").value)
        backend = str(self.declare_parameter("backend", "auto").value)
        in_process = bool(self.declare_parameter("inference_process", True).value)
        threads = int(self.declare_parameter("inference_threads", 0).value)
        restarts = int(self.declare_parameter("inference_restarts", 3).value)
        latency = str(self.declare_parameter("simulated_latency", "").value)
        seed = int(self.declare_parameter("simulated_latency_seed", -1).value)
        self._owns_policy = policy is None
        if policy is None:
            if not model or not Path(model).expanduser().is_dir():
                raise ValueError(f"parameter 'model': directory {model!r} does not exist")
            policy = _load(Path(model).expanduser(), backend, in_process, threads, restarts)
        if latency:
            from apt_policy.runtime.latency import SimulatedLatencyPolicy, parse_latency

            profile = parse_latency(latency)
            self.get_logger().warning(f"SIMULATION ONLY: every answer is delayed to {profile.describe()}")
            policy = SimulatedLatencyPolicy(policy, profile, seed=None if seed < 0 else seed)
        self.policy = policy
        self.policy.warmup()
        self.info = policy.info
        from apt_msgs.msg import ActionChunk, ObservationRequest
        from std_msgs.msg import String

        self._chunk_type = ActionChunk
        self._chunk_pub = self.create_publisher(ActionChunk, "~/chunk", CHUNK_QOS)
        self._info_pub = self.create_publisher(String, "~/info", INFO_QOS)
        self._cond = threading.Condition()
        self._peers: dict[str, ClientState] = {}
        self._stopping = False
        self.stats = ServerStats()
        self.create_subscription(ObservationRequest, "~/request", self._on_request, REQUEST_QOS)
        self._info_pub.publish(String(data=info_to_json(self.info)))
        self._thread = threading.Thread(target=self._serve, name="apt-serve", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"serving {self.info.model_id} ({self.info.backend}) on "
            f"{self.resolve_topic_name('~/request')} -> "
            f"{self.resolve_topic_name('~/chunk')}: cameras {list(self.info.cameras)} at "
            f"{self.info.image_size[0]}x{self.info.image_size[1]}, horizon {self.info.horizon}"
        )

    # -- executor thread -----------------------------------------------------------------------------------

    def _on_request(self, msg: Any) -> None:
        with self._cond:
            client = self._peers.setdefault(msg.client_id, ClientState())
            if msg.epoch < client.epoch:
                self.stats.stale_epoch += 1
                return
            client.epoch = int(msg.epoch)
            if client.pending is not None and client.pending.request_id != msg.request_id:
                self.stats.superseded += 1
            client.pending = msg
            self._cond.notify_all()

    # -- serving thread ------------------------------------------------------------------------------------

    def _next(self) -> tuple[ClientState, Any] | None:
        with self._cond:
            while not self._stopping:
                for client in self._peers.values():
                    if client.pending is not None:
                        msg, client.pending = client.pending, None
                        return client, msg
                self._cond.wait(0.5)
        return None

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            client, msg = item
            if msg.request_id == client.answered_id and client.answer is not None:
                self.stats.repeated += 1
                self._chunk_pub.publish(client.answer)  # the first answer was lost or is late
                continue
            if msg.request_id <= client.answered_id or msg.request_id == client.busy_id:
                continue  # an older request, or a resend of the one being computed
            client.busy_id = int(msg.request_id)
            answer = self._answer(msg)
            with self._cond:
                client.busy_id = 0
                client.answered_id, client.answer = int(msg.request_id), answer
            self._chunk_pub.publish(answer)

    def _answer(self, msg: Any) -> Any:
        out = self._chunk_type()
        out.header.stamp = msg.header.stamp  # the robot's observation stamp, echoed (never compared here)
        out.client_id, out.request_id, out.instruction = msg.client_id, msg.request_id, msg.instruction
        out.action_names = list(self.info.action_names)
        out.dt = float(self.info.dt)
        out.backend = self.info.backend
        t0 = time.monotonic()
        try:
            images, state, prefix, noise = self._inputs(msg)
            history = self._history(msg)
            actions = self.policy.predict(
                images, state, msg.instruction, noise, prefix=prefix, history=history
            )
            actions = np.asarray(actions, dtype=np.float32)
            if actions.shape != (self.info.horizon, self.info.action_dim) or not np.all(np.isfinite(actions)):
                raise RequestError(f"the model returned {actions.shape} actions, not finite or not the shape")
        except (
            Exception
        ) as exc:  # every failure is answered: the executor holds at once instead of timing out
            self.stats.errors += 1
            out.error = f"{type(exc).__name__}: {exc}"[:1000]
            self.get_logger().warning(
                f"request {msg.request_id} of {msg.client_id}: {out.error}", throttle_duration_sec=2.0
            )
            return out
        elapsed = time.monotonic() - t0
        self.stats.served += 1
        self.stats.compute_s.append(elapsed)
        del self.stats.compute_s[:-1000]
        out.horizon, out.action_dim = actions.shape
        out.actions = actions.ravel().tolist()
        out.inference_time_ms = float(elapsed * 1e3)
        return out

    def _inputs(
        self, msg: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, np.ndarray | None]:
        info = self.info
        try:
            images = decode_images(
                msg.image_encoding,
                msg.image_height,
                msg.image_width,
                list(msg.camera_names),
                list(msg.image_sizes),
                np.asarray(msg.image_data, dtype=np.uint8)
                if not isinstance(msg.image_data, bytes)
                else msg.image_data,
                info.cameras,
                info.image_size,
            )
        except ImageCodecError as exc:
            raise RequestError(str(exc)) from None
        state = np.asarray(msg.state, dtype=np.float64)
        if state.shape != (len(info.state_names),) or not np.all(np.isfinite(state)):
            raise RequestError(
                f"state has {state.size} values (finite?), the model takes {len(info.state_names)}"
            )
        prefix = None
        if msg.prefix_len:
            p = np.asarray(msg.prefix, dtype=np.float64)
            if p.size != msg.prefix_len * info.action_dim or msg.prefix_len > info.horizon:
                raise RequestError(
                    f"prefix of {p.size} values for {msg.prefix_len} rows of {info.action_dim}"
                )
            prefix = p.reshape(msg.prefix_len, info.action_dim)
        noise = None
        if len(msg.noise):
            noise = np.asarray(msg.noise, dtype=np.float32)
            if noise.size != info.horizon * info.action_dim:
                raise RequestError(
                    f"noise of {noise.size} values, the model takes {info.horizon} x {info.action_dim}"
                )
            noise = noise.reshape(info.horizon, info.action_dim)
        return images, state, prefix, noise

    def _history(self, msg: Any) -> History | None:
        """The request's history (None: none sent, or a stateless model); RequestError when its fields do
        not fit together. What the policy needs of it (at least K steps, finite where valid) it checks
        itself, as for a local caller."""
        k = int(msg.history_steps)
        if k == 0 or self.info.history_steps == 0:
            return None
        sd, ad = len(self.info.state_names), self.info.action_dim
        states = np.asarray(msg.history_states, dtype=np.float32)
        actions = np.asarray(msg.history_actions, dtype=np.float32)
        valid = np.asarray(msg.history_valid, dtype=bool)
        if states.size != k * sd or actions.size != k * ad or valid.size != k:
            raise RequestError(
                f"history of {k} steps with {states.size} state values, {actions.size} action values and"
                f" {valid.size} flags; the model takes {sd} and {ad} values per step"
            )
        return History(states.reshape(k, sd), actions.reshape(k, ad), valid)

    # -- shutdown ------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5.0)
        close = getattr(self.policy, "close", None)
        if close is not None and self._owns_policy:
            close()
        compute = np.asarray(self.stats.compute_s) * 1e3
        p50 = float(np.median(compute)) if compute.size else float("nan")
        self.get_logger().info(
            f"served {self.stats.served} requests (compute p50 {p50:.1f} ms), "
            f"{self.stats.repeated} repeated, "
            f"{self.stats.superseded} superseded, {self.stats.stale_epoch} of an old epoch, "
            f"{self.stats.errors} errors"
        )


def _load(path: Path, backend: str, in_process: bool, threads: int, restarts: int) -> Policy:
    from apt_policy.runtime.load import detect_kind, load_policy

    options: dict[str, Any] = {}
    if backend == "onnxruntime" or (backend == "auto" and detect_kind(path) == "onnx"):
        options = {"intra_op_threads": threads}
    if in_process:
        from apt_policy.runtime.process_policy import RestartingProcessPolicy

        return RestartingProcessPolicy(path, backend, max_restarts=restarts, **options)
    return load_policy(path, backend, **options)


def main(args: list[str] | None = None) -> int:
    """Entry point (``apt-inference-node``, ``ros2 run apt_policy inference_node``)."""
    return spin_node(InferenceNode, "apt_inference", args, parameter_errors=(ValueError,), report_errors=True)


if __name__ == "__main__":
    sys.exit(main())
