"""Episode recorder: one rosbag2 (MCAP) per episode, raw CDR straight from DDS to disk.

The ROS shell around `core.data.bagio.EpisodeBagWriter` (no deserialization on the hot path; the
core writer does the file format, crash safety and metadata).
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message

from bc_msgs.srv import StartEpisode, StopEpisode

from ..core.data import rostypes
from ..core.data.bagio import BagWriteError, EpisodeBagWriter
from ..core.data.bagread import BagReadError, recover_all, recover_bag
from ..core.sim.env import resolve_contract
from ..core.contract import COMMAND_TYPES, IMAGE_TYPES, Contract, ContractError
from ..core.data.alignment import part_command
from . import qos
from .common import ERROR, OK, WARN, Diagnostics, JsonStatus, ThrottledLog, message_class, normalize_type, run_node
from .params import declare_and_load, doc

NODE_NAME = "recorder"
LOG_EVERY_S = 5.0          # throttle of warnings raised in message callbacks
BATCH = 256                # messages per topic taken directly after each executor dispatch
TIMESTAMPS = {"log_time": "dds_reception", "publish_time": "dds_source"}
TIMESTAMPS_SIM = {"log_time": "node_clock_sim_time", "publish_time": "dds_source"}
QOS_CHECK_PERIOD_S = 0.5   # how often the offered QoS of every topic's publishers is looked at


class RecorderError(RuntimeError):
    """The recorder cannot start (bad parameter, unknown type, unwritable output_dir)."""


@dataclass(frozen=True)
class RecorderParams:
    contract: str = doc("contract YAML (or metaworld/<task>); its observation topics and action "
                        "topics are recorded ('' = only extra_topics)", "")
    extra_topics: Tuple[str, ...] = doc(
        "more topics to record, each 'topic:pkg/msg/Type'",
        ("/task_state:bc_msgs/msg/TaskState", "/dagger/frame_tag:bc_msgs/msg/FrameTag"))
    output_dir: str = doc("folder of episode bags (one rosbag2/MCAP directory per episode)", "bags")
    flush_interval_s: float = doc("s; data reaches the OS at least this often (kill -9 loses at "
                                  "most this)", 0.2)
    queue_depth: int = doc("reliable keep-last depth of every subscription (messages)", 1000)
    image_queue_depth: int = doc("keep-last depth of camera topics (sensor_msgs/Image, CompressedImage): "
                                 "frames; 100 = 2 s at 50 Hz, a 224x224 raw frame is 150 kB", 100)
    recover_on_start: bool = doc("recover bags left open by a crash at start-up (marked incomplete)", True)
    compression: str = doc("MCAP chunk compression: zstd | lz4 | none", "zstd")
    fsync: bool = doc("fsync at every flush (survives power loss; one disk sync per flush)", False)
    status_period_s: float = doc("s; period of ~/status and /diagnostics", 0.5)
    stop_settle_s: float = doc("s; stop_episode keeps recording until no message arrived for this "
                               "long (at most 20x), so data still in flight is not cut off", 0.05)

    def __post_init__(self):
        if not self.contract and not self.extra_topics:
            raise ValueError("contract and extra_topics are both empty: nothing to record")
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        if not self.flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {self.flush_interval_s}")
        if self.queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {self.queue_depth}")
        if self.image_queue_depth < 1:
            raise ValueError(f"image_queue_depth must be >= 1, got {self.image_queue_depth}")
        if self.compression not in ("zstd", "lz4", "none"):
            raise ValueError(f"compression must be zstd | lz4 | none, got {self.compression!r}")
        if not self.status_period_s > 0:
            raise ValueError(f"status_period_s must be > 0, got {self.status_period_s}")
        if self.stop_settle_s < 0:
            raise ValueError(f"stop_settle_s must be >= 0, got {self.stop_settle_s}")


# ------------------------------------------------------------------------------ helpers
def installed_definition(msgtype: str) -> Optional[str]:
    """.msg text of an installed ROS package's message (share/<pkg>/msg/<Name>.msg), or None."""
    pkg, _, name = msgtype.split("/")
    try:
        from ament_index_python.packages import get_package_share_directory
        path = Path(get_package_share_directory(pkg)) / "msg" / f"{name}.msg"
    except Exception:  # noqa: BLE001 - package not in the ament index
        return None
    return path.read_text() if path.is_file() else None


