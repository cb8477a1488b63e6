"""Cutting one long bag into episodes: the `--split-by` rules (numpy + rosbags, no ROS).

A bag from `ros2 bag record` usually holds a whole session with many demonstrations. A
`SplitRule` (parsed from the text of `bc-policy dataset build --split-by RULE`) turns the
bag's messages into `Window`s, one per episode, each cut for a stated reason:

``topic:/name[:field]``
    A marker topic. A bool field (default `data` of std_msgs/msg/Bool): an episode while it
    is true - the first true starts one, the first false after it ends it. Any other field
    (default `episode_id` for bc_msgs/msg/TaskState, else `data`, e.g. std_msgs/msg/Int32 or
    String): a new episode whenever the value changes; the window runs from the first
    message with a value to the first message with the next one.
``service:/name``
    The service-event log of `/name` (topic `/name/_service_event`, recorded with
    `ros2 bag record --all-services` or `--services /name` from Jazzy on, type
    `<pkg>/srv/<Srv>_Event`). Each call (client gid + sequence number, the first of its
    events) is a cut: a new episode starts at every call (e.g. std_srvs/srv/Trigger
    `/reset`). When the request has a bool `data` (std_srvs/srv/SetBool `/record`), true
    starts an episode and false ends it, as with a Bool marker.
``gap:SECONDS``
    Idle gaps: no message on the contract's action topic for more than SECONDS cuts. The
    idle time before an episode belongs to it (observations received then are what the
    first command answered); the window ends with the episode's last command.
``none``
    One episode per bag (the default).

Windows are in receive time (the bag's log time, the same clock for every topic and both
storages), half-open ``[start_ns, end_ns)``. `slice_raw` restricts a bag's raw messages to a
window: commands (labels) and FrameTags strictly inside it; observation topics also keep the
value held at the cut (their newest message before the window), as the policy node would
see it - so the first command of an episode is not lost when its joint state arrived just
before the marker. Nothing else of the previous episode is used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .rosbag_reader import SERVICE_EVENT_SUFFIX

SPLIT_KINDS = ("none", "topic", "service", "gap")
TASK_STATE_TYPE = "bc_msgs/msg/TaskState"
_BOOL_TYPES = (bool, np.bool_)


class SplitError(ValueError):
    """A split rule is malformed or does not fit the bag (names what is missing)."""


@dataclass(frozen=True)
class SplitRule:
    kind: str = "none"
    name: str = ""                 # topic or service name
    field: Optional[str] = None    # topic rule: the message field (default by type)
    gap_s: float = 0.0

    @classmethod
    def parse(cls, text: Optional[str]) -> "SplitRule":
        """'topic:/episode_marker', 'topic:/task_state:episode_id', 'service:/reset', 'gap:0.5'."""
        text = (text or "none").strip()
        kind, _, rest = text.partition(":")
        if kind == "none" and not rest:
            return cls()
        if kind == "gap":
            try:
                gap = float(rest)
            except ValueError:
                gap = float("nan")
            if not gap > 0:
                raise SplitError(f"--split-by {text!r}: gap needs a positive number of seconds, e.g. gap:0.5")
            return cls("gap", gap_s=gap)
        if kind in ("topic", "service"):
            name, _, fld = rest.partition(":")   # ':' cannot occur in a ROS name
            if not name.startswith("/") or len(name) < 2:
                raise SplitError(f"--split-by {text!r}: needs an absolute name, e.g. {kind}:/episode_marker")
            if fld and kind == "service":
                raise SplitError(f"--split-by {text!r}: a service rule takes no field")
            return cls(kind, name.rstrip("/"), fld or None)
        raise SplitError(f"--split-by {text!r}: expected none, topic:/NAME[:FIELD], service:/NAME "
                         f"or gap:SECONDS")

    @property
    def topic(self) -> Optional[str]:
        """The bag topic the rule reads (None for none/gap: gap reads the action topic)."""
        if self.kind == "topic":
            return self.name
        if self.kind == "service":
            return self.name + SERVICE_EVENT_SUFFIX
        return None

    def __str__(self) -> str:
        if self.kind == "gap":
            return f"gap:{self.gap_s:g}"
        if self.kind in ("topic", "service"):
            return f"{self.kind}:{self.name}" + (f":{self.field}" if self.field else "")
        return "none"


@dataclass
class Window:
    """One episode's span in the bag (receive ns, half-open) and why it was cut there."""

    index: int
    start_ns: int
    end_ns: int
    cut_start: str
    cut_end: str
    key: Any = None                # the marker value (e.g. TaskState episode_id), if any
    extra: Dict[str, Any] = field(default_factory=dict)

    def report(self, bag_start_ns: int) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        d["start_s"] = (self.start_ns - bag_start_ns) * 1e-9
        d["end_s"] = (self.end_ns - bag_start_ns) * 1e-9
        return d


def bag_span(raw: Dict[str, Tuple[str, List[Tuple]]]) -> Tuple[int, int]:
    """(first, last) receive ns over every message in raw."""
    times = [it[0] for _typ, items in raw.values() for it in items]
    if not times:
        raise SplitError("the bag has no messages on the topics read")
    return int(min(times)), int(max(times))


