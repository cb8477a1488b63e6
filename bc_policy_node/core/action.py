"""The action side of a contract: its parts, their kinds and bounds (`core.contract` embeds it).

An action may combine parts, e.g. an end-effector velocity (what MoveIt Servo takes) and a
gripper command (a ros2_control forward controller); the action vector is the parts in order::

    action:
      parts:
        - {kind: ee_velocity, topic: /servo_node/delta_twist_cmds, type: geometry_msgs/msg/TwistStamped,
           frame_id: base_link, names: [vx, vy, vz], lower: -0.5, upper: 0.5,   # m/s
           max_step: 0.1,                                                        # m/s per tick
           workspace: {ee_term: ee_position, lower: [-0.5, 0.4, 0.05], upper: [0.5, 0.9, 0.3]}}   # m
        - {kind: gripper, topic: /gripper_controller/commands, type: std_msgs/msg/Float64MultiArray,
           names: [gripper], lower: -1.0, upper: 1.0, max_step: 2.0, rest: -1.0}

Kinds (`ACTION_KINDS`; the safety filter's rules per kind are in `core.control.safety`):

* ``joint_position`` - absolute joint targets (rad); ``names`` (or ``joints``) are joint names.
* ``ee_velocity`` - end-effector twist, ``names`` [vx, vy, vz] or all six with wx wy wz (m/s,
  rad/s) in that order; published as geometry_msgs/TwistStamped in ``frame_id``; its rest value
  (hold, stale, no plan) is zero: the arm stops. ``workspace`` (optional): a box (m) the end
  effector, read from observation term ``ee_term``, may not leave.
* ``gripper`` - a gripper command in [lower, upper] (position or normalized effort, as the
  gripper's forward controller takes it); ``rest`` (default `lower`) is sent before any command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


class ContractError(ValueError):
    """A contract is malformed, or data/model/robot does not match it."""


JOINT_POSITION, EE_VELOCITY, GRIPPER = "joint_position", "ee_velocity", "gripper"
ACTION_KINDS = (JOINT_POSITION, EE_VELOCITY, GRIPPER)
KIND_TYPES = {  # kind -> message types a part of that kind is published as
    JOINT_POSITION: ("std_msgs/msg/Float64MultiArray", "trajectory_msgs/msg/JointTrajectory"),
    EE_VELOCITY: ("geometry_msgs/msg/TwistStamped",),
    GRIPPER: ("std_msgs/msg/Float64MultiArray",),
}
COMMAND_TYPES = tuple(dict.fromkeys(t for ts in KIND_TYPES.values() for t in ts))
TWIST_AXES = ("vx", "vy", "vz", "wx", "wy", "wz")


@dataclass(frozen=True)
class Workspace:
    """A box (m) the end effector may not leave; its position is observation term `ee_term`."""
    ee_term: str
    lower: Tuple[float, float, float]
    upper: Tuple[float, float, float]

    def to_dict(self) -> Dict[str, Any]:
        return {"ee_term": self.ee_term, "lower": list(self.lower), "upper": list(self.upper)}


@dataclass(frozen=True)
class ActionPart:
    """One command stream of the action: `names` elements of kind `kind` on `topic`."""
    kind: str
    topic: str
    msg_type: str
    names: Tuple[str, ...]
    lower: Tuple[float, ...]
    upper: Tuple[float, ...]
    max_step: Tuple[float, ...]
    rest: Optional[Tuple[float, ...]] = None      # gripper: the value before any command
    frame_id: str = ""                            # ee_velocity: the twist's frame
    workspace: Optional[Workspace] = None         # ee_velocity: the end effector's box

    @property
    def dim(self) -> int:
        return len(self.names)

    def rest_value(self) -> np.ndarray:
        """What the part commands when it must not move: zero velocity; the gripper's rest."""
        if self.kind == EE_VELOCITY:
            return np.zeros(self.dim)
        if self.rest is not None:
            return np.array(self.rest, dtype=float)
        return np.array(self.lower, dtype=float)

    def to_dict(self) -> Dict[str, Any]:
        key = "joints" if self.kind == JOINT_POSITION else "names"
        d: Dict[str, Any] = {"kind": self.kind, "topic": self.topic, "type": self.msg_type, key: list(self.names),
                             "lower": list(self.lower), "upper": list(self.upper), "max_step": list(self.max_step)}
        if self.rest is not None:
            d["rest"] = list(self.rest)
        if self.frame_id:
            d["frame_id"] = self.frame_id
        if self.workspace is not None:
            d["workspace"] = self.workspace.to_dict()
        return d


@dataclass(frozen=True)
class ActionSpec:
    """The action vector: its parts in order. A one-part action reads and writes exactly as the
    original single-stream contract (same YAML, same fingerprint)."""
    parts: Tuple[ActionPart, ...]

    @property
    def kind(self) -> str:
        return "+".join(p.kind for p in self.parts)

    @property
    def topic(self) -> str:
        """The first part's topic (the only one of a one-part action)."""
        return self.parts[0].topic

    @property
    def msg_type(self) -> str:
        return self.parts[0].msg_type

    @property
    def joints(self) -> Tuple[str, ...]:
        """Every element's name, in action order (joint names for joint_position parts)."""
        return tuple(n for p in self.parts for n in p.names)

    @property
    def joint_names(self) -> Tuple[str, ...]:
        """The commanded joints (joint_position parts only)."""
        return tuple(n for p in self.parts if p.kind == JOINT_POSITION for n in p.names)

    def _cat(self, attr: str) -> Tuple[float, ...]:
        return tuple(x for p in self.parts for x in getattr(p, attr))

    @property
    def lower(self) -> Tuple[float, ...]:
        return self._cat("lower")

    @property
    def upper(self) -> Tuple[float, ...]:
        return self._cat("upper")

    @property
    def max_step(self) -> Tuple[float, ...]:
        return self._cat("max_step")

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def part_slices(self) -> List[Tuple[ActionPart, slice]]:
        out, i = [], 0
        for p in self.parts:
            out.append((p, slice(i, i + p.dim)))
            i += p.dim
        return out

    def indices(self, kind: str) -> np.ndarray:
        """Action-vector indices of the elements of parts of `kind`."""
        return np.array([i for p, sl in self.part_slices() if p.kind == kind
                         for i in range(sl.start, sl.stop)], dtype=np.intp)

    def to_dict(self) -> Dict[str, Any]:
        if len(self.parts) == 1:
            return self.parts[0].to_dict()
        return {"parts": [p.to_dict() for p in self.parts]}


