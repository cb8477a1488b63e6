"""ROS 2 message types without ROS: the rosbags typestore plus this package's bc_msgs.

One cached typestore (`typestore()`) holds the standard Jazzy types and the bc_msgs types
parsed from `bc_msgs/msg/*.msg`. It provides what a bag writer needs for every topic: the
full message definition (`ros2msg`, dependencies appended, the text MCAP schemas and rosbag2
carry), the RIHS01 type hash, and CDR (de)serialization.

`to_ros(msgtype, obj)` builds a rosbags message from plain data with the same field names —
`core.types.JointStateData` / `TaskStateData`, dicts, dataclasses — so tests and in-process
collectors can write the exact messages the bridge would publish. A float `stamp` attribute
becomes `header.stamp` (seconds -> sec/nanosec).
"""
from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

BC_MSGS_DIR = Path(__file__).resolve().parents[3] / "bc_msgs" / "msg"
HEADER_TYPE = "std_msgs/msg/Header"

_NUMERIC = {
    "float64": np.float64, "float32": np.float32, "double": np.float64, "float": np.float32,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
    "byte": np.uint8, "char": np.uint8, "octet": np.uint8, "bool": np.bool_,
}


class MessageTypeError(ValueError):
    """Unknown message type, or data that cannot be converted to it."""


def _load_bc_msgs(store, msg_dir: Path) -> None:
    from rosbags.typesys import get_types_from_msg

    types: Dict[str, Any] = {}
    for f in sorted(Path(msg_dir).glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"bc_msgs/msg/{f.stem}"))
    if types:
        store.register(types)