def slice_raw(raw: Dict[str, Tuple[str, List[Tuple]]], w: Window,
              hold: Sequence[str] = ()) -> Dict[str, Tuple[str, List[Tuple]]]:
    """raw restricted to the window; topics in `hold` (observations) also keep their newest
    message before the window: the value held at the cut (e.g. the joint state received just
    before the marker that starts the episode), which the first command may have answered."""
    out = {}
    for t, (typ, items) in raw.items():
        inside = [it for it in items if w.start_ns <= it[0] < w.end_ns]
        if t in hold:
            before = [it for it in items if it[0] < w.start_ns]
            if before:
                inside.insert(0, max(before, key=lambda it: it[0]))
        out[t] = (typ, inside)
    return out


def _value(msg: Any, fld: str, where: str) -> Any:
    obj = msg
    for part in fld.split("."):
        if not hasattr(obj, part):
            names = [n for n in getattr(type(obj), "__dataclass_fields__", {})] or dir(obj)
            raise SplitError(f"{where}: no field {fld!r} (fields: {sorted(n for n in names if not n.startswith('_'))})")
        obj = getattr(obj, part)
    if isinstance(obj, np.ndarray):
        obj = tuple(obj.tolist())
    return obj.item() if isinstance(obj, np.generic) else obj


def _bool_windows(events: Sequence[Tuple[int, bool]], end_ns: int, what: str) -> List[Window]:
    out: List[Window] = []
    start: Optional[int] = None
    for t, on in events:
        if on and start is None:
            start = t
        elif not on and start is not None:
            out.append(Window(len(out), start, t, f"{what} true", f"{what} false"))
            start = None
    if start is not None:
        out.append(Window(len(out), start, end_ns + 1, f"{what} true",
                          f"end of bag ({what} still true)"))
    return out


def _change_windows(events: Sequence[Tuple[int, Any]], end_ns: int, what: str) -> List[Window]:
    out: List[Window] = []
    cur = None
    for t, v in events:
        if out and v == cur:
            continue
        if out:
            out[-1].end_ns = t
            out[-1].cut_end = f"{what} {cur!r} -> {v!r}"
        out.append(Window(len(out), t, end_ns + 1,
                          f"{what} = {v!r}" + ("" if out else " (first message)"), "end of bag", key=v))
        cur = v
    return out


def marker_windows(rule: SplitRule, msgtype: str, msgs: Sequence[Tuple[int, Any]],
                   span: Tuple[int, int]) -> List[Window]:
    """Windows from a marker topic's (receive ns, deserialized message), sorted by time."""
    fld = rule.field or ("episode_id" if msgtype == TASK_STATE_TYPE else "data")
    where = f"split topic {rule.name} ({msgtype})"
    if not msgs:
        raise SplitError(f"{where} has no messages")
    vals = [(t, _value(m, fld, where)) for t, m in msgs]
    what = f"{rule.name}.{fld}"
    if all(isinstance(v, _BOOL_TYPES) for _t, v in vals):
        return _bool_windows([(t, bool(v)) for t, v in vals], span[1], what)
    return _change_windows(vals, span[1], what)


def service_windows(rule: SplitRule, events: Sequence[Tuple[int, int, bytes, int, Optional[bool]]],
                    span: Tuple[int, int]) -> List[Window]:
    """Windows from a service-event log: one cut per call, or start/stop for SetBool.

    events: (receive ns, event_type, client_gid, sequence_number, SetBool request.data or
    None) - `rosbag_reader.service_event_info` / `setbool_request`. One call shows up as up
    to four events (request sent/received, response sent/received); it counts once, at its
    first event, with the request of whichever event carries it.
    """
    calls: Dict[Tuple[bytes, int], List[Any]] = {}
    for t, _etype, gid, seq, req in events:
        c = calls.setdefault((gid, seq), [t, None])
        c[0] = min(c[0], t)
        c[1] = c[1] if c[1] is not None else req
    if not calls:
        raise SplitError(f"service {rule.name} (topic {rule.topic}): no calls in the bag")
    ordered = sorted(calls.values(), key=lambda x: x[0])
    what = f"call of {rule.name}"
    if all(r is not None for _t, r in ordered):     # SetBool: true starts, false ends
        return _bool_windows([(t, bool(r)) for t, r in ordered], span[1], f"{what} data")
    cuts = [t for t, _r in ordered]
    starts, ends = [span[0]] + cuts, cuts + [span[1] + 1]
    out: List[Window] = []
    for a, b in zip(starts, ends):
        if b > a:
            out.append(Window(len(out), a, b, what if a in cuts else "start of bag",
                              "end of bag" if b == span[1] + 1 else what))
    return out


def gap_windows(rule: SplitRule, action_times: np.ndarray, action_topic: str,
                span: Tuple[int, int]) -> List[Window]:
    """Windows between idle gaps (> rule.gap_s without an action message)."""
    ct = np.sort(np.asarray(action_times, dtype=np.int64))
    if not len(ct):
        raise SplitError(f"no messages on the action topic {action_topic}: nothing to split by gaps")
    gaps = np.diff(ct) * 1e-9
    cut = np.nonzero(gaps > rule.gap_s)[0]           # a gap after command cut[i]
    run_end = list(ct[cut]) + [ct[-1]]
    out = []
    start, why = span[0], "start of bag"
    for i, last in enumerate(run_end):
        end_why = f"idle {gaps[cut[i]]:.3f} s on {action_topic}" if i < len(cut) else "end of bag"
        out.append(Window(i, int(start), int(last) + 1, why, end_why))
        start, why = int(last) + 1, end_why
    return out
