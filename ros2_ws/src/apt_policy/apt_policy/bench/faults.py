"""Fault-injection matrix over real processes and DDS (``make faults``).

    python -m apt_policy.bench.faults [--model DIR] [--cases camera_stop,...] [--out faults.md]

Each case starts the simulated cell afresh (``apt_policy.bench.rig``: fake_franka, fake_camera and the
policy node following an instruction), waits for RUNNING, injects one fault, removes it where it can be
removed, and reports against what must happen:

* unsafe commands  contract violations fake_franka counted during the case (non-finite, outside limits,
                   infeasible from the controller's state when it arrived, ...): must be 0 in every case
* time to hold     from the injection to the node's status leaving RUNNING (HOLDING / FAULT / IDLE)
* time to recover  from the removal of the fault to RUNNING again (when the case expects recovery)

A case passes when it has no unsafe command and the expected reaction happened (the hold, the refusal,
the recovery). The table goes to ``--out`` (markdown) and ``--json``; docs/FAULTS.md shows a run.
DDS loss and outage between node and arm, and between the executor and a remote inference node, run over
network namespaces (``apt_policy.bench.split``: a veth pair, iptables loss, link down): the cases
``NETNS_CASES``, skipped with the reason where namespaces cannot be made (root, iproute2, iptables).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apt_policy.bench.rig import INSTRUCTIONS, Rig
from apt_policy.robots.franka import FR3

RUNNING, HOLDING, FAULT = 1, 2, 4
NOT_RUNNING = (0, 2, 3, 4)


@dataclass
class Outcome:
    case: str
    expected: str
    observed: str = ""
    unsafe_commands: int = 0
    time_to_hold_s: float | None = None
    time_to_recover_s: float | None = None
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    timing_violations: int = 0  # of unsafe_commands: too_fast / ends_in_past (late arrival), where counted


@dataclass
class Case:
    name: str
    expected: str
    run: Callable[[Rig, Outcome], None]
    hold: bool = True  # the node must leave RUNNING
    recover: bool = True  # and come back to RUNNING after the fault is removed
    node_args: tuple[str, ...] = ()


def _joint_state(rig: Rig, positions: list[float], names: list[str] | None = None) -> None:
    msg = rig.probe.msg["JointState"](name=names or list(FR3.joint_names), position=positions)
    msg.header.stamp = rig.probe.node.get_clock().now().to_msg()
    rig.probe.joints.publish(msg)


def _for(seconds: float, rate: float, action: Callable[[], None]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        action()
        time.sleep(1.0 / rate)


def _measured(rig: Rig) -> list[float]:
    """The arm's latest measured joint positions (FR3 order); the ready pose before any state arrived."""
    with rig.probe.lock:
        measured = dict(rig.probe.measured)
    return [measured.get(n, q) for n, q in zip(FR3.joint_names, FR3.ready_pose, strict=True)]


def _mark(o: Outcome, t_inject: float, rig: Rig) -> None:
    o.time_to_hold_s = rig.probe.first_state_after(t_inject, NOT_RUNNING)


def _recover(o: Outcome, t_clear: float, rig: Rig, timeout: float = 20.0) -> None:
    if rig.probe.wait_state((RUNNING,), timeout) and rig.probe.state() == RUNNING:
        when = rig.probe.first_state_after(t_clear, (RUNNING,))
        o.time_to_recover_s = when if when is not None else 0.0


# ------------------------------------------------------------------------------------------- the cases


def camera_stop(rig: Rig, o: Outcome) -> None:
    t = time.monotonic()
    rig.probe.camera_enabled(False)
    time.sleep(3.0)
    _mark(o, t, rig)
    t = time.monotonic()
    rig.probe.camera_enabled(True)
    _recover(o, t, rig)


def camera_restart(rig: Rig, o: Outcome) -> None:
    t = time.monotonic()
    rig.kill("camera")
    time.sleep(3.0)
    _mark(o, t, rig)
    t = time.monotonic()
    rig.start("camera")
    _recover(o, t, rig, timeout=40.0)