@lru_cache(maxsize=4)
def typestore(msg_dir: Optional[str] = None):
    """The shared typestore: ROS2_JAZZY standard types + bc_msgs (cached)."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    _load_bc_msgs(store, Path(msg_dir) if msg_dir else BC_MSGS_DIR)
    return store


def check_type(msgtype: str, store=None) -> None:
    store = store or typestore()
    if msgtype not in store.fielddefs:
        raise MessageTypeError(f"unknown message type {msgtype!r} (not in the Jazzy typestore "
                               f"nor in {BC_MSGS_DIR})")


def ensure_type(msgtype: str, find_definition, store=None) -> None:
    """Make `msgtype` (and the types it uses) known to the typestore.

    `find_definition(msgtype) -> .msg text or None` supplies definitions the store lacks (the
    recorder node looks them up in installed packages' share/<pkg>/msg/). Raises
    MessageTypeError naming the first type that cannot be found.
    """
    from rosbags.typesys import get_types_from_msg

    store = store or typestore()
    found: Dict[str, Any] = {}
    pending = [msgtype]
    while pending:
        t = pending.pop()
        if t in store.fielddefs or t in found:
            continue
        text = find_definition(t)
        if text is None:
            where = "" if t == msgtype else f" (used by {msgtype})"
            raise MessageTypeError(f"unknown message type {t!r}{where}: not in the Jazzy typestore, "
                                   f"bc_msgs or any installed package's msg/ folder")
        types = get_types_from_msg(text, t)
        found.update(types)
        for _consts, fields in types.values():
            for _name, (nodetype, desc) in fields:
                sub = desc[0] if nodetype in (3, 4) else (nodetype, desc)
                if sub[0] == 2:
                    pending.append(sub[1])
    if found:
        store.register(found)


def type_info(msgtype: str, store=None) -> Tuple[str, str, bool]:
    """(full ros2msg definition, RIHS01 hash, first field is a std_msgs/Header)."""
    store = store or typestore()
    check_type(msgtype, store)
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    fields = store.fielddefs[msgtype][1]
    has_header = bool(fields) and fields[0][0] == "header" and fields[0][1][1] == HEADER_TYPE
    return msgdef, store.hash_rihs01(msgtype), has_header


def header_stamp_ns(raw, has_header: bool = True) -> Optional[int]:
    """header.stamp of a CDR-serialized message whose first field is a Header, in ns.

    The stamp sits right after the 4-byte encapsulation header (int32 sec, uint32 nanosec),
    so this costs one struct unpack, no deserialization.
    """
    if not has_header or len(raw) < 12:
        return None
    fmt = "<iI" if raw[1] in (1, 3) else ">iI"
    sec, nsec = struct.unpack_from(fmt, raw, 4)
    return sec * 1_000_000_000 + nsec


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or float seconds, or int ns) -> int ns."""
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if isinstance(stamp, (float, np.floating)):
        return int(round(float(stamp) * 1e9))
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _time_from_seconds(store, t: float, typ: str = "builtin_interfaces/msg/Time"):
    ns = int(round(float(t) * 1e9))
    sec, nsec = divmod(ns, 1_000_000_000)
    return store.types[typ](sec=int(sec), nanosec=int(nsec))


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _has(obj: Any, name: str) -> bool:
    return (name in obj) if isinstance(obj, Mapping) else hasattr(obj, name)


def _base_value(typ: str, val: Any) -> Any:
    if typ == "string" or typ == "wstring":
        return "" if val is None else str(val)
    if typ == "bool":
        return bool(val) if val is not None else False
    if typ in ("float32", "float64", "float", "double"):
        return float(val) if val is not None else 0.0
    return int(val) if val is not None else 0


def to_ros(msgtype: str, obj: Any, store=None) -> Any:
    """Build a rosbags message of `msgtype` from `obj` (fields read by name).

    Missing fields get ROS defaults. A rosbags message of the right type is returned as is.
    """
    store = store or typestore()
    check_type(msgtype, store)
    cls = store.types[msgtype]
    if isinstance(obj, cls):
        return obj
    if msgtype in ("builtin_interfaces/msg/Time", "builtin_interfaces/msg/Duration") and \
            isinstance(obj, (int, float, np.integer, np.floating)):
        return _time_from_seconds(store, obj, msgtype)
    kwargs = {}
    for name, (nodetype, desc) in store.fielddefs[msgtype][1]:
        val = _get(obj, name)
        if name == "header" and desc == HEADER_TYPE and not _has(obj, "header"):
            stamp = _get(obj, "stamp", 0.0)
            val = {"stamp": stamp, "frame_id": _get(obj, "frame_id", "")}
        kwargs[name] = _convert(store, nodetype, desc, val, f"{msgtype}.{name}")
    return cls(**kwargs)


def _convert(store, nodetype: int, desc: Any, val: Any, where: str) -> Any:
    # Nodetype: 1 BASE, 2 NAME, 3 ARRAY, 4 SEQUENCE
    try:
        if nodetype == 1:
            return _base_value(desc[0], val)
        if nodetype == 2:
            return to_ros(desc, {} if val is None else val, store)
        (sub_type, sub_desc), length = desc
        if sub_type == 1:
            if sub_desc[0] in ("string", "wstring"):
                out = [str(v) for v in (val if val is not None else [])]
                return out + [""] * (length - len(out)) if nodetype == 3 else out
            dtype = _NUMERIC[sub_desc[0]]
            if isinstance(val, (bytes, bytearray, memoryview)):   # image data, CompressedImage bytes
                val = np.frombuffer(val, dtype=np.uint8)
            arr = np.asarray(val if val is not None else [], dtype=dtype).reshape(-1)
            if nodetype == 3 and arr.shape[0] != length:
                arr = np.zeros(length, dtype=dtype) if val is None else arr
                if arr.shape[0] != length:
                    raise MessageTypeError(f"{where}: needs exactly {length} values, got {arr.shape[0]}")
            return arr
        items = [to_ros(sub_desc, v, store) for v in (val if val is not None else [])]
        if nodetype == 3 and not items:
            items = [to_ros(sub_desc, {}, store) for _ in range(length)]
        return items
    except MessageTypeError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise MessageTypeError(f"{where}: cannot convert {type(val).__name__}: {e}") from None


def serialize(msgtype: str, obj: Any, store=None) -> bytes:
    """CDR bytes (little endian, as rclpy publishes) of `obj` converted to `msgtype`."""
    store = store or typestore()
    return bytes(store.serialize_cdr(to_ros(msgtype, obj, store), msgtype))


def deserialize(msgtype: str, raw, store=None) -> Any:
    store = store or typestore()
    return store.deserialize_cdr(raw, msgtype)
