"""One rosbag2 (MCAP storage) per episode, written without ROS and safe against crashes.

Layout of an episode bag directory `<dir>/`::

    episode.yaml        episode metadata; written with complete=false at start, rewritten
                        (atomically) with complete=true as the very last step of close()
    metadata.yaml       rosbag2 v9 metadata (Jazzy), written by close() or recover_bag()
    <name>_0.mcap       MCAP, profile ros2: schemas `ros2msg`, messages `cdr`, chunked

Library choice (measured, bench/bench_recorder_io.py): the `mcap` writer and the `rosbags`
writer both take ~300k pre-serialized rows/s; only `mcap` lets us set the chunk size, flush
on demand, write publish_time != log_time and add our own metadata records, which crash
safety and provenance need. `rosbags` provides the types (definitions, RIHS01 hashes, CDR).

Timestamps: log_time = receive time (what `ros2 bag record` stores as recv_timestamp);
publish_time = the caller's `publish_time_ns` when given (the recorder node passes the DDS
source timestamp, rosbag2's send_timestamp, and says so in episode.yaml
`recorder.timestamps`), else header.stamp for messages that start with a std_msgs/Header
(read from the CDR bytes without deserializing), else the receive time.

Crash safety: chunks are closed and flushed to the OS every `flush_interval_s` (default
0.2 s) or `chunk_size` bytes, so a `kill -9` loses at most that much; the episode stays marked
complete=false and `recover_bag()` rewrites the truncated MCAP into a valid bag.
`fsync=True` also survives power loss at each flush (costs a disk sync per flush); close()
always fsyncs. Writes only trigger the time-based flush, so a recorder should also call
`flush_if_due()` from a timer. SIGINT: a recorder should stop feeding the writer and call
`close(complete=False)`; used as a context manager, a KeyboardInterrupt does exactly that.
Episode metadata is stored three times: `episode.yaml` (authoritative), MCAP metadata records
named `bc_policy.episode` (one at start, one at close; the last one wins) and
`metadata.yaml` custom_data (keys `bc_policy.*`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from . import rostypes

EPISODE_FILE = "episode.yaml"
EPISODE_FORMAT = "bc_policy.episode/1"
MCAP_EPISODE_RECORD = "bc_policy.episode"
SOURCES = ("expert", "policy", "intervention", "dagger", "teleop")
ROSBAG2_VERSION = 9  # Jazzy
_CUSTOM_PREFIX = "bc_policy."


class BagWriteError(OSError):
    """An episode bag could not be created or written (names the path)."""

    def __init__(self, path, reason: str):
        super().__init__(f"episode bag {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


# ----------------------------------------------------------------------------- metadata
def _iso(ns: Optional[int]) -> Optional[str]:
    if ns is None:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).isoformat()


def make_episode_meta(meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Episode metadata with defaults filled in and `source` validated."""
    m: Dict[str, Any] = {"format": EPISODE_FORMAT, "episode_id": None, "task": "", "seed": None,
                         "source": "expert", "success": None, "outcome": "", "notes": "",
                         "complete": False, "start_time_ns": None, "stop_time_ns": None,
                         "counts": {}}
    m.update(dict(meta or {}))
    if m["source"] not in SOURCES:
        raise ValueError(f"episode source {m['source']!r} is not one of {SOURCES}")
    return m


def _plain(o: Any) -> Any:
    """YAML/JSON-safe copy (numpy scalars/arrays -> Python)."""
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return o