def camera_flood(rig: Rig, o: Outcome) -> None:
    image = rig.probe.msg["Image"](height=480, width=640, encoding="rgb8", step=1920, data=bytes(480 * 1920))

    def publish() -> None:
        image.header.stamp = rig.probe.node.get_clock().now().to_msg()
        rig.probe.camera_pub.publish(image)

    before = int(getattr(rig.probe.status, "missed_ticks", 0))
    t = time.monotonic()
    _for(5.0, 300.0, publish)  # 10x the camera's 30 Hz, full-size frames
    _mark(o, t, rig)
    o.notes.append(f"missed ticks during the flood: {int(rig.probe.status.missed_ticks) - before}")


def malformed_image(rig: Rig, o: Outcome) -> None:
    bad = rig.probe.msg["Image"](height=480, width=640, encoding="rgb8", step=100, data=bytes(480 * 100))
    t = time.monotonic()
    _for(2.0, 60.0, lambda: rig.probe.camera_pub.publish(bad))
    _mark(o, t, rig)
    o.notes.append(f"rejections: { {k: v for k, v in rig.probe.diag.items() if k.startswith('rejected')} }")
    _recover(o, time.monotonic(), rig)


def joint_state_nan(rig: Rig, o: Outcome) -> None:
    t = time.monotonic()
    _for(2.0, 200.0, lambda: _joint_state(rig, [float("nan")] * 7))
    _mark(o, t, rig)
    o.notes.append(f"rejections: { {k: v for k, v in rig.probe.diag.items() if k.startswith('rejected')} }")


def joint_state_jump(rig: Rig, o: Outcome) -> None:
    jumped = _measured(rig)
    jumped[0] += 0.3
    t = time.monotonic()
    _for(1.0, 200.0, lambda: _joint_state(rig, jumped))
    _mark(o, t, rig)


def joint_state_missing_and_reordered(rig: Rig, o: Outcome) -> None:
    names = list(FR3.joint_names)
    t = time.monotonic()
    _for(1.0, 200.0, lambda: _joint_state(rig, _measured(rig)[:6], names[:6]))
    # the arm's own current state, in another order (the real arm publishes too: both must agree)
    _for(1.0, 200.0, lambda: _joint_state(rig, _measured(rig)[::-1], names[::-1]))
    _mark(o, t, rig)
    o.notes.append(f"rejections: { {k: v for k, v in rig.probe.diag.items() if k.startswith('rejected')} }")


def joint_state_duplicate_names(rig: Rig, o: Outcome) -> None:
    names = list(FR3.joint_names)
    q = _measured(rig)
    t = time.monotonic()
    _for(1.0, 200.0, lambda: _joint_state(rig, [*q, q[0] + 0.5], [*names, names[0]]))
    _mark(o, t, rig)
    o.notes.append(f"rejections: { {k: v for k, v in rig.probe.diag.items() if k.startswith('rejected')} }")


def sensor_clock_jump(rig: Rig, o: Outcome) -> None:
    image = rig.probe.msg["Image"](height=48, width=64, encoding="rgb8", step=192, data=bytes(48 * 192))
    t = time.monotonic()
    rig.probe.camera_enabled(False)

    def future_frame() -> None:
        now = rig.probe.node.get_clock().now().nanoseconds * 1e-9 + 10.0
        image.header.stamp.sec, image.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        rig.probe.camera_pub.publish(image)

    _for(2.0, 30.0, future_frame)  # only frames stamped 10 s ahead
    _mark(o, t, rig)
    o.notes.append(f"rejections: { {k: v for k, v in rig.probe.diag.items() if k.startswith('rejected')} }")
    t = time.monotonic()
    rig.probe.camera_enabled(True)
    _recover(o, t, rig)


def _inference_child(rig: Rig) -> int | None:
    children = rig.children("node")
    return children[0] if children else None


def inference_killed(rig: Rig, o: Outcome) -> None:
    child = _inference_child(rig)
    if child is None:
        o.notes.append("no inference process found")
        return
    t = time.monotonic()
    os.kill(child, signal.SIGKILL)
    time.sleep(2.0)
    _mark(o, t, rig)
    _recover(o, t, rig, timeout=60.0)
    o.notes.append(f"inference process after: {_inference_child(rig)} (was {child})")


