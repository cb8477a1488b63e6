"""The observation/action contract: one declarative spec from recording to deployment.

A contract (YAML, versioned) says which topic/field becomes which slice of the observation
vector, what the action is (joint names, kind, limits, per-tick step), the control rate and
the chunk length. The dataset builder, the trainer, the exporter (which embeds it in the ONNX
metadata) and the policy node all read it through this module, and the policy node refuses a
model whose contract does not match the robot it is attached to.

Example (config/contracts/planar3_curved_reach.yaml)::

    contract_version: 1
    name: planar3_curved_reach
    robot: planar3
    task: curved_reach
    control_rate_hz: 50.0        # Hz
    chunk_length: 20             # actions per chunk
    stale_after_s: 0.1           # s; older observations make the policy hold
    observation:
      - {name: joint_pos, topic: /joint_states, type: sensor_msgs/msg/JointState,
         field: position, joints: [j1, j2, j3]}
      - {name: goal, topic: /task_state, type: bc_msgs/msg/TaskState, field: goal, size: 2}
    action:
      kind: joint_position
      topic: /forward_position_controller/commands
      type: std_msgs/msg/Float64MultiArray
      joints: [j1, j2, j3]
      lower: [-3.0, -2.6, -2.6]   # rad
      upper: [3.0, 2.6, 2.6]      # rad
      max_step: [0.08, 0.08, 0.08]  # rad per control tick

An action may combine parts (an end-effector velocity and a gripper command, ...): `core.action`.

Cameras are observation entries of ``kind: image`` (`ImageTerm`, decoded by `core.image`)::

      - {name: overhead, kind: image, topic: /camera/overhead/image_raw/compressed,
         type: sensor_msgs/msg/CompressedImage, encoding: rgb8, height: 96, width: 96,
         crop: [0, 8, 80, 80], max_age_s: 0.15}

They are not part of the observation vector (`obs_dim`, `slices()`): `Contract.images` lists
them and the policy gets each as a uint8 (h, w, 3) array (after the optional crop
``[top, left, height, width]``).
"""
from __future__ import annotations

import array
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .action import (ACTION_KINDS, COMMAND_TYPES, EE_VELOCITY, GRIPPER, JOINT_POSITION, KIND_TYPES,  # noqa: F401
                     TWIST_AXES, ActionPart, ActionSpec, ContractError, Workspace, parse_action)

CONTRACT_VERSION = 1
@dataclass(frozen=True)
class ObsTerm:
    """One slice of the observation vector: `field` of the messages on `topic`."""

    name: str
    topic: str
    msg_type: str
    field: str
    size: int
    joints: Optional[Tuple[str, ...]] = None

    def to_dict(self) -> Dict[str, Any]:
        d = {"name": self.name, "topic": self.topic, "type": self.msg_type,
             "field": self.field, "size": self.size}
        if self.joints is not None:
            d["joints"] = list(self.joints)
        return d


IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
IMAGE_ENCODINGS = ("rgb8",)   # what a term asks for; `core.image` converts bgr8/mono8/JPEG/PNG to it


@dataclass(frozen=True)
class ImageTerm:
    """A camera observation: the frames on `topic` (raw `sensor_msgs/Image` or
    `CompressedImage`), height x width x 3 uint8 in `encoding`, cut to `crop` (top, left,
    height, width; None = whole frame). `max_age_s` (None = the contract's stale_after_s) is
    how old its newest frame may be before the observation counts as stale (a camera slower
    than the control rate needs more than the state topics)."""

    name: str
    topic: str
    msg_type: str
    height: int
    width: int
    encoding: str = "rgb8"
    crop: Optional[Tuple[int, int, int, int]] = None
    max_age_s: Optional[float] = None

    @property
    def compressed(self) -> bool:
        return self.msg_type.endswith("CompressedImage")

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(h, w, 3) of the array the policy gets (after the crop)."""
        if self.crop is None:
            return (self.height, self.width, 3)
        return (self.crop[2], self.crop[3], 3)

    @property
    def input_name(self) -> str:
        """The ONNX input that takes this camera's frames."""
        return f"image_{self.name}"

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "kind": "image", "topic": self.topic, "type": self.msg_type,
                             "encoding": self.encoding, "height": self.height, "width": self.width}
        if self.crop is not None:
            d["crop"] = list(self.crop)
        if self.max_age_s is not None:
            d["max_age_s"] = self.max_age_s
        return d