def parse_extra_topic(item: str) -> Tuple[str, str]:
    topic, sep, typ = item.rpartition(":")
    if not sep or not topic.startswith("/") or not typ:
        raise ValueError(f"extra_topics entry {item!r} is not 'topic:pkg/msg/Type' with an "
                         f"absolute topic")
    return topic.strip(), normalize_type(typ)


def resolve_topics(params: RecorderParams) -> Tuple[Dict[str, str], Optional[Contract]]:
    """{topic: 'pkg/msg/Type'} from the contract + extra_topics, every type checked on both
    sides (rclpy class to subscribe, typestore definition to write). RecorderError names the
    topic and the type."""
    topics: Dict[str, str] = {}
    contract = None
    if params.contract:
        try:
            contract = resolve_contract(params.contract)
        except ContractError as e:
            raise RecorderError(f"contract: {e}") from None
        topics.update(contract.topics())
    for item in params.extra_topics:
        try:
            topic, typ = parse_extra_topic(item)
        except ValueError as e:
            raise RecorderError(str(e)) from None
        if topics.get(topic, typ) != typ:
            raise RecorderError(f"topic {topic} is {topics[topic]} in the contract but {typ} in "
                                f"extra_topics")
        topics[topic] = typ
    for topic, typ in topics.items():
        try:
            message_class(typ)
            rostypes.ensure_type(typ, installed_definition)
        except (RecorderError, ValueError) as e:
            raise RecorderError(f"cannot record topic {topic}: type {typ}: {e}") from None
    return topics, contract


