"""Streaming benchmark: how regularly do the node's commands reach the robot while inference runs?

    python -m apt_policy.bench.stream [--model DIR] [--rates 50 100 200] [--ticks 6000] [--json FILE]

For each rate, three processes on a private ROS domain: ``apt-fake-franka`` (records the receive time of
every command on the monotonic clock, ``arrival_log``), ``apt-fake-camera`` (640x480 rgb8 at 30 Hz) and
``apt-policy-node`` (``control_rate`` = the rate, ``output_mode`` joint_trajectory, an instruction set and
``chunk_request_threshold`` = horizon - 1 so inference runs back to back all the time). After the node is
RUNNING, ``--ticks`` commands are measured at fake_franka:

* achieved rate      (n - 1) / (t_last - t_first)
* jitter             |inter-arrival - period|: p50 / p99 / max (ms)
* missed ticks       round((t_last - t_first) / period) + 1 - n: commands that never arrived (a late one
                     followed by an early one is jitter, not a miss)
* gaps               inter-arrivals longer than 1.5 periods (the robot waited for a command)

Jitter is given three ways, all measured in the fake_franka process: when its command handler ran
(what a Python controller would see; includes its own reception delay), when its DDS layer
received each command (the RMW's reception timestamp: the stream as it reaches the robot's process,
without this Python process's own delay), and the sender's write time carried with each sample (the
node's publishing regularity). The delay from reception to the handler (p99 / max) is fake_franka's own.

The node's own view (loop lateness p99, ticks its loop skipped, inference p50) comes from its ~/status and
/diagnostics; its skipped ticks are counted from its last status before the window to its last one ~1 s
after it, so a skip just outside the window can show there and not at fake_franka.

Machine stalls: unless ``--no-probe``, ``apt_policy.bench.stall_probe`` runs beside the three processes
(one SCHED_FIFO 99 process per CPU waking every 5 ms: any stall of 7 ms or more is seen, and a missed tick
needs one of 10 ms; 3 interleaved pairs of runs with and without it differed no more than runs do). Its
wake-ups later than 2 ms during the window are machine stalls (on a VM usually the hypervisor taking a
virtual CPU); a gap at fake_franka with such a stall in its late part coincided with one, a gap without was
the software's own or fell between the probe's wake-ups.

Model: ``--model`` or the cached demo export (``apt_policy.demo.model_cache``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TRAJECTORY_TOPIC = "/fr3_arm_controller/joint_trajectory"
PROBE_PERIOD_MS = 5.0  # the stall probe's wake-up period (see the module docstring)


@dataclass
class StreamResult:
    """Figures for one rate, measured at the receiver (fake_franka) unless named node_*."""

    rate_hz: float
    commands: int
    achieved_hz: float
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    missed_ticks: int
    gaps: int
    node_lateness_p99_ms: float
    node_missed_ticks: int  # skipped by the node's loop from just before the window to ~1 s after it
    node_tick_compute_p99_ms: float
    inference_p50_ms: float
    chunks: int
    # The same commands timed by the RMW in fake_franka (system clock): on reception by its DDS layer,
    # i.e. without its Python executor's delay, and at the sender's write (the node's publish times).
    dds_jitter_p50_ms: float = float("nan")
    dds_jitter_p99_ms: float = float("nan")
    dds_jitter_max_ms: float = float("nan")
    sent_jitter_p99_ms: float = float("nan")
    sent_jitter_max_ms: float = float("nan")
    # fake_franka's own delay from DDS reception to its command handler (system clock both): p99 / max
    handler_delay_p99_ms: float = float("nan")
    handler_delay_max_ms: float = float("nan")
    node_send_lateness_p99_ms: float = float("nan")  # the node's send time - deadline (its own clock)
    # The stall probe (apt_policy.bench.stall_probe) during the measured window: wake-ups of a SCHED_FIFO 99
    # process per CPU later than its threshold (machine stalls), and how many of the gaps > 1.5 periods at
    # fake_franka had such a stall during their late part. NaN / -1: no probe.
    machine_stalls: int = -1
    machine_stall_max_ms: float = float("nan")
    gaps_with_machine_stall: int = -1


def gaps_with_stall(times: np.ndarray, period: float, stalls: list[tuple[float, float]]) -> tuple[int, int]:
    """(gaps longer than 1.5 ``period`` in ``times``, how many of them overlap a stall (start, length) during
    their late part: from one period after the previous arrival to the late arrival)."""
    from apt_policy.bench.stall_probe import stalls_overlapping

    times = np.asarray(times, dtype=np.float64)
    late = np.flatnonzero(np.diff(times) > 1.5 * period)
    hit = sum(1 for i in late if stalls_overlapping(stalls, times[i] + period, times[i + 1]))
    return int(late.size), hit


def arrival_stats(times: np.ndarray, period: float) -> dict[str, float]:
    """Receiver-side figures of a command stream with nominal ``period`` (s); ``times`` monotonic seconds."""
    times = np.asarray(times, dtype=np.float64)
    if times.size < 2:
        raise ValueError("need at least two arrivals")
    gaps = np.diff(times)
    jitter = np.abs(gaps - period) * 1e3
    expected = round((times[-1] - times[0]) / period) + 1
    missed = max(0, int(expected - times.size))
    return {
        "commands": int(times.size),
        "achieved_hz": float((times.size - 1) / (times[-1] - times[0])),
        "jitter_p50_ms": float(np.percentile(jitter, 50)),
        "jitter_p99_ms": float(np.percentile(jitter, 99)),
        "jitter_max_ms": float(jitter.max()),
        "missed_ticks": missed,
        "gaps": int(np.sum(gaps > 1.5 * period)),
    }


class _Watcher:
    """In-process rclpy subscriber to the node's status and diagnostics (own context, own thread)."""

    def __init__(self) -> None:
        import threading

        import rclpy
        from apt_msgs.msg import PolicyStatus
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx)
        self.node = rclpy.create_node("bench_stream_watcher", context=self._ctx)
        self.status = None
        self.diag: dict[str, str] = {}
        self.node.create_subscription(PolicyStatus, "/apt_policy/status", self._on_status, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _on_status(self, msg) -> None:
        self.status = msg

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if "apt_policy" in st.name:
                self.diag = {kv.key: kv.value for kv in st.values}

    def close(self) -> None:
        import rclpy

        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
        self._thread.join(2)


def _exe(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_rate(
    model: Path,
    rate: float,
    ticks: int,
    horizon: int,
    workdir: Path,
    domain: int,
    rt_priority: int = 0,
    publish_lead: float | None = None,
    robot_priority: int = 0,
    probe_priority: int | None = 99,
    record: Path | None = None,
) -> StreamResult:
    """Run the three processes at ``rate`` and measure ``ticks`` commands at fake_franka; with
    ``probe_priority`` (not None) the stall probe runs beside them at that SCHED_FIFO priority; with
    ``record`` (a bag directory to create) ``apt-record`` records every default topic beside them."""
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(domain),
        "ROS_LOG_DIR": str(workdir / "ros_log"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    arrivals = workdir / f"arrivals_{rate:g}.json"
    stalls_file = workdir / f"stalls_{rate:g}.json"
    logs = {name: (workdir / f"{name}_{rate:g}.log").open("wb") for name in ("franka", "camera", "node")}
    procs = [
        subprocess.Popen(
            [
                _exe("apt-fake-franka"), "--ros-args",
                "-p", f"arrival_log:={arrivals}",
                "-p", f"realtime_priority:={robot_priority}",
            ],
            env=env, stdout=logs["franka"], stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [_exe("apt-fake-camera"), "--ros-args", "-p", "scene_seed:=3"],
            env=env, stdout=logs["camera"], stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                _exe("apt-policy-node"), "--ros-args",
                "-p", f"model:={model}",
                "-p", f"control_rate:={float(rate)}",
                "-p", "instruction:=reach the red block",
                "-p", f"chunk_request_threshold:={horizon - 1}",
                "-p", "inference_timeout:=5.0",
                "-p", "max_image_age:=0.5",
                "-p", "max_state_age:=0.2",
                "-p", "max_skew:=0.5",
                "-p", f"realtime_priority:={rt_priority}",
                *(["-p", f"publish_lead:={publish_lead}"] if publish_lead is not None else []),
            ],
            env=env, stdout=logs["node"], stderr=subprocess.STDOUT,
        ),
    ]  # fmt: skip
    if record is not None:
        recorder = [sys.executable, "-m", "apt_policy.recording", "--ros-args", "-p", f"output:={record}"]
        procs.append(
            subprocess.Popen(
                recorder,
                env=env,
                stdout=logs.setdefault("recorder", (workdir / f"recorder_{rate:g}.log").open("ab")),
                stderr=subprocess.STDOUT,
            )
        )
    if probe_priority is not None:
        probe_cmd = [sys.executable, "-m", "apt_policy.bench.stall_probe", "--out", str(stalls_file)]
        probe_cmd += ["--priority", str(probe_priority), "--period-ms", str(PROBE_PERIOD_MS)]
        procs.append(subprocess.Popen(probe_cmd, env=env))
    watcher = _Watcher()
    try:
        deadline = time.monotonic() + 120
        while watcher.status is None or watcher.status.chunks_produced < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"node did not start streaming; see logs in {workdir}")
            time.sleep(0.2)
        t_start = time.monotonic()
        node_missed_before = int(watcher.status.missed_ticks)
        duration = ticks / rate
        end = t_start + duration + 1.0
        while time.monotonic() < end:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a process exited during the run; see logs in {workdir}")
            time.sleep(0.2)
        status, diag = watcher.status, dict(watcher.diag)
    finally:
        watcher.close()
        _stop(procs)
        for f in logs.values():
            f.close()
    data = json.loads(arrivals.read_text())
    times = np.array(data["topics"][TRAJECTORY_TOPIC])
    window = np.flatnonzero(times >= t_start)[:ticks]
    stats = arrival_stats(times[window], 1.0 / rate)
    rmw: dict[str, float | int] = {}
    received = np.array(data.get("received", {}).get(TRAJECTORY_TOPIC, []))
    sent = np.array(data.get("sent", {}).get(TRAJECTORY_TOPIC, []))
    if received.size == times.size and sent.size == times.size and np.all(received[window] > 0):
        dds = arrival_stats(received[window], 1.0 / rate)
        at_sender = arrival_stats(sent[window], 1.0 / rate)
        rmw = {
            "dds_jitter_p50_ms": dds["jitter_p50_ms"],
            "dds_jitter_p99_ms": dds["jitter_p99_ms"],
            "dds_jitter_max_ms": dds["jitter_max_ms"],
            "sent_jitter_p99_ms": at_sender["jitter_p99_ms"],
            "sent_jitter_max_ms": at_sender["jitter_max_ms"],
        }
    handled = np.array(data.get("handled", {}).get(TRAJECTORY_TOPIC, []))
    if handled.size == times.size and received.size == times.size:
        delay = (handled[window] - received[window]) * 1e3
        rmw["handler_delay_p99_ms"] = float(np.percentile(delay, 99))
        rmw["handler_delay_max_ms"] = float(delay.max())
    if stalls_file.exists():
        from apt_policy.bench.stall_probe import load, stalls_overlapping

        stalls = [stall for cpu in load(stalls_file) for stall in cpu.stalls]
        measured = stalls_overlapping(stalls, times[window][0], times[window][-1])
        _, hit = gaps_with_stall(times[window], 1.0 / rate, stalls)
        rmw["machine_stalls"] = len(measured)
        rmw["machine_stall_max_ms"] = max((n * 1e3 for _, n in measured), default=0.0)
        rmw["gaps_with_machine_stall"] = hit

    def num(key: str) -> float:
        try:
            return float(diag[key])
        except (KeyError, ValueError):
            return float("nan")

    return StreamResult(
        rate_hz=rate,
        node_lateness_p99_ms=num("tick_lateness_p99_ms"),
        node_send_lateness_p99_ms=num("send_lateness_p99_ms"),
        node_missed_ticks=int(status.missed_ticks) - node_missed_before,
        node_tick_compute_p99_ms=num("tick_compute_p99_ms"),
        inference_p50_ms=float(status.inference_latency_p50_ms),
        chunks=int(status.chunks_produced),
        **stats,
        **rmw,
    )


def format_table(results: list[StreamResult]) -> str:
    head = (
        "| rate (Hz) | commands | achieved (Hz) | jitter p50 (ms) | jitter p99 (ms) | jitter max (ms) "
        "| missed | gaps > 1.5T | node lateness p99 (ms) | node send lateness p99 (ms) | node tick p99 (ms) "
        "| inference p50 (ms) | chunks | node missed "
        "| at DDS reception: jitter p50 / p99 / max (ms) | at the sender: jitter p99 / max (ms) "
        "| reception to handler: p99 / max (ms) "
        "| machine stalls: count / max (ms) | gaps with a machine stall |"
    )
    rows = [head, "|" + "---|" * 19]
    for r in results:
        rows.append(
            f"| {r.rate_hz:g} | {r.commands} | {r.achieved_hz:.2f} | {r.jitter_p50_ms:.3f} | "
            f"{r.jitter_p99_ms:.3f} | {r.jitter_max_ms:.2f} | {r.missed_ticks} | {r.gaps} | "
            f"{r.node_lateness_p99_ms:.3f} | {r.node_send_lateness_p99_ms:.3f} | "
            f"{r.node_tick_compute_p99_ms:.3f} | {r.inference_p50_ms:.1f} | {r.chunks} | "
            f"{r.node_missed_ticks} | "
            f"{r.dds_jitter_p50_ms:.3f} / {r.dds_jitter_p99_ms:.3f} / {r.dds_jitter_max_ms:.2f} | "
            f"{r.sent_jitter_p99_ms:.3f} / {r.sent_jitter_max_ms:.2f} | "
            f"{r.handler_delay_p99_ms:.3f} / {r.handler_delay_max_ms:.2f} | "
            + (
                f"{r.machine_stalls} / {r.machine_stall_max_ms:.1f} | "
                f"{r.gaps_with_machine_stall} of {r.gaps} |"
                if r.machine_stalls >= 0
                else "no probe | - |"
            )
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="exported model dir (default: the cached demo export)")
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 100.0, 200.0], help="rates (Hz)")
    parser.add_argument("--ticks", type=int, default=6000, help="commands measured per rate (default 6000)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--realtime-priority",
        type=int,
        default=0,
        help="node parameter realtime_priority (SCHED_FIFO, 0: off)",
    )
    parser.add_argument(
        "--publish-lead",
        type=float,
        default=None,
        help="node parameter publish_lead (fraction of a period; default: the node's default)",
    )
    parser.add_argument(
        "--robot-priority",
        type=int,
        default=0,
        help="fake_franka parameter realtime_priority (SCHED_FIFO for all its threads, 0: off)",
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="do not run the stall probe (machine stall attribution)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the process logs (printed path)")
    parser.add_argument(
        "--record-pairs",
        type=int,
        default=0,
        help="per rate, N interleaved pairs of runs without / with apt-record recording every default"
        " topic beside the node (order alternating); prints the p99 jitter of each run and the differences",
    )
    args = parser.parse_args(argv)
    if args.ticks < 10:
        parser.error("--ticks must be >= 10")

    from apt_policy.runtime.manifest import load_manifest

    if args.model is None:
        from apt_policy.demo.model_cache import ensure_demo_export

        args.model = ensure_demo_export()
    horizon = int(load_manifest(args.model, verify=False).config["horizon"])
    workdir = Path(tempfile.mkdtemp(prefix="apt_bench_stream_"))
    if args.record_pairs:
        return _record_pairs(args, horizon, workdir)
    results = []
    for i, rate in enumerate(args.rates):
        print(
            f"[bench_stream] {rate:g} Hz: {args.ticks} commands (~{args.ticks / rate:.0f} s) ...", flush=True
        )
        domain = 1 + (os.getpid() + 17 * i) % 100
        results.append(
            run_rate(
                args.model,
                rate,
                args.ticks,
                horizon,
                workdir,
                domain,
                args.realtime_priority,
                args.publish_lead,
                args.robot_priority,
                None if args.no_probe else 99,
            )
        )
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(
        f"model {args.model} | {os.cpu_count()} CPUs | load average {os.getloadavg()[0]:.1f} (1 min) | "
        f"stream SCHED_FIFO priority {args.realtime_priority or 'off'} | publish_lead "
        f"{'node default' if args.publish_lead is None else args.publish_lead} | fake_franka SCHED_FIFO "
        f"priority {args.robot_priority or 'off'}"
    )
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.keep:
        print(f"logs in {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _record_pairs(args: argparse.Namespace, horizon: int, workdir: Path) -> int:
    """--record-pairs: off/on pairs per rate, in alternating order (off-on, on-off, ...)."""
    rows = []
    for i, rate in enumerate(args.rates):
        for pair in range(args.record_pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            runs: dict[bool, StreamResult] = {}
            for k, on in enumerate(order):
                domain = 1 + (os.getpid() + 17 * i + 5 * pair + 2 * k) % 100
                bag = workdir / f"bag_{rate:g}_{pair}" if on else None
                print(
                    f"[bench_stream] {rate:g} Hz pair {pair + 1} recorder {'on' if on else 'off'} ...",
                    flush=True,
                )
                runs[on] = run_rate(
                    args.model, rate, args.ticks, horizon, workdir, domain, args.realtime_priority,
                    args.publish_lead, args.robot_priority, None if args.no_probe else 99, bag,
                )  # fmt: skip
            size = sum(p.stat().st_size for p in (workdir / f"bag_{rate:g}_{pair}").iterdir())
            rows.append(
                (rate, pair + 1, "off-on" if order[0] is False else "on-off", runs[False], runs[True], size)
            )
    print(f"\n{os.cpu_count()} CPUs | load average {os.getloadavg()[0]:.1f} | {args.ticks} commands per run")
    print(
        "| rate (Hz) | pair | order | jitter p99 off (ms) | jitter p99 on (ms) | on - off (ms) "
        "| jitter p50 off / on (ms) | missed off / on | bag (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate, pair, order, off, on, size in rows:
        print(
            f"| {rate:g} | {pair} | {order} | {off.jitter_p99_ms:.3f} | {on.jitter_p99_ms:.3f} | "
            f"{on.jitter_p99_ms - off.jitter_p99_ms:+.3f} | "
            f"{off.jitter_p50_ms:.3f} / {on.jitter_p50_ms:.3f} | "
            f"{off.missed_ticks} / {on.missed_ticks} | {size / 1e6:.1f} |"
        )
    deltas = [on.jitter_p99_ms - off.jitter_p99_ms for *_, off, on, _ in rows]
    print(f"p99 difference on - off: median {np.median(deltas):+.3f} ms, mean {np.mean(deltas):+.3f} ms")
    if args.json:
        args.json.write_text(
            json.dumps([{"rate": r, "pair": p, "order": o, "off": asdict(a), "on": asdict(b), "bag_bytes": n}
                        for r, p, o, a, b, n in rows], indent=2)
        )  # fmt: skip
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