@dataclass(frozen=True)
class Contract:
    name: str
    robot: str
    task: str
    control_rate_hz: float
    chunk_length: int
    stale_after_s: float
    observation: Tuple[ObsTerm, ...]
    action: ActionSpec
    version: int = CONTRACT_VERSION
    images: Tuple[ImageTerm, ...] = ()

    # ------------------------------------------------------------------ derived
    @property
    def dt(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def obs_dim(self) -> int:
        return sum(t.size for t in self.observation)

    @property
    def act_dim(self) -> int:
        return self.action.dim

    def slices(self) -> Dict[str, slice]:
        out, i = {}, 0
        for t in self.observation:
            out[t.name] = slice(i, i + t.size)
            i += t.size
        return out

    def obs_slice(self, name: str) -> slice:
        try:
            return self.slices()[name]
        except KeyError:
            raise ContractError(f"contract {self.name!r} has no observation term {name!r}; "
                                f"it has {[t.name for t in self.observation]}") from None

    def action_reference_index(self) -> List[int]:
        """Observation index of the measured position of each action joint, in action order.

        A policy with ``action_frame: relative`` predicts targets relative to these (the ONNX
        graph adds them back, so its output is still absolute joint targets)."""
        if self.action.kind != JOINT_POSITION:
            raise ContractError(f"contract {self.name!r}: a relative action frame needs joint_position "
                                f"actions only, this action is {self.action.kind}")
        out, terms = [], list(zip(self.observation, self.slices().values()))
        for j in self.action.joints:
            for term, sl in terms:
                if term.field == "position" and term.joints and j in term.joints:
                    out.append(sl.start + term.joints.index(j))
                    break
            else:
                raise ContractError(f"contract {self.name!r}: action joint {j!r} has no measured position "
                                    f"in the observation (a joint_states 'position' term listing it), which a "
                                    f"relative action frame needs")
        return out

    def topics(self) -> Dict[str, str]:
        """Every topic the contract reads or writes -> its message type."""
        out = self.observation_topics()
        for part in self.action.parts:
            out[part.topic] = part.msg_type
        return out

    def observation_topics(self) -> Dict[str, str]:
        """Every observed topic (state terms and cameras) -> its message type."""
        out = {t.topic: t.msg_type for t in self.observation}
        out.update({t.topic: t.msg_type for t in self.images})
        return out

    def image_topics(self) -> Dict[str, str]:
        return {t.topic: t.msg_type for t in self.images}

    def image_term(self, name: str) -> ImageTerm:
        for t in self.images:
            if t.name == name:
                return t
        raise ContractError(f"contract {self.name!r} has no image term {name!r}; it has "
                            f"{[t.name for t in self.images]}")

    # ------------------------------------------------------------ serialization
    def to_dict(self) -> Dict[str, Any]:
        return {"contract_version": self.version, "name": self.name, "robot": self.robot,
                "task": self.task, "control_rate_hz": self.control_rate_hz,
                "chunk_length": self.chunk_length, "stale_after_s": self.stale_after_s,
                "observation": [t.to_dict() for t in self.observation + self.images],  # type: ignore[operator]
                "action": self.action.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """Short hash of the canonical form; equal fingerprints mean identical contracts."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, text: str) -> "Contract":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path) -> "Contract":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ContractError(f"contract file not found: {path}")
        with path.open() as f:
            data = yaml.safe_load(f)
        try:
            return cls.from_dict(data)
        except ContractError as e:
            raise ContractError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Contract":
        if not isinstance(d, Mapping):
            raise ContractError("contract must be a mapping")
        version = d.get("contract_version")
        if version != CONTRACT_VERSION:
            raise ContractError(f"contract_version {version!r} is not supported "
                                f"(this package reads version {CONTRACT_VERSION})")
        for key in ("name", "robot", "task", "control_rate_hz", "chunk_length",
                    "observation", "action"):
            if key not in d:
                raise ContractError(f"missing key {key!r}")
        rate = float(d["control_rate_hz"])
        if not (math.isfinite(rate) and rate > 0):
            raise ContractError(f"control_rate_hz must be > 0, got {rate}")
        chunk = int(d["chunk_length"])
        if chunk < 1:
            raise ContractError(f"chunk_length must be >= 1, got {chunk}")
        stale = float(d.get("stale_after_s", 5.0 / rate))
        if not stale > 0:
            raise ContractError(f"stale_after_s must be > 0, got {stale}")
        if not isinstance(d["observation"], (list, tuple)):
            raise ContractError("observation must be a list of terms")
        entries = [t for t in d["observation"] if not (isinstance(t, Mapping) and t.get("kind") == "image")]
        images = tuple(_parse_image_term(t) for t in d["observation"]
                       if isinstance(t, Mapping) and t.get("kind") == "image")
        terms = tuple(_parse_term(t) for t in entries)
        if not terms:
            raise ContractError("observation has no state terms (a camera-only policy still needs one, "
                                "e.g. the joint positions its safety filter starts from)")
        names = [t.name for t in terms + images]   # type: ignore[operator]
        if len(set(names)) != len(names):
            raise ContractError(f"duplicate observation term names: {names}")
        topics = [t.topic for t in images]
        clash = sorted({t for t in topics if topics.count(t) > 1} | (set(topics) & {t.topic for t in terms}))
        if clash:
            raise ContractError(f"image topic(s) {clash} used by more than one term")
        action = parse_action(d["action"])
        sizes = {t.name: t.size for t in terms}
        for part in action.parts:
            ws = part.workspace
            if ws is not None and sizes.get(ws.ee_term) != 3:
                raise ContractError(f"action part {part.kind}: workspace.ee_term {ws.ee_term!r} must name an "
                                    f"observation term of size 3 (terms: {sizes})")
        return cls(name=str(d["name"]), robot=str(d["robot"]), task=str(d["task"]),
                   control_rate_hz=rate, chunk_length=chunk, stale_after_s=stale,
                   observation=terms, action=action, version=version, images=images)

    # --------------------------------------------------------------- matching
    def mismatches(self, other: "Contract") -> List[str]:
        """Human-readable differences that make a model trained on `self` unusable on `other`.

        The chunk length is a property of the model, not of the robot, so it is not compared.
        """
        out = []
        if self.robot != other.robot:
            out.append(f"robot: model {self.robot!r} vs robot {other.robot!r}")
        if abs(self.control_rate_hz - other.control_rate_hz) > 1e-9:
            out.append(f"control_rate_hz: model {self.control_rate_hz} vs robot {other.control_rate_hz}")
        mine = [t.to_dict() for t in self.observation + self.images]  # type: ignore[operator]
        theirs = [t.to_dict() for t in other.observation + other.images]  # type: ignore[operator]
        if mine != theirs:
            for i in range(max(len(mine), len(theirs))):
                a = mine[i] if i < len(mine) else None
                b = theirs[i] if i < len(theirs) else None
                if a != b:
                    out.append(f"observation[{i}]{_term_diff(a, b)}: model {a} vs robot {b}")
        a, b = self.action, other.action
        for key in ("kind", "joints"):
            if getattr(a, key) != getattr(b, key):
                out.append(f"action.{key}: model {list(getattr(a, key)) if key == 'joints' else getattr(a, key)}"
                           f" vs robot {list(getattr(b, key)) if key == 'joints' else getattr(b, key)}")
        return out

    def check_robot_joints(self, joint_names: Sequence[str]) -> None:
        """Raise unless every joint the contract reads or commands exists on the robot."""
        have = set(joint_names)
        need = set(self.action.joint_names)
        for t in self.observation:
            if t.joints:
                need.update(t.joints)
        missing = sorted(need - have)
        if missing:
            raise ContractError(f"contract {self.name!r} needs joints {missing} that the robot "
                                f"does not have (robot joints: {list(joint_names)})")


def _term_diff(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    """What differs between the model's entry `a` and the robot's `b`, e.g. `` (camera
    'overhead': height model 64, robot 96; ...)``; '' when they are unrelated entries."""
    one = a if a is not None else b
    what = "camera" if one is not None and one.get("kind") == "image" else "term"
    if a is None or b is None:
        side = "model" if a is None else "robot contract"
        return f" (the {side} has no {what} {one.get('name')!r} here)" if one is not None else ""
    if a.get("name") != b.get("name") and a.get("kind") != b.get("kind"):
        return ""
    keys = [k for k in dict.fromkeys(list(a) + list(b)) if a.get(k) != b.get(k)]
    label = f"{what} {a.get('name')!r}" if a.get("name") == b.get("name") else what
    return f" ({label}: " + "; ".join(f"{k} model {a.get(k)!r}, robot {b.get(k)!r}"
                                                      for k in keys) + ")"


def _parse_term(t: Mapping[str, Any]) -> ObsTerm:
    for key in ("name", "topic", "type", "field"):
        if key not in t:
            raise ContractError(f"observation term {t!r} is missing {key!r}")
    joints = tuple(str(j) for j in t["joints"]) if t.get("joints") is not None else None
    size = t.get("size", len(joints) if joints else None)
    if size is None:
        raise ContractError(f"observation term {t['name']!r} needs 'size' (or 'joints')")
    size = int(size)
    if joints is not None and size != len(joints):
        raise ContractError(f"observation term {t['name']!r}: size {size} != {len(joints)} joints")
    if size < 1:
        raise ContractError(f"observation term {t['name']!r}: size must be >= 1")
    if not str(t["topic"]).startswith("/"):
        raise ContractError(f"observation term {t['name']!r}: topic must be absolute, got {t['topic']!r}")
    return ObsTerm(name=str(t["name"]), topic=str(t["topic"]), msg_type=str(t["type"]),
                   field=str(t["field"]), size=size, joints=joints)


def _parse_image_term(t: Mapping[str, Any]) -> ImageTerm:
    name = t.get("name")
    where = f"image term {name!r}"
    for key in ("name", "topic", "type", "height", "width"):
        if key not in t:
            raise ContractError(f"{where} is missing {key!r}")
    if t["type"] not in IMAGE_TYPES:
        raise ContractError(f"{where}: type {t['type']!r} is not one of {list(IMAGE_TYPES)}")
    enc = str(t.get("encoding", "rgb8"))
    if enc not in IMAGE_ENCODINGS:
        raise ContractError(f"{where}: encoding {enc!r} not supported (a policy takes {list(IMAGE_ENCODINGS)}; "
                            f"bgr8, mono8, JPEG and PNG frames are converted to it)")
    h, w = int(t["height"]), int(t["width"])
    if not (1 <= h <= 4096 and 1 <= w <= 4096):
        raise ContractError(f"{where}: size {w}x{h} must be 1..4096 px")
    crop = None
    if t.get("crop") is not None:
        c = [int(v) for v in t["crop"]]
        if len(c) != 4 or c[0] < 0 or c[1] < 0 or c[2] < 1 or c[3] < 1 or c[0] + c[2] > h or c[1] + c[3] > w:
            raise ContractError(f"{where}: crop {t['crop']!r} must be [top, left, height, width] inside "
                                f"the {w}x{h} frame")
        crop = (c[0], c[1], c[2], c[3])
    age = t.get("max_age_s")
    if age is not None:
        age = float(age)
        if not (math.isfinite(age) and age > 0):
            raise ContractError(f"{where}: max_age_s must be > 0, got {t['max_age_s']!r}")
    if not str(t["topic"]).startswith("/"):
        raise ContractError(f"{where}: topic must be absolute, got {t['topic']!r}")
    return ImageTerm(name=str(name), topic=str(t["topic"]), msg_type=str(t["type"]), height=h, width=w,
                     encoding=enc, crop=crop, max_age_s=age)


# ---------------------------------------------------------------------------- extraction
_SEQUENCES = (np.ndarray, list, tuple, array.array)


def _numbers(raw: Any) -> np.ndarray:
    """A field's value as a float vector; geometry messages by their fields: Point / Vector3
    (x, y, z), Quaternion (x, y, z, w), Pose (position + orientation: 7)."""
    if isinstance(raw, _SEQUENCES) or np.isscalar(raw):
        return np.atleast_1d(np.asarray(raw, dtype=float))
    if hasattr(raw, "position") and hasattr(raw, "orientation"):
        return np.concatenate([_numbers(raw.position), _numbers(raw.orientation)])
    if hasattr(raw, "x") and hasattr(raw, "y") and hasattr(raw, "z"):
        return np.array([raw.x, raw.y, raw.z] + ([raw.w] if hasattr(raw, "w") else []), dtype=float)
    return np.atleast_1d(np.asarray(raw, dtype=float))


def _get_field(msg: Any, path: str) -> Any:
    obj = msg
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj


class ObservationAssembler:
    """Builds observation vectors from messages, the same way everywhere.

    Feed it every message of the contract's observation topics with `update(topic, msg,
    stamp)`; `vector()` concatenates the latest value of every term in contract order.
    Works on rclpy messages, on rosbags-deserialized messages and on `core.types` data alike
    (fields are read by name).
    """

    def __init__(self, contract: Contract):
        self.contract = contract
        self._by_topic: Dict[str, List[Tuple[int, ObsTerm]]] = {}
        for i, t in enumerate(contract.observation):
            self._by_topic.setdefault(t.topic, []).append((i, t))
        self._slices = [contract.slices()[t.name] for t in contract.observation]
        self._vec = np.zeros(contract.obs_dim)
        self._stamps = np.full(len(contract.observation) + len(contract.images), -np.inf)
        # A camera's frame may be older than the state terms' stale_after_s by its extra allowance.
        self._allow = np.zeros(len(self._stamps))
        self._images: Dict[str, np.ndarray] = {}
        self._image_by_topic: Dict[str, Tuple[int, ImageTerm]] = {}
        for j, im in enumerate(contract.images):
            i = len(contract.observation) + j
            self._image_by_topic[im.topic] = (i, im)
            if im.max_age_s is not None:
                self._allow[i] = im.max_age_s - contract.stale_after_s
        self._index_cache: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], np.ndarray] = {}

    @property
    def topics(self) -> Tuple[str, ...]:
        return tuple(self._by_topic) + tuple(self._image_by_topic)

    def extract(self, term: ObsTerm, msg: Any) -> np.ndarray:
        """The term's value in `msg`; ContractError if missing, wrong size or non-finite."""
        try:
            raw = _get_field(msg, term.field)
        except (AttributeError, KeyError):
            raise ContractError(f"{term.topic}: message has no field {term.field!r} "
                                f"(observation term {term.name!r})") from None
        try:
            arr = _numbers(raw)
        except (TypeError, ValueError):
            raise ContractError(f"{term.topic}: field {term.field!r} is not numeric ({type(raw).__name__}; "
                                f"observation term {term.name!r})") from None
        if term.joints is not None:
            names = tuple(_get_field(msg, "name"))
            key = (names, term.joints)
            idx = self._index_cache.get(key)
            if idx is None:
                missing = [j for j in term.joints if j not in names]
                if missing:
                    raise ContractError(f"{term.topic}: joints {missing} not in message names {list(names)}")
                idx = np.array([names.index(j) for j in term.joints])
                self._index_cache[key] = idx
            if arr.shape[0] != len(names):
                raise ContractError(f"{term.topic}: field {term.field!r} has {arr.shape[0]} values "
                                    f"for {len(names)} names")
            arr = arr[idx]
        if arr.shape != (term.size,):
            raise ContractError(f"{term.topic}: field {term.field!r} has shape {arr.shape}, "
                                f"contract term {term.name!r} expects ({term.size},)")
        if not np.all(np.isfinite(arr)):
            raise ContractError(f"{term.topic}: field {term.field!r} contains NaN/inf")
        return arr

    def update(self, topic: str, msg: Any, stamp: float) -> bool:
        """Take a message; returns False if the topic is not part of the observation.

        On a malformed message raises ContractError and keeps the previous values intact.
        """
        terms = self._by_topic.get(topic)
        if terms is None:
            cam = self._image_by_topic.get(topic)
            if cam is None:
                return False
            from .image import decode

            i, term = cam
            self._images[term.name] = decode(term, msg)   # raises before anything is replaced
            self._stamps[i] = stamp
            return True
        values = [(i, self.extract(t, msg)) for i, t in terms]  # all-or-nothing
        for i, v in values:
            self._vec[self._slices[i]] = v
            self._stamps[i] = stamp
        return True

    @property
    def ready(self) -> bool:
        return bool(np.all(np.isfinite(self._stamps)))

    def missing_terms(self) -> List[str]:
        terms = self.contract.observation + self.contract.images   # type: ignore[operator]
        return [t.name for t, s in zip(terms, self._stamps) if not np.isfinite(s)]

    def oldest_stamp(self) -> float:
        """Stamp of the stalest term (-inf until every term has been seen); the stamp that
        decides staleness against the contract's ``stale_after_s``. A camera term with
        ``max_age_s`` counts as ``stamp + max_age_s - stale_after_s``, so its frame is stale
        once it is older than its own max age."""
        return float((self._stamps + self._allow).min())

    def stalest(self) -> Tuple[str, float]:
        """``(term name, stamp)`` of the term that decides `oldest_stamp()` (the one to name when
        the observation is stale), with that term's own stamp (a camera's frame stamp)."""
        i = int(np.argmin(self._stamps + self._allow))
        terms = self.contract.observation + self.contract.images   # type: ignore[operator]
        return terms[i].name, float(self._stamps[i])

    def is_image_topic(self, topic: str) -> bool:
        return topic in self._image_by_topic

    def images(self) -> Dict[str, np.ndarray]:
        """The newest frame of every camera term (uint8 (h, w, 3), cropped), by term name.
        Arrays are replaced, never written into: a returned frame stays valid."""
        if len(self._images) != len(self.contract.images):
            raise ContractError(f"observation incomplete: no frame yet for "
                                f"{[t.name for t in self.contract.images if t.name not in self._images]}")
        return dict(self._images)

    def vector(self) -> np.ndarray:
        if not self.ready:
            raise ContractError(f"observation incomplete: no data yet for {self.missing_terms()}")
        return self._vec.copy()

    def assemble(self, messages: Mapping[str, Any], stamp: float = 0.0) -> np.ndarray:
        """One-shot: {topic: msg} -> observation vector (used by the in-process evaluator)."""
        for topic, msg in messages.items():
            self.update(topic, msg, stamp)
        return self.vector()