def inference_hangs(rig: Rig, o: Outcome) -> None:
    child = _inference_child(rig)
    if child is None:
        o.notes.append("no inference process found")
        return
    t = time.monotonic()
    os.kill(child, signal.SIGSTOP)
    time.sleep(4.0)
    _mark(o, t, rig)
    t = time.monotonic()
    os.kill(child, signal.SIGCONT)
    _recover(o, t, rig, timeout=60.0)


def model_tampered(rig: Rig, o: Outcome) -> None:
    """A graph file of the running model is damaged, then the inference process dies: no reload of it."""
    model = Path(rig.model)
    graphs = sorted(model.glob("*.onnx"))
    target = graphs[-1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    t = time.monotonic()
    child = _inference_child(rig)
    if child is not None:
        os.kill(child, signal.SIGKILL)
    time.sleep(8.0)
    _mark(o, t, rig)
    o.notes.append(f"state after: {rig.probe.state()} ({getattr(rig.probe.status, 'last_fault', '')})")


def arm_controller_restart(rig: Rig, o: Outcome) -> None:
    before = rig.probe.total_violations()
    t = time.monotonic()
    rig.kill("franka")
    time.sleep(3.0)
    _mark(o, t, rig)
    t = time.monotonic()
    rig.start("franka")  # a new controller: its violations report starts from zero
    time.sleep(1.0)
    _recover(o, t, rig, timeout=40.0)
    o.notes.append(f"violations before the restart: {before}")


def instruction_flood(rig: Rig, o: Outcome) -> None:
    before = int(getattr(rig.probe.status, "missed_ticks", 0))
    t = time.monotonic()
    colours = [INSTRUCTIONS[i % 3] for i in range(3)]
    counter = iter(range(10**9))
    _for(2.0, 1000.0, lambda: rig.probe.say(colours[next(counter) % 3]))
    rig.probe.say("x" * 1_000_000)  # 1 MB
    time.sleep(2.0)
    o.time_to_hold_s = rig.probe.first_state_after(t, (FAULT,))
    o.notes.append(f"missed ticks during the flood: {int(rig.probe.status.missed_ticks) - before}")
    following = getattr(rig.probe.status, "instruction", "")[:30]
    o.notes.append(f"state {rig.probe.state()}, following {following!r}")


CASES: tuple[Case, ...] = (
    Case("camera_stop", "HOLD within max_image_age (0.2 s) + a period; RUNNING again when frames return",
         camera_stop),
    Case("camera_restart", "camera process killed: HOLD; a new camera process: RUNNING again",
         camera_restart),
    Case("camera_flood", "640x480 frames at 300 Hz (10x) for 5 s: keeps RUNNING, 0 unsafe, missed ticks "
         "reported", camera_flood, hold=False, recover=False),
    Case("malformed_image", "Image with a wrong step: rejected with a reason, HOLD (camera stream broken); "
         "RUNNING when good frames return", malformed_image),
    Case("joint_state_nan", "NaN joint states: rejected with a reason, valid ones keep the node going, "
         "0 unsafe", joint_state_nan, hold=False, recover=False),
    Case("joint_state_jump", "measured state jumps 0.3 rad: clamped targets or FAULT on tracking error; "
         "0 unsafe", joint_state_jump, hold=False, recover=False),
    Case("joint_state_missing_reordered", "6 of 7 joints: rejected; same joints in another order: read "
         "by name; 0 unsafe", joint_state_missing_and_reordered, hold=False, recover=False),
    Case("joint_state_duplicate_names", "a joint named twice: rejected with a reason; 0 unsafe",
         joint_state_duplicate_names, hold=False, recover=False),
    Case("sensor_clock_jump", "frames stamped 10 s ahead: rejected and counted, HOLD; RUNNING when "
         "good frames return", sensor_clock_jump),
    Case("inference_killed", "inference process SIGKILLed mid-run: HOLD, restarted, RUNNING again",
         inference_killed),
    Case("inference_hangs", "inference process SIGSTOPped 4 s: timeout (inference_timeout 1 s) -> HOLD; "
         "RUNNING after SIGCONT", inference_hangs),
    Case("model_tampered", "a graph of the running model damaged, inference process killed: the damaged "
         "file is never loaded (integrity check) -> HOLD/FAULT, 0 unsafe", model_tampered, recover=False),
    Case("arm_controller_restart", "fake_franka killed and restarted 3 s later: HOLD; nothing sent to the "
         "new controller before its first state; 0 unsafe there", arm_controller_restart),
    Case("instruction_flood", "1000 instructions/s for 2 s, then a 1 MB one: followed / refused with a "
         "reason, no FAULT, 0 unsafe", instruction_flood, hold=False, recover=False),
)  # fmt: skip


NETNS_CASES = ("arm_dds_loss", "arm_link_down", "split_loss_5", "split_link_down")  # bench.split's


def run_case(case: Case, model: Path, workdir: Path) -> Outcome:
    outcome = Outcome(case.name, case.expected)
    model_copy = workdir / "model"
    shutil.copytree(model, model_copy)  # model_tampered edits it
    rig = Rig(model_copy, workdir, ["-p", "inference_timeout:=1.0", *case.node_args])
    try:
        rig.wait_streaming()
        if not rig.probe.wait_state((RUNNING,), 60.0):
            outcome.observed = f"never RUNNING before the fault (state {rig.probe.state()})"
            return outcome
        time.sleep(1.0)
        before = rig.probe.total_violations()
        case.run(rig, outcome)
        time.sleep(1.5)  # the next violations report (1 Hz)
        outcome.unsafe_commands = rig.probe.total_violations() - (
            0 if case.name == "arm_controller_restart" else before
        )
    except Exception as exc:  # a case that could not run is a failed case, reported
        outcome.observed = f"case error: {exc!r}"
    finally:
        codes = rig.close()
    if not outcome.observed:
        state = {0: "IDLE", 1: "RUNNING", 2: "HOLDING", 3: "PAUSED", 4: "FAULT"}
        timeline = [state.get(s, str(s)) for _, s, _ in rig.probe.timeline]
        outcome.observed = " -> ".join(timeline[-6:]) + f"; exit codes {codes}"
    held = outcome.time_to_hold_s is not None
    recovered = outcome.time_to_recover_s is not None
    outcome.passed = (
        outcome.unsafe_commands == 0
        and (held or not case.hold)
        and (recovered or not case.recover)
        and not outcome.observed.startswith("case error")
    )
    return outcome


def format_table(outcomes: list[Outcome]) -> str:
    def s(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    rows = [
        "| case | expected | observed | unsafe commands | time to hold (s) | time to recover (s) | pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        observed = o.observed + ("; " + "; ".join(o.notes) if o.notes else "")
        rows.append(
            f"| {o.case} | {o.expected} | {observed} | {o.unsafe_commands} | {s(o.time_to_hold_s)} | "
            f"{s(o.time_to_recover_s)} | {'yes' if o.passed else '**no**'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="export dir (default: the cached demo model)")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/faults.md"))
    ap.add_argument("--json", type=Path, help="also write the outcomes as JSON")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from apt_policy.demo.model_cache import ensure_demo_export

        model = ensure_demo_export()
    known = [c.name for c in CASES] + list(NETNS_CASES)
    wanted = set(args.cases.split(",")) if args.cases else set(known)
    unknown = wanted - set(known)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; known: {known}")
    outcomes = []
    root = Path(tempfile.mkdtemp(prefix="apt_faults_"))
    for case in (c for c in CASES if c.name in wanted):
        print(f"[faults] {case.name} ...", flush=True)
        outcome = run_case(case, model, root / case.name)
        print(
            f"[faults] {case.name}: {'pass' if outcome.passed else 'FAIL'} ({outcome.observed})", flush=True
        )
        outcomes.append(outcome)
    for name in (n for n in NETNS_CASES if n in wanted):
        from apt_policy.bench import split

        print(f"[faults] {name} (network namespaces) ...", flush=True)
        outcome = split.run(split.BY_NAME[name], model, root / name)
        print(f"[faults] {name}: {'pass' if outcome.passed else 'FAIL'} ({outcome.observed})", flush=True)
        outcomes.append(outcome)
    table = format_table(outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Fault-injection matrix\n\nModel: `{model}`; logs: `{root}`\n\n{table}\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    print(table)
    failed = [o.case for o in outcomes if not o.passed]
    unsafe = sum(o.unsafe_commands for o in outcomes)
    print(
        f"{len(outcomes) - len(failed)} passed, {len(failed)} failed; unsafe commands (all cases): {unsafe}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