def _vector(a: Mapping[str, Any], key: str, n: int, where: str) -> Tuple[float, ...]:
    v = a[key]
    v = [float(v)] * n if np.isscalar(v) else [float(x) for x in v]
    if len(v) != n or not all(math.isfinite(x) for x in v):
        raise ContractError(f"{where}.{key} must be {n} finite numbers, got {a[key]!r}")
    return tuple(v)


def _parse_part(a: Mapping[str, Any], where: str) -> ActionPart:
    if not isinstance(a, Mapping):
        raise ContractError(f"{where} must be a mapping, got {a!r}")
    kind = a.get("kind")
    if kind not in ACTION_KINDS:
        raise ContractError(f"{where}.kind {kind!r} not supported (supported: {ACTION_KINDS})")
    key = "joints" if kind == JOINT_POSITION and "joints" in a else "names"
    for k in ("topic", "type", key, "lower", "upper", "max_step"):
        if k not in a:
            raise ContractError(f"{where} is missing {k!r}")
    if a["type"] not in KIND_TYPES[kind]:
        raise ContractError(f"{where}.type {a['type']!r} not supported for {kind} (supported: {KIND_TYPES[kind]})")
    names = tuple(str(j) for j in a[key])
    n = len(names)
    if n == 0 or len(set(names)) != n:
        raise ContractError(f"{where}.{key} must be non-empty and unique, got {list(names)}")
    if kind == EE_VELOCITY and names not in (TWIST_AXES[:3], TWIST_AXES):
        raise ContractError(f"{where}.names of an ee_velocity part must be {list(TWIST_AXES[:3])} or "
                            f"{list(TWIST_AXES)}, got {list(names)}")
    vec = {k: _vector(a, k, n, where) for k in ("lower", "upper", "max_step")}
    if any(lo >= hi for lo, hi in zip(vec["lower"], vec["upper"])):
        raise ContractError(f"{where}.lower must be < {where}.upper for every element")
    if any(st <= 0 for st in vec["max_step"]):
        raise ContractError(f"{where}.max_step must be > 0")
    rest = None
    if a.get("rest") is not None:
        if kind != GRIPPER:
            raise ContractError(f"{where}.rest is for gripper parts (a {kind} part rests at "
                                f"{'zero' if kind == EE_VELOCITY else 'its measured position'})")
        rest = _vector(a, "rest", n, where)
        if any(not lo <= r <= hi for r, lo, hi in zip(rest, vec["lower"], vec["upper"])):
            raise ContractError(f"{where}.rest must lie within [lower, upper]")
    ws = None
    if a.get("workspace") is not None:
        w = a["workspace"]
        if kind != EE_VELOCITY or not isinstance(w, Mapping) or "ee_term" not in w:
            raise ContractError(f"{where}.workspace is for ee_velocity parts: {{ee_term, lower, upper}}")
        lo, hi = _vector(w, "lower", 3, f"{where}.workspace"), _vector(w, "upper", 3, f"{where}.workspace")
        if any(x >= y for x, y in zip(lo, hi)):
            raise ContractError(f"{where}.workspace.lower must be < upper on every axis")
        ws = Workspace(str(w["ee_term"]), lo, hi)  # type: ignore[arg-type]
    if a.get("frame_id") and kind != EE_VELOCITY:
        raise ContractError(f"{where}.frame_id is for ee_velocity parts")
    if kind == EE_VELOCITY and any(lo > 0 or hi < 0 for lo, hi in zip(vec["lower"], vec["upper"])):
        raise ContractError(f"{where}: an ee_velocity part must allow zero (stop) on every axis")
    return ActionPart(kind=str(kind), topic=str(a["topic"]), msg_type=str(a["type"]), names=names, rest=rest,
                      frame_id=str(a.get("frame_id", "")), workspace=ws, **vec)


def parse_action(a: Mapping[str, Any]) -> ActionSpec:
    if not isinstance(a, Mapping):
        raise ContractError(f"action must be a mapping, got {a!r}")
    if "parts" not in a:
        return ActionSpec((_parse_part(a, "action"),))
    parts = a["parts"]
    if not isinstance(parts, Sequence) or not parts:
        raise ContractError("action.parts must be a non-empty list")
    spec = ActionSpec(tuple(_parse_part(p, f"action.parts[{i}]") for i, p in enumerate(parts)))
    topics = [p.topic for p in spec.parts]
    if len(set(topics)) != len(topics):
        raise ContractError(f"action.parts must publish on different topics, got {topics}")
    if len(set(spec.joints)) != spec.dim:
        raise ContractError(f"action element names must be unique across parts, got {list(spec.joints)}")
    return spec