def atomic_write_text(path: Path, text: str, fsync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_episode_yaml(bag_dir, meta: Mapping[str, Any]) -> None:
    atomic_write_text(Path(bag_dir) / EPISODE_FILE,
                      yaml.safe_dump(_plain(meta), sort_keys=False, default_flow_style=False))


def episode_record(meta: Mapping[str, Any]) -> Dict[str, str]:
    """MCAP metadata record payload (string -> string): the JSON plus flat readable keys."""
    flat = {k: (v if isinstance(v, str) else json.dumps(_plain(v)))
            for k, v in meta.items() if k != "counts"}
    flat["json"] = json.dumps(_plain(meta), sort_keys=True)
    return flat


def custom_data(meta: Mapping[str, Any]) -> Dict[str, str]:
    out = {_CUSTOM_PREFIX + k: (v if isinstance(v, str) else json.dumps(_plain(v)))
           for k, v in meta.items() if k in ("task", "episode_id", "seed", "source", "success",
                                              "outcome", "complete", "recovered")}
    out[_CUSTOM_PREFIX + "episode_json"] = json.dumps(_plain(meta), sort_keys=True)
    return out


def qos_yaml(profiles: Sequence[Any]) -> Tuple[list, str]:
    """(v9 metadata.yaml list, MCAP channel string) for rosbags `Qos` profiles."""
    from rosbags.rosbag2.metadata import dump_qos_v9

    lst = dump_qos_v9(list(profiles))
    return lst, yaml.safe_dump(lst, default_flow_style=False).strip() if lst else "[]"


def bag_info_dict(mcap_name: str, topics: Sequence[Tuple[str, str, str, list]],
                  counts: Mapping[str, int], start_ns: int, end_ns: int,
                  custom: Mapping[str, str], compression: str = "") -> Dict[str, Any]:
    """`rosbag2_bagfile_information` (v9). topics: (name, type, rihs01, qos list)."""
    if not any(counts.values()):
        start_ns = end_ns = 0
    duration = max(0, end_ns - start_ns)
    total = int(sum(counts.values()))
    return {
        "version": ROSBAG2_VERSION, "storage_identifier": "mcap",
        "duration": {"nanoseconds": duration},
        "starting_time": {"nanoseconds_since_epoch": start_ns},
        "message_count": total,
        "topics_with_message_count": [
            {"topic_metadata": {"name": name, "type": typ, "serialization_format": "cdr",
                                "offered_qos_profiles": qos, "type_description_hash": rihs},
             "message_count": int(counts.get(name, 0))}
            for name, typ, rihs, qos in topics],
        "compression_format": "", "compression_mode": "",
        "relative_file_paths": [mcap_name],
        "files": [{"path": mcap_name, "starting_time": {"nanoseconds_since_epoch": start_ns},
                   "duration": {"nanoseconds": duration}, "message_count": total}],
        "custom_data": dict(custom) or None,
        "ros_distro": "jazzy",
    }


def write_metadata_yaml(bag_dir, info: Mapping[str, Any]) -> None:
    atomic_write_text(Path(bag_dir) / "metadata.yaml",
                      yaml.safe_dump({"rosbag2_bagfile_information": _plain(info)},
                                     sort_keys=False, default_flow_style=False))


def mcap_writer(stream, compression: str, chunk_size: int):
    from mcap.writer import CompressionType, Writer

    comp = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
            "none": CompressionType.NONE, "": CompressionType.NONE}[compression]
    w = Writer(stream, chunk_size=chunk_size, compression=comp)
    w.start(profile="ros2", library="bc_policy_node/bagio (mcap-python)")
    return w


