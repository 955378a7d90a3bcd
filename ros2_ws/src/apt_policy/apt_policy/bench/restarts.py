"""Do DDS delivery hold-ups follow process starts? fake_franka + fake_camera + the policy node + apt-record.

The demo restarts fake_franka and the node for every episode; a robot starts them once. This tool runs the
same rig for ``--minutes`` in one of four ways and counts the commands that DDS delivered to the arm more
than ``--threshold-ms`` after the node wrote them (fake_franka's arrival log: the RMW's source and reception
timestamps), and the contract violations fake_franka counted:

* ``both``: fake_franka and the node restarted every cycle (as the demo does per episode), ``--window`` s of
  streaming each (the node gets the next instruction as a parameter);
* ``node`` / ``franka``: only that one restarted every cycle;
* ``none``: nothing restarted, the instruction switched every ``--window`` s;
* ``reset``: nothing restarted; between cycles what the demo does between episodes since the thirteenth
  session: the node's ``~/stop`` and lifecycle deactivate, fake_franka's new arrival-log segment and its
  arm reset to the ready pose, activate, then the next instruction;
* ``recorder``: fake_franka and the node keep running and streaming (the instruction switched every cycle);
  ``apt-record`` is restarted every cycle, a new DDS participant joining while the arm moves (an operator
  starting a recording, or rviz, mid-run). The result also says, per join, when the new recorder found
  fake_franka (its ``recording /franka/joint_states`` line) and, per hold-up, how long after the last join
  it came.

    python -m apt_policy.bench.restarts --model EXPORT_DIR --mode both --minutes 12 --out DIR

Each restart of fake_franka writes its own arrival log (``DIR/arrivals_<cycle>.json``). Prints one line per
hold-up (which log, seconds after the first command in that log, the delay) and a summary line; writes
``DIR/restarts.json``. Real-time priorities as in the demo (``--no-realtime`` to drop them).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.bench.rig import INSTRUCTIONS, Rig
from apt_policy.bench.soak import log_events
from apt_policy.bench.stream import TRAJECTORY_TOPIC

MODES = ("both", "node", "franka", "none", "reset", "recorder")
ARM_STATES = "/franka/joint_states"


@dataclass(frozen=True)
class HoldUp:
    """One command delivered late: ``log`` its arrival log, ``after_first_s`` seconds after the first
    command in that log, ``delay_ms`` from the node's write to fake_franka's reception."""

    log: str
    after_first_s: float
    delay_ms: float
    after_join_s: float | None = None  # ``recorder`` mode: from the last recorder start to the held write
    join_found_arm_s: float | None = None  # ... and when that recorder found fake_franka after its start


def recorder_joins(log: Path) -> list[tuple[float, float | None]]:
    """(start, seconds until it recorded the arm's joint states, None if never) of every recorder run that
    appended to ``log`` (system clock)."""
    events = log_events(log, ("INFO",), "recording")
    joins: list[tuple[float, float | None]] = []
    for t, message in events:
        if message.startswith("recording to "):
            joins.append((t, None))
        elif message.startswith(f"recording {ARM_STATES} ") and joins and joins[-1][1] is None:
            joins[-1] = (joins[-1][0], t - joins[-1][0])
    return joins


def hold_ups(sent: np.ndarray, received: np.ndarray, threshold_s: float) -> list[tuple[int, float]]:
    """(index, delay s) of the first command of every run of commands delivered more than ``threshold_s``
    after they were written (the ones queued behind a held command belong to its hold-up)."""
    delay = np.asarray(received, np.float64) - np.asarray(sent, np.float64)
    late = delay > threshold_s
    starts = np.flatnonzero(late & ~np.concatenate([[False], late[:-1]]))
    return [(int(k), float(delay[k])) for k in starts]


def read_arrivals(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(sent, received) of the trajectory commands in one fake_franka arrival log, system clock s."""
    data = json.loads(path.read_text())
    sent = np.asarray(data["sent"].get(TRAJECTORY_TOPIC, []), np.float64)
    received = np.asarray(data["received"].get(TRAJECTORY_TOPIC, []), np.float64)
    return sent, received


def violations_in_log(log: Path) -> int:
    """Contract violations fake_franka logged (every run appended to ``log``)."""
    return len(log_events(log, ("WARN", "ERROR"), "contract violation"))


def _reset(operator: Any, next_log: Path) -> None:
    """The demo's episode boundary (demo/run.py ``end_episode`` + ``begin_episode``) at the ready pose."""
    from lifecycle_msgs.msg import Transition

    from apt_policy.robots.franka import FR3

    steps = (
        ("stop", lambda: operator.trigger("/apt_policy/stop")),
        ("deactivate", lambda: operator.change_state("/apt_policy", Transition.TRANSITION_DEACTIVATE)),
        (
            "fake_franka reset",
            lambda: operator.set_parameters(
                "/fake_franka",
                arrival_log=str(next_log),
                initial_positions=[float(v) for v in FR3.ready_pose],
            ),
        ),
        ("activate", lambda: operator.change_state("/apt_policy", Transition.TRANSITION_ACTIVATE)),
    )
    for what, call in steps:
        result = call()
        if not (result[0] if isinstance(result, tuple) else result):
            raise RuntimeError(f"{what} failed: {result}")


def _with(args: list[str], key: str, value: str) -> list[str]:
    return [f"{key}:={value}" if a.startswith(f"{key}:=") else a for a in args]


def run(
    model: Path,
    mode: str,
    minutes: float,
    window: float,
    out: Path,
    realtime: bool,
    threshold_s: float = 0.15,
) -> dict:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from apt_policy.demo.run import recorder_command

    out.mkdir(parents=True, exist_ok=True)
    logs = [out / "arrivals_0.json"]
    rig = Rig(model, out / "rig", realtime=realtime, extra_args={"franka": ["-p", f"arrival_log:={logs[0]}"]})
    operator = None
    if mode == "reset":
        from apt_policy.sim.probe import DemoProbe

        operator = DemoProbe()
    with (out / "recorder.log").open("wb") as rec_log:

        def start_recorder(bag: Path) -> subprocess.Popen:
            return subprocess.Popen(
                recorder_command(bag, 10.0), env=rig.env, stdout=rec_log, stderr=subprocess.STDOUT
            )

        recorder = start_recorder(out / "bag")
        cycles = 0
        try:
            rig.wait_streaming()
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                cycles += 1
                text = INSTRUCTIONS[cycles % len(INSTRUCTIONS)]
                restart = {"both": ("node", "franka"), "node": ("node",), "franka": ("franka",)}.get(mode, ())
                for name in restart:
                    rig.kill(name, signal.SIGINT)
                if "franka" in restart:
                    logs.append(out / f"arrivals_{cycles}.json")
                    rig.args["franka"] = _with(rig.args["franka"], "arrival_log", str(logs[-1]))
                if "node" in restart:
                    rig.args["node"] = _with(rig.args["node"], "instruction", text)
                for name in reversed(restart):  # fake_franka first, as the demo
                    rig.start(name)
                if operator is not None:
                    logs.append(out / f"arrivals_{cycles}.json")
                    _reset(operator, logs[-1])
                if mode == "recorder":  # the old one stops, a new participant joins mid-motion
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(30)
                    recorder = start_recorder(out / f"bag_{cycles}")
                if not restart:
                    rig.probe.say(text)
                print(f"\rcycle {cycles} ({mode})", end="", file=sys.stderr, flush=True)
                time.sleep(window + (2.0 if restart else 0.0))  # a restarted node needs ~2 s to stream
        finally:
            if operator is not None:
                operator.shutdown()
            codes = rig.close()
            recorder.send_signal(signal.SIGINT)
            recorder.wait(30)
        print(file=sys.stderr)
    joins = recorder_joins(out / "recorder.log") if mode == "recorder" else []
    found: list[HoldUp] = []
    commands = 0
    for path in logs:
        if not path.exists():
            continue
        sent, received = read_arrivals(path)
        commands += len(received)
        for k, delay in hold_ups(sent, received, threshold_s):
            before = [(t, found_s) for t, found_s in joins if t <= sent[k]]
            last = before[-1] if before else None
            after_join = None if last is None else round(float(sent[k] - last[0]), 3)
            found_arm = None if last is None or last[1] is None else round(last[1], 3)
            found.append(
                HoldUp(
                    path.name,
                    round(float(received[k] - received[0]), 3),
                    round(delay * 1e3, 1),
                    after_join,
                    found_arm,
                )
            )
    found_after = [f for _, f in joins if f is not None]
    return {
        "mode": mode,
        "minutes": minutes,
        "window_s": window,
        "cycles": cycles,
        "realtime": realtime,
        "commands": commands,
        "threshold_ms": threshold_s * 1e3,
        "hold_ups": [asdict(h) for h in found],
        "contract_violations": violations_in_log(out / "rig" / "franka.log"),
        "joins": len(joins),
        "joins_found_arm_after_1s": sum(f > 1.0 for f in found_after),
        "join_found_arm_s": [round(f, 3) for f in found_after],
        "exit_codes": codes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an export dir (apt-export onnx)")
    ap.add_argument("--mode", choices=MODES, default="both")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=8.0, help="s of streaming per cycle")
    ap.add_argument(
        "--threshold-ms", type=float, default=150.0, help="a delivery later than this is a hold-up"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--no-realtime", action="store_true", help="normal scheduling for fake_franka and the node"
    )
    args = ap.parse_args(argv)
    result = run(
        args.model,
        args.mode,
        args.minutes,
        args.window,
        args.out,
        not args.no_realtime,
        args.threshold_ms / 1e3,
    )
    for h in result["hold_ups"]:
        join = (
            ""
            if h["after_join_s"] is None
            else f"; {h['after_join_s']:.2f} s after a recorder started, which found the arm after"
            f" {h['join_found_arm_s'] if h['join_found_arm_s'] is not None else float('nan'):.2f} s"
        )
        print(
            f"hold-up: {h['log']} {h['after_first_s']:.2f} s after its first command, {h['delay_ms']:.1f} ms"
            + join
        )
    if result["joins"]:
        print(
            f"recorder starts: {result['joins']}, {result['joins_found_arm_after_1s']} found fake_franka"
            " more than 1 s after they started"
        )
    print(
        f"{result['mode']}: {result['cycles']} cycles, {result['commands']} commands, "
        f"{len(result['hold_ups'])} hold-ups over {args.threshold_ms:.0f} ms, "
        f"{result['contract_violations']} contract violations, exit codes {result['exit_codes']}"
    )
    (args.out / "restarts.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
