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

Needs root, iproute2 and iptables (``sim.netns.unavailable`` says what is missing; cases are then skipped).
"""

from __future__ import annotations

import argparse
import json
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
SIM_ARM_MARGINS = ("-p", "max_deviation:=0.5", "-p", "max_tracking_error:=0.3")


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
    here = ["ip", "netns", "exec", link.a]
    server = None
    # config/sim.yaml's margins for the simulated arm (its first-order tracking lags more than an FR3's)
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


def _hold_bound_s(case: SplitCase, model: Path) -> float:
    """How long after a cut the node must be holding (see HOLD_BOUND and the arm case's expectation)."""
    if case.boundary == "arm":
        return 0.1 + 0.01 + HOLD_SLACK_S  # max_state_age (default) + a period
    from apt_policy.runtime.manifest import load_manifest

    config = load_manifest(model, verify=False).config
    return float(config["horizon"]) * float(config["control_dt"]) + HOLD_SLACK_S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="export dir (default: the cached demo model)")
    ap.add_argument("--cases", help=f"comma-separated (default: all): {', '.join(BY_NAME)}")
    ap.add_argument("--out", type=Path, default=Path("bench_out/split.md"))
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