# ------------------------------------------------------------------------------- writer
class EpisodeBagWriter:
    """Writes one episode to a new rosbag2 directory (MCAP storage).

    topics: {topic: msg_type}, e.g. {"/joint_states": "sensor_msgs/msg/JointState"}.
    episode_meta: task, seed, episode_id, source (expert/policy/intervention/dagger/teleop),
    notes, ... (free extra keys are kept). The bag is opened by the constructor.

    `write(topic, msg, receive_time_ns)` takes CDR bytes (rclpy `raw=True` subscriptions) or a
    message-like object (rosbags message, `core.types` data, dict). Thread-safe.
    `close(complete=True, success=..., outcome=...)` finalizes; used as a context manager an
    exception (e.g. KeyboardInterrupt on SIGINT) finalizes a valid bag with complete=false.
    """

    def __init__(self, directory, topics: Mapping[str, str],
                 episode_meta: Optional[Mapping[str, Any]] = None, *,
                 compression: str = "zstd", chunk_size: int = 256 * 1024,
                 flush_interval_s: float = 0.2, fsync: bool = False,
                 qos: Optional[Mapping[str, Sequence[Any]]] = None, store=None):
        self.path = Path(directory)
        self.meta = make_episode_meta(episode_meta)
        self._store = store or rostypes.typestore()
        self._compression = compression
        self._flush_interval = float(flush_interval_s)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._closed = False
        self._error: Optional[BagWriteError] = None
        self.counts: Dict[str, int] = {t: 0 for t in topics}
        self.first_ns: Dict[str, Optional[int]] = {t: None for t in topics}
        self.last_ns: Dict[str, Optional[int]] = {t: None for t in topics}
        self._topics: List[Tuple[str, str, str, list]] = []
        self._chan: Dict[str, Tuple[int, bool]] = {}
        self._qos_str: Dict[str, str] = {}
        for topic, msgtype in topics.items():  # validate everything before touching disk
            rostypes.check_type(msgtype, self._store)
            if not str(topic).startswith("/"):
                raise ValueError(f"topic {topic!r} must be absolute")
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise BagWriteError(self.path, "exists already and is not empty; refusing to "
                                "overwrite (one new directory per episode)")
        self.mcap_name = f"{self.path.name}_0.mcap"
        self.meta["start_time_ns"] = self.meta["start_time_ns"] or time.time_ns()
        self.meta["start_time"] = _iso(self.meta["start_time_ns"])
        self.meta["complete"] = False
        self.meta["counts"] = dict(self.counts)
        self.meta["topics"] = dict(topics)
        self.meta["bag"] = {"storage": "mcap", "file": self.mcap_name, "compression": compression}
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_episode_yaml(self.path, self.meta)
            self._file = open(self.path / self.mcap_name, "xb", buffering=1 << 16)
            self._w = mcap_writer(self._file, compression, chunk_size)
            schemas: Dict[str, int] = {}
            for topic, msgtype in topics.items():
                msgdef, rihs, has_header = rostypes.type_info(msgtype, self._store)
                if msgtype not in schemas:
                    schemas[msgtype] = self._w.register_schema(msgtype, "ros2msg", msgdef.encode())
                qos_list, qos_str = qos_yaml((qos or {}).get(topic, ()))
                cid = self._w.register_channel(topic, "cdr", schemas[msgtype],
                                               {"offered_qos_profiles": qos_str,
                                                "topic_type_hash": rihs})
                self._chan[topic] = (cid, has_header)
                self._topics.append((topic, msgtype, rihs, qos_list))
            self._w.add_metadata(MCAP_EPISODE_RECORD, episode_record(self.meta))
            self._file.flush()
        except OSError as e:
            raise BagWriteError(self.path, f"cannot create: {e.strerror or e}") from e
        self._last_flush = time.monotonic()
        self._types = dict(topics)

    # ------------------------------------------------------------------ writing
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())

    def write(self, topic: str, msg: Any, receive_time_ns: int,
              publish_time_ns: Optional[int] = None, sequence: Optional[int] = None) -> None:
        chan = self._chan.get(topic)
        if chan is None:
            raise KeyError(f"topic {topic!r} was not declared for {self.path} "
                           f"(declared: {sorted(self._chan)})")
        cid, has_header = chan
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = bytes(msg)
        else:
            data = rostypes.serialize(self._types[topic], msg, self._store)
        receive_time_ns = int(receive_time_ns)
        if publish_time_ns is None:
            publish_time_ns = rostypes.header_stamp_ns(data, has_header) if has_header else None
            if publish_time_ns is None or publish_time_ns < 0:
                publish_time_ns = receive_time_ns
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise BagWriteError(self.path, "write after close")
            n = self.counts[topic]
            try:
                self._w.add_message(cid, receive_time_ns, data, int(publish_time_ns),
                                    (n if sequence is None else int(sequence)) & 0xFFFFFFFF)
                now = time.monotonic()
                if now - self._last_flush >= self._flush_interval:
                    self._flush_locked(self._fsync)
                    self._last_flush = now
            except OSError as e:
                self._fail(e)
            self.counts[topic] = n + 1
            if self.first_ns[topic] is None:
                self.first_ns[topic] = receive_time_ns
            self.last_ns[topic] = receive_time_ns

    def flush(self, fsync: bool = False) -> None:
        """Close the current chunk and hand everything to the OS (optionally fsync)."""
        with self._lock:
            if self._closed or self._error is not None:
                return
            try:
                self._flush_locked(fsync)
            except OSError as e:
                self._fail(e)
            self._last_flush = time.monotonic()

    def flush_if_due(self) -> bool:
        """Flush if `flush_interval_s` has passed since the last flush (call from a timer so
        that data written just before a pause in traffic reaches the OS too)."""
        if time.monotonic() - self._last_flush < self._flush_interval:
            return False
        self.flush(self._fsync)
        return True

    def _flush_locked(self, fsync: bool) -> None:
        self._w.flush()
        if fsync:
            os.fsync(self._file.fileno())

    def _fail(self, e: OSError) -> None:
        self._error = BagWriteError(self.path, f"write failed: {e.strerror or e} "
                                    f"(episode left incomplete; run recover_bag on it)")
        try:
            self._file.close()
        except OSError:
            pass
        raise self._error from e

    # ------------------------------------------------------------------ closing
    def _bag_info(self) -> Dict[str, Any]:
        firsts = [v for v in self.first_ns.values() if v is not None]
        lasts = [v for v in self.last_ns.values() if v is not None]
        return bag_info_dict(self.mcap_name, self._topics, self.counts,
                             min(firsts) if firsts else 0, max(lasts) if lasts else 0,
                             custom_data(self.meta), "")

    def close(self, complete: bool = True, **updates: Any) -> Path:
        """Finalize: MCAP summary, metadata.yaml, then episode.yaml (complete flag last).

        updates: success, outcome, notes or any other episode metadata.
        """
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            if self._error is not None:
                return self.path  # already reported; the bag is left for recover_bag()
            self.meta.update(updates)
            self.meta["complete"] = bool(complete)
            self.meta["stop_time_ns"] = time.time_ns()
            self.meta["stop_time"] = _iso(self.meta["stop_time_ns"])
            self.meta["counts"] = dict(self.counts)
            self.meta["first_receive_ns"] = dict(self.first_ns)
            self.meta["last_receive_ns"] = dict(self.last_ns)
            info = self._bag_info()
            try:
                self._w.add_metadata("rosbag2", {"serialized_metadata":
                                                 yaml.safe_dump(_plain(info), sort_keys=False)})
                self._w.add_metadata(MCAP_EPISODE_RECORD, episode_record(self.meta))
                self._w.finish()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                write_metadata_yaml(self.path, info)
                write_episode_yaml(self.path, self.meta)
            except OSError as e:
                self._error = BagWriteError(self.path, f"finalizing failed: {e.strerror or e}")
                try:
                    self._file.close()
                except OSError:
                    pass
                raise self._error from e
        return self.path

    def __enter__(self) -> "EpisodeBagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(complete=True)
        elif not isinstance(exc, BagWriteError):
            outcome = self.meta.get("outcome") or f"interrupted: {exc_type.__name__}"
            self.close(complete=False, outcome=outcome)


def recover_bag(path, **kwargs) -> Dict[str, Any]:
    """Turn a truncated episode bag into a valid one marked incomplete (see bagread)."""
    from .bagread import recover_bag as _recover

    return _recover(path, **kwargs)
