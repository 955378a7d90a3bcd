"""Real network faults at the two DDS boundaries of a deployment, over network namespaces (sim.netns).

* ``inference`` boundary: the inference node (``apt-inference-node``, simulated delay and jitter from a
  latency profile) in namespace A; the executor (the policy node with ``backend: remote``), fake_franka and
  fake_camera in namespace B.
* ``arm`` boundary: fake_franka (the arm's controller) in namespace A; the policy node (model in its own
  process, as usual) and fake_camera in B.

Each case makes a fresh veth link, runs the cell (``bench.rig.Rig``) inside namespace B (this module re-runs
itself there: ``python -m apt_policy.bench.split --inside ...``), waits for RUNNING, then injects packet loss
(iptables ``statistic`` on both sides) and / or cuts the link for a while, and reports like ``make faults``:
unsafe commands (fake_franka's contract violations: must be 0), time to hold after the cut, time to recover
after the link is back, and the request-to-chunk latency the executor measured on its own clock.

    python -m apt_policy.bench.split [--model DIR] [--cases a,b] [--out bench_out/split.md]
    python -m apt_policy.bench.split --model EXPORT --demo OUT [--latency fixed:50:10] [--loss 0.02]
    python -m apt_policy.bench.split --model EXPORT --loopback 200   (bytes per observation, added latency)

Needs root, iproute2 and iptables (``sim.netns.unavailable`` says what is missing; cases are then skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from apt_policy.bench.faults import NOT_RUNNING, RUNNING, Outcome, format_table
from apt_policy.bench.rig import Rig
from apt_policy.sim.netns import NetnsLink, dds_env, unavailable

INFERENCE_TIMEOUT_S = 1.0  # the executor's inference_timeout in these cases
# config/sim.yaml's margins for the simulated arm (its first-order tracking lags more than an FR3's)
SIM_ARM_MARGINS = ("-p", "max_deviation:=0.5", "-p", "max_tracking_error:=0.3")
# fake_franka's kinds caused by when a command arrived, not by what it says: on a loaded machine a starved
# process delivers late whatever the network does (issue 17's timing class). Counted in unsafe_commands and
# also reported apart (Outcome.timing_violations), so a test can tell them from the link's effects.
TIMING_VIOLATIONS = ("too_fast", "ends_in_past")


@dataclass(frozen=True)
class SplitCase:
    name: str
    expected: str
    boundary: str  # "inference" or "arm"
    latency: str = ""  # inference side: a runtime.latency profile (delay + jitter)
    loss: float = 0.0  # share of packets dropped on arrival in each namespace
    cut_s: float = 0.0  # link down for this long (0: no cut)
    run_s: float = 6.0  # observation time with the loss (no cut)

    @property
    def hold(self) -> bool:
        return self.cut_s > 0


# Link to the inference node cut: the executor finishes the chunk it has (computed before the cut) and holds
# when it runs out, or when the pending request is older than inference_timeout, whichever comes first.
HOLD_BOUND = "the executing chunk's length (horizon x dt) + 0.25 s"
HOLD_SLACK_S = 0.25  # status is published on every state change; two stream periods and the probe's receive
CASES: tuple[SplitCase, ...] = (
    SplitCase("split_delay_0", "inference across the link, no added delay: RUNNING, 0 unsafe", "inference"),
    SplitCase("split_delay_20", "20 ms +- 5 ms added delay: RUNNING, 0 unsafe", "inference", "fixed:20:5"),
    SplitCase("split_delay_50", "50 ms +- 10 ms added delay: RUNNING, 0 unsafe", "inference", "fixed:50:10"),
    SplitCase("split_loss_1", "1 % packet loss, 20 ms delay: RUNNING, 0 unsafe", "inference", "fixed:20:5",
              loss=0.01),
    SplitCase("split_loss_5", "5 % packet loss, 20 ms delay: RUNNING, 0 unsafe", "inference", "fixed:20:5",
              loss=0.05),
    SplitCase("split_link_down", f"link to the inference node down 2 s: HOLD within {HOLD_BOUND}; RUNNING "
              "again after it is back; 0 unsafe", "inference", "fixed:20:5", cut_s=2.0),
    SplitCase("arm_dds_loss", "5 % packet loss between node and arm: 0 unsafe, no FAULT", "arm", loss=0.05),
    SplitCase("arm_link_down", "link between node and arm down 2 s: HOLD within the joint-state watchdog "
              "(max_state_age) + a period; RUNNING again after it is back; 0 unsafe", "arm", cut_s=2.0),
)  # fmt: skip
BY_NAME = {c.name: c for c in CASES}


def run(case: SplitCase, model: Path, workdir: Path, timeout_s: float = 240.0) -> Outcome:
    """Run ``case`` in a fresh pair of namespaces; an Outcome (``observed`` says why when it could not)."""
    outcome = Outcome(case.name, case.expected)
    problem = unavailable()
    if problem is not None:
        outcome.observed = f"skipped: {problem}"
        return outcome
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "outcome.json"
    with NetnsLink() as link:
        cmd = link.command(
            link.b,
            [
                sys.executable, "-m", "apt_policy.bench.split", "--inside", "--cases", case.name,
                "--model", str(model), "--workdir", str(workdir), "--link", json.dumps(link.describe()),
            ],
        )  # fmt: skip
        with (workdir / "inside.log").open("wb") as log:
            try:
                subprocess.run(cmd, env=link.env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                outcome.observed = f"case error: no result within {timeout_s:.0f} s (logs: {workdir})"
                return outcome
    try:
        return Outcome(**json.loads(result.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        outcome.observed = f"case error: no result ({exc}); logs: {workdir}"
        return outcome


def run_inside(case: SplitCase, model: Path, workdir: Path, link: NetnsLink) -> Outcome:
    """The case itself, in namespace B (see the module docstring)."""
    outcome = Outcome(case.name, case.expected)
    env = dds_env()
    here = link.command(link.a, [])
    server = None
    node_args = ["-p", f"inference_timeout:={INFERENCE_TIMEOUT_S}", *SIM_ARM_MARGINS]
    prefix: dict[str, list[str]] = {}
    if case.boundary == "inference":
        server_args = [
            sys.executable, "-m", "apt_policy.ros.inference_node", "--ros-args", "-p", f"model:={model}",
            "-p", "inference_threads:=1",
        ]  # fmt: skip
        if case.latency:
            server_args += ["-p", f"simulated_latency:={case.latency}"]
        node_args += ["-p", "backend:=remote", "-p", "remote_connect_timeout:=120.0"]
    else:
        prefix = {"franka": here}
    rig = Rig(model, workdir, node_args, model_env=env, prefix=prefix)
    try:
        if case.boundary == "inference":
            with (workdir / "inference_node.log").open("ab") as log:
                server = subprocess.Popen(
                    [*here, *server_args], env=rig.env, stdout=log, stderr=subprocess.STDOUT
                )
        rig.wait_streaming()
        if not rig.probe.wait_state((RUNNING,), 60.0):
            outcome.observed = f"never RUNNING before the fault (state {rig.probe.state()})"
            return outcome
        time.sleep(1.0)
        before = rig.probe.total_violations()
        timing_before = _timing(rig)
        chunks_before = int(rig.probe.status.chunks_produced)
        link.set_loss(case.loss)
        t = time.monotonic()
        if case.cut_s > 0:
            link.link_down()
            time.sleep(case.cut_s)
            outcome.time_to_hold_s = rig.probe.first_state_after(t, NOT_RUNNING)
            link.link_up()
            t_clear = time.monotonic()
            if rig.probe.wait_state((RUNNING,), 30.0):
                when = rig.probe.first_state_after(t_clear, (RUNNING,))
                outcome.time_to_recover_s = when if when is not None else 0.0
            time.sleep(1.0)
        else:
            time.sleep(case.run_s)
            hold = rig.probe.first_state_after(t, NOT_RUNNING)
            outcome.notes.append("never left RUNNING" if hold is None else f"left RUNNING after {hold:.2f} s")
        status = rig.probe.status
        if case.cut_s > 0 and outcome.time_to_hold_s is not None:
            bound = _hold_bound_s(case, model)
            outcome.notes.append(f"hold bound {bound:.2f} s")
            if outcome.time_to_hold_s > bound:
                outcome.observed = f"held {outcome.time_to_hold_s:.2f} s after the cut, bound {bound:.2f} s; "
        dropped = link.dropped(link.a) + link.dropped(link.b)
        link.set_loss(0.0)
        time.sleep(1.5)  # the next violations report (1 Hz), now without loss
        outcome.unsafe_commands = rig.probe.total_violations() - before
        outcome.timing_violations = _timing(rig) - timing_before
        outcome.notes.append(
            f"request-to-chunk on the robot's clock p50 {status.inference_latency_p50_ms:.1f} ms, p99 "
            f"{status.inference_latency_p99_ms:.1f} ms; "
            f"{int(status.chunks_produced) - chunks_before} chunks; "
            f"{dropped} packets dropped"
        )
        final_state = rig.probe.state()
    except Exception as exc:  # a case that could not run is a failed case, reported
        outcome.observed = f"case error: {exc!r}"
        final_state = None
    finally:
        codes = rig.close()
        if server is not None:
            server.send_signal(2)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    if not outcome.observed or outcome.observed.startswith("held "):
        names = {0: "IDLE", 1: "RUNNING", 2: "HOLDING", 3: "PAUSED", 4: "FAULT"}
        timeline = [names.get(s, str(s)) for _, s, _ in rig.probe.timeline]
        outcome.observed += " -> ".join(timeline[-6:]) + f"; exit codes {codes}"
    outcome.passed = (
        not outcome.observed.startswith("held ")
        and outcome.unsafe_commands == 0
        and not outcome.observed.startswith("case error")
        and final_state == RUNNING
        and (not case.hold or (outcome.time_to_hold_s is not None and outcome.time_to_recover_s is not None))
    )
    return outcome


def _timing(rig: Rig) -> int:
    with rig.probe.lock:
        kinds = dict(rig.probe.violations.get("violations", {}))
    return sum(int(kinds.get(k, 0)) for k in TIMING_VIOLATIONS)


def _hold_bound_s(case: SplitCase, model: Path) -> float:
    """How long after a cut the node must be holding (see HOLD_BOUND and the arm case's expectation)."""
    if case.boundary == "arm":
        return 0.1 + 0.01 + HOLD_SLACK_S  # max_state_age (default) + a period
    from apt_policy.runtime.manifest import load_manifest

    config = load_manifest(model, verify=False).config
    return float(config["horizon"]) * float(config["control_dt"]) + HOLD_SLACK_S


def run_demo(
    model: Path, out: Path, latency: str = "fixed:50:10", loss: float = 0.02, encoding: str = "jpeg"
) -> int:
    """``make demo``'s episodes through the split: the inference node (``latency``) in namespace A, the demo
    (camera, arm, executor node, recorder, probe) in B, ``loss`` of the packets dropped in both; exit code
    of the demo (its report is ``<out>/report.json``)."""
    import yaml

    from apt_policy.demo.run import default_params_file

    problem = unavailable()
    if problem is not None:
        print(f"[split] cannot run the demo across namespaces: {problem}", flush=True)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(default_params_file().read_text())
    node = data["apt_policy"]["ros__parameters"]
    node.update(backend="remote", remote_image_encoding=encoding, remote_connect_timeout=120.0)
    params = out / "remote_params.yaml"
    params.write_text(yaml.safe_dump(data))
    domain = str(1 + (os.getpid() * 13) % 100)
    with NetnsLink() as link:
        env = {**link.env(), "ROS_DOMAIN_ID": domain, "ROS_LOG_DIR": str(out / "ros_log")}
        server_cmd = [
            sys.executable, "-m", "apt_policy.ros.inference_node", "--ros-args", "-p", f"model:={model}",
            "-p", "inference_threads:=1", "-p", f"simulated_latency:={latency}",
        ]  # fmt: skip
        with (out / "inference_node.log").open("wb") as log:
            server = subprocess.Popen(
                link.command(link.a, server_cmd), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        link.set_loss(loss)
        print(
            f"[split] demo: inference node in {link.a} ({latency}), demo in {link.b}, {loss:.0%} loss",
            flush=True,
        )
        demo_cmd = [
            sys.executable, "-m", "apt_policy.demo", "--model", str(model), "--params-file", str(params),
            "--out", str(out), "--domain-id", domain,
        ]  # fmt: skip
        code = subprocess.run(link.command(link.b, demo_cmd), env=env, check=False).returncode
        print(
            f"[split] packets dropped: {link.dropped(link.a)} in {link.a}, {link.dropped(link.b)} in {link.b}"
        )
        server.send_signal(2)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    return code


def measure_loopback(
    model: Path, requests: int = 200, workdir: Path | None = None
) -> dict[str, dict[str, float]]:
    """What the split costs on one machine (loopback, no added delay): for raw and JPEG frames, the bytes
    per observation and the robot-side overhead per chunk (round trip minus the server's own compute, both
    durations on their own clocks), over ``requests`` predictions of 640x480 camera frames."""
    import numpy as np
    import rclpy

    from apt_policy.ros.remote_policy import RemotePolicy

    workdir = workdir or Path(tempfile.mkdtemp(prefix="apt_split_loopback_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ROS_DOMAIN_ID": str(1 + (os.getpid() * 17) % 100), "ROS_LOG_DIR": str(workdir)}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    cmd = [
        sys.executable, "-m", "apt_policy.ros.inference_node", "--ros-args", "-p", f"model:={model}",
        "-p", "inference_threads:=1",
    ]  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    with (workdir / "inference_node.log").open("wb") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        rng = np.random.default_rng(0)
        for encoding in ("rgb8", "jpeg"):
            policy = RemotePolicy(
                image_encoding=encoding, timeout_s=5.0, connect_timeout_s=120, context=context
            )
            try:
                policy.warmup()
                info = policy.info
                smooth = rng.random((6, 8, 3))
                frame = (np.kron(smooth, np.ones((80, 80, 1))) * 255).astype(np.uint8)  # 480x640
                images = {c: frame for c in info.cameras}
                state = np.zeros(len(info.state_names))
                for _ in range(10):  # warm both ends
                    policy.predict(images, state, "reach the red block")
                policy.split_overhead_s.clear()
                policy.round_trips_s.clear()
                for _ in range(requests):
                    policy.predict(images, state, "reach the red block")
                over = np.asarray(policy.split_overhead_s) * 1e3
                trip = np.asarray(policy.round_trips_s) * 1e3
                results[encoding] = {
                    "bytes_per_observation": float(policy.request_bytes[-1]),
                    "overhead_p50_ms": float(np.percentile(over, 50)),
                    "overhead_p90_ms": float(np.percentile(over, 90)),
                    "overhead_p99_ms": float(np.percentile(over, 99)),
                    "round_trip_p50_ms": float(np.percentile(trip, 50)),
                    "resends": float(policy.resends),
                }
            finally:
                policy.close()
    finally:
        rclpy.try_shutdown(context=context)
        server.send_signal(2)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="export dir (default: the cached demo model)")
    ap.add_argument("--cases", help=f"comma-separated (default: all): {', '.join(BY_NAME)}")
    ap.add_argument("--out", type=Path, default=Path("bench_out/split.md"))
    ap.add_argument(
        "--demo", type=Path, metavar="OUT", help="run the demo's episodes through the split into OUT"
    )
    ap.add_argument("--latency", default="fixed:50:10", help="--demo: inference-side delay (fixed:50:10)")
    ap.add_argument("--loss", type=float, default=0.02, help="--demo: packet loss in both namespaces (0.02)")
    ap.add_argument("--encoding", default="jpeg", choices=("jpeg", "rgb8"), help="--demo: image encoding")
    ap.add_argument(
        "--loopback", type=int, metavar="N", help="measure the split's cost on loopback (N requests)"
    )
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--link", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = args.cases.split(",") if args.cases else list(BY_NAME)
    unknown = set(names) - set(BY_NAME)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; known: {list(BY_NAME)}")
    if args.inside:
        link = NetnsLink(attach=json.loads(args.link))
        outcome = run_inside(BY_NAME[names[0]], args.model, args.workdir, link)
        (args.workdir / "outcome.json").write_text(json.dumps(asdict(outcome)))
        return 0
    model = args.model
    if args.loopback:
        if model is None:
            ap.error("--loopback needs --model (an export dir)")
        for encoding, figures in measure_loopback(model, args.loopback).items():
            print(f"[split] loopback {encoding}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        return 0
    if args.demo is not None:
        if model is None:
            ap.error("--demo needs --model (an export dir)")
        return run_demo(model, args.demo, args.latency, args.loss, args.encoding)
    if model is None:
        from apt_policy.demo.model_cache import ensure_demo_export

        model = ensure_demo_export()
    root = Path(tempfile.mkdtemp(prefix="apt_split_"))
    outcomes = []
    for name in names:
        print(f"[split] {name} ...", flush=True)
        outcomes.append(run(BY_NAME[name], model, root / name))
        print(
            f"[split] {name}: {'pass' if outcomes[-1].passed else 'FAIL'} ({outcomes[-1].observed})",
            flush=True,
        )
    table = format_table(outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# DDS faults across network namespaces\n\nModel: `{model}`; logs: `{root}`\n\n{table}\n"
    )
    print(table)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