def _qos_time(d) -> "object":
    from rosbags.rosbag2.metadata import QosTime

    ns = int(getattr(d, "nanoseconds", 0) or 0)
    if ns <= 0 or ns >= 0x7FFFFFFF * 10**9:  # "infinite"/default
        return QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF) if ns else QosTime(sec=0, nsec=0)
    return QosTime(sec=ns // 10**9, nsec=ns % 10**9)


def bag_qos(profile) -> "object":
    """rclpy QoSProfile -> rosbags Qos (for the bag's offered_qos_profiles; same enum values)."""
    from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability

    def enum(cls, v):
        try:
            return cls(int(v))
        except ValueError:
            return cls.UNKNOWN

    return Qos(history=enum(QosHistory, profile.history), depth=int(profile.depth),
               reliability=enum(QosReliability, profile.reliability),
               durability=enum(QosDurability, profile.durability),
               deadline=_qos_time(profile.deadline), lifespan=_qos_time(profile.lifespan),
               liveliness=enum(QosLiveliness, profile.liveliness),
               liveliness_lease_duration=_qos_time(profile.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions))


def check_output_dir(path: Path) -> None:
    """Create output_dir and prove it is writable (a probe file; os.access lies for root)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".recorder_probe_{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
        probe.unlink()
    except OSError as e:
        raise RecorderError(f"output_dir {str(path)!r} is not writable: "
                            f"{e.strerror or e}") from None


def wanted_reliability(offered: List[object], current: object, episode_open: bool) -> object:
    """Reliability of a topic's subscription given its publishers' offered reliabilities (the
    rule of `ros2 bag record`): best effort if any publisher is best effort - a reliable
    subscription never matches a best-effort publisher, so it would record nothing of it -,
    else reliable, which a best-effort subscription would not be (it may drop under load).
    No publishers: keep `current`. Back to reliable only between episodes: a switch loses what
    is in flight while the new subscription matches, and a best-effort one loses nothing of a
    reliable publisher on an idle machine."""
    if not offered:
        return current
    want = (ReliabilityPolicy.BEST_EFFORT if any(r == ReliabilityPolicy.BEST_EFFORT for r in offered)
            else ReliabilityPolicy.RELIABLE)
    if want == ReliabilityPolicy.RELIABLE and episode_open:
        return current
    return want


def _reliability_name(r) -> str:
    return "best_effort" if r == ReliabilityPolicy.BEST_EFFORT else "reliable"


class _Subscription:
    """One recorded topic: its rclpy subscription (recreated when the QoS must change)."""
    __slots__ = ("topic", "cls", "profile", "record", "sub")

    def __init__(self, topic: str, cls, profile: QoSProfile, record: Callable):
        self.topic, self.cls, self.profile, self.record, self.sub = topic, cls, profile, record, None


class _TopicStats:
    __slots__ = ("received", "written", "idle", "rejected", "lost", "ep_rejected", "bytes")

    def __init__(self):
        self.received = self.written = self.idle = self.rejected = self.lost = self.ep_rejected = 0
        self.bytes = 0      # CDR bytes written (all episodes)


# ------------------------------------------------------------------------------- node
class RecorderNode(Node):
    """Records the contract's topics (+ extra topics) into one rosbag2/MCAP bag per episode.

    Subscribes (raw CDR, keep-last `queue_depth`, volatile; reliable like `qos.STATE` /
    `qos.COMMAND` unless a publisher offers best effort): every observation topic and the
    action topic of `contract`, plus `extra_topics` (default `/task_state`,
    `/dagger/frame_tag`). Types are resolved at run time from the type strings. Every
    QOS_CHECK_PERIOD_S the offered QoS of each topic's discovered publishers is looked at
    (`wanted_reliability`, the rule of `ros2 bag record`): a best-effort publisher (camera
    drivers, sensor data) switches that topic's subscription to best effort at once - a
    reliable one would never match it -; only reliable publishers switch it back to reliable
    between episodes. Status `qos` says which one each topic has.

    Cameras: the contract's image terms are observation topics like the others, so their
    topic is recorded as the contract names it - `sensor_msgs/CompressedImage` (the JPEG bytes
    as published, nothing re-encoded) or raw `sensor_msgs/Image` - with keep-last
    `image_queue_depth` (frames are large; a reliable publisher such as the bridge's loses none,
    a best-effort camera driver switches the subscription to best effort as above). Frames are
    decoded only by the dataset builder (`core.data.alignment`, per-frame as-of / nearest
    matching with a max age). Cost: bench/bench_recorder_images.py.

    Publishes:
      `~/status` (std_msgs/String, JSON, transient local, every `status_period_s` and on every
      start/stop): state (idle | recording | error), pid, open episode (path, id, written/rejected
      per topic), per-topic totals (received, written, idle = received with no episode open,
      rejected, lost = received but not written because the bag failed), bytes (CDR bytes
      written per topic), matched publishers, qos (reliable | best_effort per topic),
      episodes finished/discarded/failed, last_error.
      `/diagnostics` (diagnostic_msgs/DiagnosticArray): the same counters; WARN on rejected
      commands, ERROR after a write failure.

    Services:
      `~/start_episode` (bc_msgs/StartEpisode): opens `<output_dir>/episode_<id>_seed_<seed>/`
      (suffix `_2`, `_3`... if it exists); success=false with the reason if an episode is
      open or the bag cannot be created (disk full, unwritable folder). Messages already
      queued when the request is served were sent before it: counted idle, not recorded.
      `~/stop_episode` (bc_msgs/StopEpisode): records what is queued or still arriving (until
      `stop_settle_s` without a message), then finalizes the bag (complete=true,
      task_success, outcome, notes) or deletes it (discard); success=false with the reason
      if no episode is open or the bag failed (it is then recovered as incomplete).

    Parameters: contract, extra_topics, output_dir, flush_interval_s, queue_depth,
    image_queue_depth, recover_on_start, compression, fsync, status_period_s, stop_settle_s (config/recorder.yaml).

    Time stamps: MCAP log_time = DDS reception time (wall clock, in arrival order) or, with
    use_sim_time, the node clock (sim time) at the callback (reception time while no /clock
    has arrived); publish_time = the sender's DDS
    source timestamp (rosbag2's send_timestamp). Header stamps stay in the messages.
    Command messages whose size does not match the contract are recorded as received but
    counted as rejected (status, diagnostics, episode.yaml `rejected`); the dataset builder
    excludes such episodes with the reason.
    SIGINT/SIGTERM (`common.run_node`): the open episode is closed outside any callback with
    complete=false, outcome "interrupted (SIGINT)" / "interrupted (SIGTERM)", and a last status
    is published. kill -9: recover_on_start repairs the cut bag at the next start. Unknown types / unwritable output_dir: the node exits at start
    with a message naming the topic and type / the folder.
    """

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare_and_load(self, RecorderParams)
        self.topics, self.contract = resolve_topics(self.params)
        self.output_dir = Path(self.params.output_dir).expanduser().resolve()
        check_output_dir(self.output_dir)
        if self.params.recover_on_start:
            self._recover()
        self._sim_time = bool(self.get_parameter("use_sim_time").value)
        self._lock = threading.Lock()
        self._writer: Optional[EpisodeBagWriter] = None
        self._write_error = ""
        self.last_error = ""
        self.stats: Dict[str, _TopicStats] = {t: _TopicStats() for t in self.topics}
        self.episodes = {"finished": 0, "discarded": 0, "failed": 0}
        self._warn = ThrottledLog(self.get_logger(), LOG_EVERY_S)   # one key: rejected commands
        self._draining = False
        self._subs: Dict[str, _Subscription] = {}
        cmd_topics = {p.topic for p in self.contract.action.parts} if self.contract else set()
        for topic, typ in self.topics.items():
            cls = message_class(typ)
            is_cmd = topic in cmd_topics or typ in COMMAND_TYPES
            depth = self.params.image_queue_depth if typ in IMAGE_TYPES else self.params.queue_depth
            profile = QoSProfile(history=(qos.COMMAND if is_cmd else qos.STATE).history,
                                 depth=depth,
                                 reliability=(qos.COMMAND if is_cmd else qos.STATE).reliability,
                                 durability=(qos.COMMAND if is_cmd else qos.STATE).durability)
            check = self._command_check(topic, cls) if topic in cmd_topics else None
            entry = _Subscription(topic, cls, profile, self._make_recorder(topic, check))
            entry.sub = self.create_subscription(cls, topic, self._batched(entry.record), profile, raw=True)
            self._subs[topic] = entry
        self.status_pub = JsonStatus(self)
        self.diagnostics = Diagnostics(self, "episode recorder")
        self.create_service(StartEpisode, "~/start_episode", self._on_start)
        self.create_service(StopEpisode, "~/stop_episode", self._on_stop)
        self.create_timer(max(0.02, self.params.flush_interval_s / 2), self._on_flush_timer)
        self.create_timer(self.params.status_period_s, self.publish_status)
        self.create_timer(QOS_CHECK_PERIOD_S, self.adapt_qos)
        self.get_logger().info(
            f"recording {len(self.topics)} topics into {self.output_dir}: "
            + ", ".join(f"{t} ({ty})" for t, ty in self.topics.items()))
        self.publish_status()

    # ------------------------------------------------------------------ start-up
    def _recover(self) -> None:
        try:
            results = recover_all([self.output_dir])
        except (BagReadError, OSError) as e:
            self.get_logger().error(f"recovery of bags in {self.output_dir} failed: {e}")
            return
        for r in results:
            self.get_logger().warn(f"recovered interrupted episode {r['path']}: {r['messages']} "
                                   f"messages kept, {r['bytes_dropped']} bytes dropped "
                                   f"({r['reason']}); marked incomplete")

    def _command_check(self, topic: str, cls) -> Callable[[bytes], str]:
        contract = self.contract

        def check(raw: bytes) -> str:
            try:
                part_command(contract, topic, deserialize_message(raw, cls))
                return ""
            except (ContractError, ValueError, TypeError, IndexError) as e:
                return str(e)
        return check

    # ------------------------------------------------------------------ QoS
    def adapt_qos(self) -> List[str]:
        """Re-subscribe every topic whose publishers' offered reliability asks for another
        subscription (`wanted_reliability`). Returns the topics switched."""
        switched = []
        for entry in self._subs.values():
            try:
                offered = [i.qos_profile.reliability
                           for i in self.get_publishers_info_by_topic(entry.sub.topic_name)]
            except Exception:  # noqa: BLE001 - graph query failed (shutting down): next time
                continue
            want = wanted_reliability(offered, entry.profile.reliability, self._writer is not None)
            if want != entry.profile.reliability:
                self._resubscribe(entry, want)
                switched.append(entry.topic)
        return switched

    def _resubscribe(self, entry: _Subscription, reliability) -> None:
        """Replace a topic's subscription by one with `reliability` (same depth, volatile).
        What the old one still holds is recorded first; it is destroyed before the new one is
        created, so no message is recorded twice."""
        old = entry.profile
        entry.profile = QoSProfile(history=old.history, depth=old.depth, reliability=reliability,
                                   durability=old.durability)
        self._take_all(entry.sub, entry.record, 2 * self.params.queue_depth)
        self.destroy_subscription(entry.sub)
        entry.sub = self.create_subscription(entry.cls, entry.topic, self._batched(entry.record),
                                             entry.profile, raw=True)
        self.get_logger().info(f"{entry.topic}: subscription now {_reliability_name(reliability)} "
                               f"(the QoS its publishers offer)")

    # ------------------------------------------------------------------ hot path
    def _batched(self, record: Callable):
        """Subscription callback: record the message, then everything else already queued on
        every topic (take_message costs a fraction of an executor dispatch, so a backlog
        drains several times faster; order in the bag is by receive time anyway)."""
        def on_message(raw: bytes, info) -> None:
            record(raw, info)
            if not self._draining:
                self._draining = True
                try:
                    self.drain(BATCH)
                finally:
                    self._draining = False
        return on_message

    def _make_recorder(self, topic: str, check: Optional[Callable[[bytes], str]]):
        stats = self.stats[topic]
        sim_time = self._sim_time
        clock = self.get_clock()

        def record(raw: bytes, info) -> None:
            stats.received += 1
            if check is not None:
                reason = check(raw)
                if reason:
                    stats.rejected += 1
                    self._warn.warning("rejected", f"{topic}: command rejected (recorded as received): {reason}")
                    if self._writer is not None:
                        stats.ep_rejected += 1
            w = self._writer
            if w is None:
                stats.idle += 1
                return
            recv = clock.now().nanoseconds if sim_time else 0     # sim time: 0 until /clock runs
            if recv <= 0:
                recv = info.get("received_timestamp") or time.time_ns()
            src = info.get("source_timestamp") or recv
            try:
                w.write(topic, raw, recv, src)
                stats.written += 1
                stats.bytes += len(raw)
            except (BagWriteError, OSError, KeyError) as e:
                stats.lost += 1
                self._on_write_error(e)
        return record

    def _on_write_error(self, e: Exception) -> None:
        if not self._write_error:
            self._write_error = str(e)
            self.last_error = str(e)
            self.get_logger().error(f"episode bag write failed, no more messages are written to "
                                    f"it: {e}")
            self.publish_status()

    def _on_flush_timer(self) -> None:
        w = self._writer
        if w is None or self._write_error:
            return
        try:
            w.flush_if_due()
        except (BagWriteError, OSError) as e:
            self._on_write_error(e)

    def settle(self, quiet_s: float) -> int:
        """Record queued messages until none has arrived for quiet_s (at most 20 x quiet_s)."""
        n = self.drain()
        start = quiet_since = time.monotonic()
        while quiet_s > 0:
            time.sleep(min(0.002, quiet_s / 4))
            k = self.drain()
            now = time.monotonic()
            if k:
                n += k
                quiet_since = now
            elif now - quiet_since >= quiet_s or now - start >= 20 * quiet_s:
                break
        return n

    def drain(self, max_per_topic: Optional[int] = None) -> int:
        """Take and record every message already queued in the subscriptions (so a stop
        request that overtakes data in the executor does not cut the episode short)."""
        limit = max_per_topic or 2 * self.params.queue_depth
        return sum(self._take_all(e.sub, e.record, limit) for e in list(self._subs.values()))

    @staticmethod
    def _take_all(sub, record: Callable, limit: int) -> int:
        n = 0
        for _ in range(limit):
            try:
                with sub.handle:
                    got = sub.handle.take_message(sub.msg_type, True)
            except Exception:  # noqa: BLE001 - internal API missing / destroyed: skip
                break
            if got is None:
                break
            record(got[0], got[1] if len(got) > 1 else {})
            n += 1
        return n

    # ------------------------------------------------------------------ services
    def _episode_dir(self, episode_id: int, seed: int) -> Path:
        base = f"episode_{episode_id:06d}_seed_{seed}"
        path, k = self.output_dir / base, 1
        while path.exists():
            k += 1
            path = self.output_dir / f"{base}_{k}"
        return path

    def _offered_qos(self, topic: str) -> list:
        try:
            return [bag_qos(i.qos_profile) for i in self.get_publishers_info_by_topic(topic)]
        except Exception:  # noqa: BLE001 - metadata only
            return []

    def open_episode(self, task: str, seed: int, episode_id: int, source: str = "expert",
                     notes: str = "") -> Path:
        """Open a new episode bag (BagWriteError/ValueError/RuntimeError with the reason)."""
        if self._writer is not None:
            raise RuntimeError(f"episode {self._writer.meta.get('episode_id')} is still open "
                               f"({self._writer.path}); stop it first")
        path = self._episode_dir(episode_id, seed)
        meta = {"task": task, "seed": int(seed), "episode_id": int(episode_id),
                "source": source or "expert", "notes": notes,
                "recorder": {"node": self.get_fully_qualified_name(),
                             "timestamps": TIMESTAMPS_SIM if self._sim_time else TIMESTAMPS,
                             "queue_depth": self.params.queue_depth,
                             "image_queue_depth": self.params.image_queue_depth}}
        if self.contract is not None:
            meta["contract"] = {"name": self.contract.name, "fingerprint": self.contract.fingerprint(),
                                "path": str(self.params.contract), "spec": self.contract.to_dict()}
        writer = EpisodeBagWriter(path, self.topics, meta, compression=self.params.compression,
                                  flush_interval_s=self.params.flush_interval_s,
                                  fsync=self.params.fsync,
                                  qos={t: self._offered_qos(t) for t in self.topics})
        for s in self.stats.values():
            s.ep_rejected = 0
        self._write_error = ""
        self._writer = writer
        return path

    def close_episode(self, complete: bool, **updates) -> Tuple[Optional[Path], int, str]:
        """Finalize the open episode. Returns (path, messages written, error or '')."""
        w = self._writer
        if w is None:
            return None, 0, "no episode is open"
        self._writer = None
        rejected = {t: s.ep_rejected for t, s in self.stats.items() if s.ep_rejected}
        updates["rejected"] = rejected
        written = w.message_count
        if self._write_error:
            error = self._write_error
            self.episodes["failed"] += 1
            try:
                w.close(complete=False)
                r = recover_bag(w.path)
                error += f"; bag recovered as incomplete ({r.get('messages', 0)} messages)"
            except (BagWriteError, BagReadError, OSError) as e:
                error += f"; bag left as is ({e}); run `bc-policy dataset recover` on it"
            self.last_error = error
            return w.path, written, error
        try:
            w.close(complete=complete, **updates)
        except (BagWriteError, OSError) as e:
            self.episodes["failed"] += 1
            self.last_error = str(e)
            return w.path, written, str(e)
        self.episodes["finished"] += 1
        return w.path, written, ""

    def _on_start(self, req, resp):
        if self._writer is None:
            self.drain()     # queued before the request: not part of the episode (counted idle)
        try:
            path = self.open_episode(req.task, req.seed, req.episode_id, req.source, req.notes)
        except (BagWriteError, OSError, ValueError, RuntimeError, rostypes.MessageTypeError) as e:
            resp.success, resp.message = False, str(e)
            self.last_error = str(e)
            self.get_logger().error(f"start_episode failed: {e}")
        else:
            resp.success, resp.message, resp.bag_path = True, "recording", str(path)
            self.get_logger().info(f"episode {req.episode_id} (seed {req.seed}, {req.source or 'expert'}) "
                                   f"-> {path}")
        self.publish_status()
        return resp

    def _on_stop(self, req, resp):
        if self._writer is not None:
            self.settle(self.params.stop_settle_s)
        outcome = req.outcome or ("success" if req.task_success else "failure")
        path, written, error = self.close_episode(True, success=bool(req.task_success),
                                                  outcome=outcome, notes=req.notes)
        resp.messages_written = int(written)
        if path is None:
            resp.success, resp.message = False, error
        elif error:
            resp.success, resp.message, resp.bag_path = False, error, str(path)
            self.get_logger().error(f"stop_episode: {error}")
        elif req.discard:
            shutil.rmtree(path, ignore_errors=True)
            self.episodes["finished"] -= 1
            self.episodes["discarded"] += 1
            resp.success, resp.message, resp.bag_path = True, "discarded", ""
            self.get_logger().info(f"episode discarded ({written} messages): {path}")
        else:
            resp.success, resp.message, resp.bag_path = True, "saved", str(path)
            self.get_logger().info(f"episode saved: {path} ({written} messages, "
                                   f"success={req.task_success}, outcome={outcome})")
        self.publish_status()
        return resp

    def shutdown(self, reason: str) -> Optional[Path]:
        """Finalize an open episode as incomplete (SIGINT / SIGTERM / node shutdown), then
        publish a last status. Returns the bag path, or None if no episode was open."""
        path = None
        if self._writer is not None:
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - context may be gone already
                pass
            path, written, error = self.close_episode(False, outcome=f"interrupted ({reason})")
            log = self.get_logger()
            if error:
                log.error(f"open episode at shutdown: {error}")
            else:
                log.warn(f"open episode finalized as incomplete ({reason}): {path}, {written} messages")
        try:
            self.publish_status()
        except Exception:  # noqa: BLE001 - context may be gone already
            pass
        return path

    # ------------------------------------------------------------------ status
    def status(self) -> Dict[str, object]:
        w = self._writer
        pubs = {}
        for e in self._subs.values():
            try:
                pubs[e.sub.topic_name] = e.sub.get_publisher_count()
            except Exception:  # noqa: BLE001
                pubs[e.sub.topic_name] = -1
        state = "error" if self._write_error else ("recording" if w is not None else "idle")
        return {
            "state": state, "pid": os.getpid(),
            "episode": None if w is None else {
                "path": str(w.path), "episode_id": w.meta.get("episode_id"),
                "seed": w.meta.get("seed"), "task": w.meta.get("task"),
                "written": dict(w.counts),
                "rejected": {t: s.ep_rejected for t, s in self.stats.items() if s.ep_rejected}},
            "received": {t: s.received for t, s in self.stats.items()},
            "written": {t: s.written for t, s in self.stats.items()},
            "idle": {t: s.idle for t, s in self.stats.items()},
            "rejected": {t: s.rejected for t, s in self.stats.items()},
            "lost": {t: s.lost for t, s in self.stats.items()},
            "bytes": {t: s.bytes for t, s in self.stats.items()},
            "publishers": pubs,
            "qos": {t: _reliability_name(e.profile.reliability) for t, e in self._subs.items()},
            "episodes": dict(self.episodes),
            "output_dir": str(self.output_dir),
            "last_error": self.last_error,
        }

    def publish_status(self) -> None:
        st = self.status()
        self.status_pub.publish(st)
        rejected = sum(st["rejected"].values())
        lost = sum(st["lost"].values())
        if st["state"] == "error" or lost:
            level, message = ERROR, f"write failed: {st['last_error']}"
        elif rejected:
            level, message = WARN, f"{rejected} commands rejected (size/contract)"
        else:
            level, message = OK, st["state"]
        values = {"state": st["state"], "episode": (st["episode"] or {}).get("path", "") or "",
                  "episodes_finished": st["episodes"]["finished"], "rejected": rejected, "lost": lost}
        values.update({f"received {t}": n for t, n in st["received"].items()})
        self.diagnostics.publish(level, message, values)


def main(args=None) -> int:
    return run_node(RecorderNode, NODE_NAME, (RecorderError, ValueError), args)


if __name__ == "__main__":
    raise SystemExit(main())
