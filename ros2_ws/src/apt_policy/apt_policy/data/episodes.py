"""Episodes of a recording: where each one starts and ends, why, and when a human took over.

Boundaries (all from recorded topics, in receive-time order):

* start: a message on the instruction topic (an operator or a script gave an instruction), or the node's
  ``~/status`` naming an instruction other than the open episode's (``SetInstruction`` and the
  ``FollowInstruction`` action set it without an instruction message); when a FollowInstruction goal
  became EXECUTING up to 1 s before, the episode starts then and its source is ``action``; when the
  node's status naming the instruction reached the recorder before the instruction message itself (two
  publishers, no order between them), the episode and the boundary move to the instruction message;
* end, with its outcome: ``preempted`` (the next start), ``succeeded`` / ``canceled`` / ``aborted`` (the
  FollowInstruction goal's terminal status), ``stopped`` (the node back to IDLE without an instruction once
  it had named the episode's, or its ``~/status`` silent for over 1 s: stopped or restarted; the episode
  then ends at its last status), ``fault`` (FAULT), ``end_of_recording``.

Human takeover (DAgger-style data): ``/apt_policy/takeover`` (std_msgs/Bool) True..False intervals, clipped
to each episode; the export marks every frame inside one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apt_policy.data.bag import Message, read_messages

__all__ = ["Episode", "TopicNames", "episodes_from_messages", "find_episodes"]

# PolicyStatus.state
IDLE, RUNNING, HOLDING, PAUSED, FAULT = range(5)
# action_msgs/GoalStatus.status
EXECUTING, SUCCEEDED, CANCELED, ABORTED = 2, 4, 5, 6
_TERMINAL = {SUCCEEDED: "succeeded", CANCELED: "canceled", ABORTED: "aborted"}
STATUS_GAP_NS = 10**9  # ~/status is published at 10 Hz: a longer silence means the node went away
# an episode's start may reach the recorder this much before the instruction message that opens it (a goal
# becoming EXECUTING, the node's status naming the instruction): two publishers, no order between them
RACE_NS = 10**9


@dataclass(frozen=True)
class TopicNames:
    instruction: str = "/apt_policy/instruction"
    status: str = "/apt_policy/status"
    action_status: str = "/apt_policy/follow_instruction/_action/status"
    takeover: str = "/apt_policy/takeover"

    def all(self) -> list[str]:
        return [self.instruction, self.status, self.action_status, self.takeover]


@dataclass
class Episode:
    """One instruction followed: [start_ns, end_ns) on the bag's clock."""

    index: int
    instruction: str
    start_ns: int
    end_ns: int = 0
    outcome: str = "end_of_recording"
    source: str = "instruction"  # what started it: instruction | status | action
    takeover: list[tuple[int, int]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    def taken_over(self, t_ns: int) -> bool:
        return any(a <= t_ns < b for a, b in self.takeover)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_s"] = round(self.duration_s, 6)
        d["takeover"] = [list(i) for i in self.takeover]
        return d


def _goal_id(status: Any) -> bytes:
    return bytes(status.goal_info.goal_id.uuid)


def episodes_from_messages(messages: Iterable[Message], topics: TopicNames | None = None) -> list[Episode]:
    """Episodes of a time-ordered message stream (see the module docstring)."""
    topics = topics or TopicNames()
    episodes: list[Episode] = []
    current: Episode | None = None
    goal_states: dict[bytes, int] = {}
    takeover: list[tuple[int, int]] = []
    takeover_since: int | None = None
    acked = False  # the node's status has named the open episode's instruction
    last_status: int | None = None
    action_pending: int | None = None  # when a goal started executing, until its instruction opens an episode
    last_t = 0

    def close(t_ns: int, outcome: str) -> None:
        nonlocal current, acked
        acked = False
        if current is not None:
            current.end_ns, current.outcome = t_ns, outcome
            episodes.append(current)
            current = None

    def open_(t_ns: int, text: str, source: str) -> None:
        nonlocal current, action_pending
        if action_pending is not None and t_ns - action_pending < RACE_NS:
            t_ns, source = action_pending, "action"  # the goal's start is the episode's
        close(t_ns, "preempted")
        current = Episode(len(episodes), text, t_ns, source=source)
        action_pending = None

    for m in messages:
        last_t = m.t_ns
        if m.topic == topics.instruction:
            text = str(m.msg.data).strip()
            if (
                current is not None
                and current.source == "status"
                and current.instruction == text
                and 0 <= m.t_ns - current.start_ns < RACE_NS
            ):  # the node's acknowledgement overtook the instruction: the instruction starts the episode
                if episodes and episodes[-1].end_ns == current.start_ns:
                    episodes[-1].end_ns = m.t_ns
                current.start_ns, current.source = m.t_ns, "instruction"
            elif text:
                open_(m.t_ns, text, "instruction")
        elif m.topic == topics.status:
            text, state = str(m.msg.instruction), int(m.msg.state)
            if current is not None and last_status is not None and m.t_ns - last_status > STATUS_GAP_NS:
                close(last_status, "stopped")  # the node went away (stopped, restarted) mid-episode
            last_status = m.t_ns
            if current is not None and text == current.instruction:
                acked = True
            if (
                text
                and state in (RUNNING, HOLDING, PAUSED)
                and (current is None or current.instruction != text)
            ):
                open_(m.t_ns, text, "status")
            elif current is not None and state == FAULT:
                close(m.t_ns, "fault")
            elif current is not None and state == IDLE and not text and acked:
                close(m.t_ns, "stopped")  # (before the node names the instruction, IDLE is its old state)
        elif m.topic == topics.action_status:
            for status in m.msg.status_list:
                gid, code = _goal_id(status), int(status.status)
                if goal_states.get(gid) == code:
                    continue
                goal_states[gid] = code
                if code in _TERMINAL and current is not None and current.source == "action":
                    close(m.t_ns, _TERMINAL[code])
                elif code == EXECUTING:
                    action_pending = m.t_ns  # its instruction arrives on ~/status (the goal is not recorded)
        elif m.topic == topics.takeover:
            if bool(m.msg.data) and takeover_since is None:
                takeover_since = m.t_ns
            elif not bool(m.msg.data) and takeover_since is not None:
                takeover.append((takeover_since, m.t_ns))
                takeover_since = None
    if current is not None and last_status is not None and last_t - last_status > STATUS_GAP_NS:
        close(last_status, "stopped")
    close(last_t, "end_of_recording")
    if takeover_since is not None:
        takeover.append((takeover_since, last_t + 1))
    for ep in episodes:
        ep.takeover = [
            (max(a, ep.start_ns), min(b, ep.end_ns)) for a, b in takeover if a < ep.end_ns and b > ep.start_ns
        ]
    return episodes


def find_episodes(bag: str | Path, topics: TopicNames | None = None) -> list[Episode]:
    """Episodes of the recording at ``bag``."""
    topics = topics or TopicNames()
    return episodes_from_messages(read_messages(bag, topics.all()), topics)


def episodes_json(episodes: list[Episode]) -> str:
    return json.dumps([e.to_dict() for e in episodes], indent=2)
