"""Reading rosbag2 bags: metadata, messages, integrity checks and crash recovery.

Messages are read with `rosbags` (AnyReader: MCAP and sqlite3 rosbag2, so bags from
`ros2 bag record` work too); recovery reads truncated MCAP files record by record with the
`mcap` stream reader and stops at the first incomplete record.

Two kinds of bags (`is_ours`):

* ours - written by `bagio.EpisodeBagWriter` (or `recover_bag`): one episode, MCAP storage,
  episode metadata in episode.yaml / metadata.yaml custom_data / MCAP records. A bag left
  open by a crash `needs_recovery()` (no metadata.yaml or no MCAP footer) and is excluded
  from datasets until `recover_bag()` turned it into a valid bag marked complete=false.
* foreign - any other rosbag2 writer (`ros2 bag record`, rosbags, ...), sqlite3 or MCAP
  storage, no episode metadata of ours: `read_episode_meta()` gives source="foreign",
  complete=None (unknown), and the dataset builder treats it as a source of demonstrations
  (possibly many, see `segment`), never as an incomplete episode of ours. sqlite3 bags never
  need *our* recovery (rosbag2's sqlite3 storage is transactional); one without
  metadata.yaml is reported with rosbag2's own remedy (`ros2 bag reindex`) and never touched.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import yaml

from . import rostypes
from .rosbag_reader import BagReader, BagReadError
from .bagio import (EPISODE_FILE, MCAP_EPISODE_RECORD, _iso, bag_info_dict, custom_data,
                    episode_record, make_episode_meta, mcap_writer, qos_yaml,
                    write_episode_yaml, write_metadata_yaml)

_MAGIC = b"\x89MCAP0\r\n"
_SQLITE_NO_META = ("{d}: sqlite3 bag without metadata.yaml (its writer did not close it); "
                   "rebuild the metadata with `ros2 bag reindex {d} sqlite3`, then build again")


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int      # receive time
    msg: Any         # deserialized rosbags message


# ------------------------------------------------------------------------------ locating
def is_bag_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "metadata.yaml").is_file() or (p / EPISODE_FILE).is_file()
                           or any(p.glob("*.mcap")) or any(p.glob("*.db3")))


def find_bags(paths: Iterable) -> List[Path]:
    """Bag directories among `paths` (each a bag dir or a folder of bag dirs), sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in map(Path, paths):
        if is_bag_dir(p):
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if is_bag_dir(c)))
        elif not p.exists():
            raise BagReadError(f"no such bag directory or folder of bags: {p}")
        else:
            raise BagReadError(f"not a bag directory or a folder of bags: {p}")
    return out


def _bag_info(d: Path) -> Dict[str, Any]:
    meta = d / "metadata.yaml"
    if not meta.is_file():
        return {}
    try:
        return (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information") or {}
    except yaml.YAMLError as e:
        raise BagReadError(f"{meta}: not valid YAML ({e})") from None


def storage_id(bag_dir) -> Optional[str]:
    """'mcap' or 'sqlite3' (metadata.yaml storage_identifier, else the files' suffix), or None."""
    d = Path(bag_dir)
    sid = _bag_info(d).get("storage_identifier")
    if sid:
        return str(sid)
    if any(d.glob("*.mcap")):
        return "mcap"
    return "sqlite3" if any(d.glob("*.db3")) else None


def mcap_files(bag_dir) -> List[Path]:
    """The bag's MCAP files (none for sqlite3 storage)."""
    d = Path(bag_dir)
    files = [d / f for f in _bag_info(d).get("relative_file_paths", [])]
    if files and all(f.is_file() for f in files):
        return [f for f in files if f.suffix == ".mcap"]
    return sorted(d.glob("*.mcap"))


def is_finalized(mcap_path) -> bool:
    """True if the MCAP ends with a footer and the closing magic (a clean close)."""
    p = Path(mcap_path)
    size = p.stat().st_size
    if size < 8 + 37:
        return False
    with open(p, "rb") as f:
        f.seek(size - 37)
        tail = f.read(37)
    return tail[-8:] == _MAGIC and tail[0] == 0x02


def needs_recovery(bag_dir) -> bool:
    """An MCAP bag left open by a crash (no metadata.yaml or no footer); never sqlite3 bags."""
    d = Path(bag_dir)
    if storage_id(d) == "sqlite3":
        return False
    files = mcap_files(d)
    if not (d / "metadata.yaml").is_file() or not files:
        return bool(files) or (d / EPISODE_FILE).is_file()
    return not all(is_finalized(f) for f in files)


# ------------------------------------------------------------------------------ metadata
def _mcap_episode_records(mcap_path: Path) -> List[Dict[str, Any]]:
    if is_finalized(mcap_path):      # summary section: no need to scan every chunk
        from mcap.reader import make_reader

        try:
            with open(mcap_path, "rb") as f:
                recs = [m for m in make_reader(f).iter_metadata() if m.name == MCAP_EPISODE_RECORD]
        except Exception:  # noqa: BLE001 - damaged summary: fall back to the tolerant scan
            recs = None
    else:
        recs = None
    if recs is None:
        recs = [r for r in _tolerant_records(mcap_path)[0]
                if type(r).__name__ == "Metadata" and r.name == MCAP_EPISODE_RECORD]
    out = []
    for rec in recs:
        try:
            out.append(json.loads(rec.metadata["json"]))
        except (KeyError, ValueError):
            pass
    return out


def is_ours(bag_dir) -> bool:
    """True if the bag carries this package's episode metadata (see the module docstring)."""
    return not read_episode_meta(bag_dir).get("foreign", False)


def read_episode_meta(bag_dir) -> Dict[str, Any]:
    """episode.yaml, else metadata.yaml custom_data, else the last MCAP episode record.

    Bags without any of them (foreign: e.g. from plain `ros2 bag record`) get
    source="foreign", foreign=True, complete=None (unknown).
    """
    d = Path(bag_dir)
    f = d / EPISODE_FILE
    if f.is_file():
        meta = yaml.safe_load(f.read_text()) or {}
    else:
        meta = None
        text = (_bag_info(d).get("custom_data") or {}).get("bc_policy.episode_json")
        meta = json.loads(text) if text else None
        if meta is None:
            recs = [r for p in mcap_files(d) for r in _mcap_episode_records(p)]
            meta = recs[-1] if recs else {"complete": None, "source": "foreign", "foreign": True}
    meta = dict(meta)
    meta.setdefault("episode_id", None)
    meta.setdefault("source", "expert")
    return meta


# ------------------------------------------------------------------------------ recovery
def _tolerant_records(mcap_path: Path) -> Tuple[List[Any], Optional[str], int]:
    """All records readable from the start of a (possibly truncated) MCAP file.

    Returns (records with chunks expanded, error text or None, bytes consumed up to the
    last good record). Chunks are CRC-checked; a damaged or cut chunk ends the scan.
    """
    from mcap.stream_reader import StreamReader, breakup_chunk

    records: List[Any] = []
    good = 0
    error = None
    with open(mcap_path, "rb") as f:
        reader = StreamReader(f, emit_chunks=True)
        it = reader.records
        while True:
            try:
                rec = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - any parse error = truncation point
                error = f"{type(e).__name__}: {e}"
                break
            if type(rec).__name__ == "Chunk":
                try:
                    records.extend(breakup_chunk(rec, validate_crc=True))
                except Exception as e:  # noqa: BLE001
                    error = f"damaged chunk: {type(e).__name__}: {e}"
                    break
            else:
                records.append(rec)
            good = f.tell()
    return records, error, good


def recover_bag(bag_dir, keep_original: bool = False, chunk_size: int = 256 * 1024,
                compression: str = "zstd") -> Dict[str, Any]:
    """Rewrite a truncated episode bag (no footer, maybe no metadata.yaml) as a valid bag.

    Every message of every complete chunk is kept; episode.yaml gets complete=false,
    recovered=true, counts and outcome 'interrupted' (unless one was set). A bag that was
    closed cleanly is left untouched (`{"status": "ok"}`). The original file is renamed to
    `*.mcap.truncated` when keep_original, else deleted after the new file is in place.
    A foreign MCAP bag (no metadata of ours) is recovered the same way, but its original
    file is always kept and the result stays source="foreign". sqlite3 bags are never
    touched (BagReadError when one lacks metadata.yaml: `ros2 bag reindex` rebuilds it).
    """
    d = Path(bag_dir)
    if not d.is_dir():
        raise BagReadError(f"no bag directory at {d}")
    if storage_id(d) == "sqlite3" and not (d / "metadata.yaml").is_file():
        raise BagReadError(_SQLITE_NO_META.format(d=d))
    if not needs_recovery(d):
        return {"status": "ok", "path": str(d)}
    found = read_episode_meta(d)
    foreign = bool(found.get("foreign"))
    keep_original = keep_original or foreign
    meta = make_episode_meta({k: v for k, v in found.items() if not (foreign and k == "source")})
    if foreign:
        meta["source"] = found["source"]
    files = sorted(d.glob("*.mcap"))
    src = files[0] if files else d / f"{d.name}_0.mcap"
    if len(files) > 1:
        raise BagReadError(f"{d}: {len(files)} MCAP files; episode bags have exactly one")
    records, error, good = (_tolerant_records(src) if src.is_file() and src.stat().st_size
                            else ([], "missing or empty MCAP file", 0))
    size = src.stat().st_size if src.is_file() else 0
    schemas = {r.id: r for r in records if type(r).__name__ == "Schema"}
    channels = {r.id: r for r in records if type(r).__name__ == "Channel"}
    messages = [r for r in records if type(r).__name__ == "Message"]
    # topics declared in episode.yaml but whose channel records were never flushed
    declared = dict(meta.get("topics") or {})
    tmp = src.with_name(src.name + ".recovering")
    counts: Dict[str, int] = {}
    first: Dict[str, Optional[int]] = {}
    last: Dict[str, Optional[int]] = {}
    topics: List[Tuple[str, str, str, list]] = []
    with open(tmp, "wb") as f:
        w = mcap_writer(f, compression, chunk_size)
        sid_map: Dict[int, int] = {}
        by_name: Dict[str, int] = {}
        for s in schemas.values():
            sid_map[s.id] = by_name[s.name] = w.register_schema(s.name, s.encoding, s.data)
        cid_map: Dict[int, int] = {}
        for c in channels.values():
            cid_map[c.id] = w.register_channel(c.topic, c.message_encoding,
                                               sid_map.get(c.schema_id, 0), dict(c.metadata))
            typ = schemas[c.schema_id].name if c.schema_id in schemas else declared.get(c.topic, "")
            qos = yaml.safe_load(c.metadata.get("offered_qos_profiles") or "[]") or []
            topics.append((c.topic, typ, c.metadata.get("topic_type_hash", ""), qos))
            counts[c.topic], first[c.topic], last[c.topic] = 0, None, None
        for topic, typ in declared.items():
            if topic in counts:
                continue
            msgdef, rihs, _ = rostypes.type_info(typ)
            if typ not in by_name:
                by_name[typ] = w.register_schema(typ, "ros2msg", msgdef.encode())
            w.register_channel(topic, "cdr", by_name[typ],
                               {"offered_qos_profiles": qos_yaml(())[1], "topic_type_hash": rihs})
            topics.append((topic, typ, rihs, []))
            counts[topic], first[topic], last[topic] = 0, None, None
        topic_of = {c.id: c.topic for c in channels.values()}
        for m in messages:
            if m.channel_id not in cid_map:
                continue
            w.add_message(cid_map[m.channel_id], m.log_time, m.data, m.publish_time, m.sequence)
            t = topic_of[m.channel_id]
            counts[t] += 1
            first[t] = m.log_time if first[t] is None else first[t]
            last[t] = m.log_time
        meta["complete"] = False
        meta["recovered"] = True
        meta["outcome"] = meta.get("outcome") or "interrupted"
        meta["counts"] = counts
        meta["first_receive_ns"] = first
        meta["last_receive_ns"] = last
        lasts = [v for v in last.values() if v is not None]
        firsts = [v for v in first.values() if v is not None]
        meta["stop_time_ns"] = meta.get("stop_time_ns") or (max(lasts) if lasts else None)
        meta["stop_time"] = _iso(meta["stop_time_ns"])
        meta["recovery"] = {"time": _iso(time.time_ns()), "reason": error or "no footer",
                            "bytes_kept": good, "bytes_dropped": max(0, size - good),
                            "messages": len(messages)}
        meta.setdefault("bag", {})["file"] = src.name
        info = bag_info_dict(src.name, topics, counts, min(firsts) if firsts else 0,
                             max(lasts) if lasts else 0, custom_data(meta))
        w.add_metadata("rosbag2", {"serialized_metadata": yaml.safe_dump(info, sort_keys=False)})
        w.add_metadata(MCAP_EPISODE_RECORD, episode_record(meta))
        w.finish()
        f.flush()
        os.fsync(f.fileno())
    if src.is_file():
        if keep_original:
            os.replace(src, src.with_name(src.name + ".truncated"))
        else:
            src.unlink()
    os.replace(tmp, src)
    write_metadata_yaml(d, info)
    write_episode_yaml(d, meta)
    return {"status": "recovered", "path": str(d), "messages": len(messages), "counts": counts,
            "bytes_dropped": max(0, size - good), "reason": error or "no footer"}


def recover_all(paths: Iterable, **kwargs: Any) -> List[Dict[str, Any]]:
    """recover_bag() on every bag under `paths` that needs it (e.g. at recorder start-up)."""
    return [recover_bag(b, **kwargs) for b in find_bags(paths) if needs_recovery(b)]


# ------------------------------------------------------------------------------ messages
def _reader(bag_dir):
    d = Path(bag_dir)
    if not d.is_dir():
        raise BagReadError(f"no bag directory at {d}")
    if needs_recovery(d):
        raise BagReadError(f"{d} was not closed cleanly (no metadata.yaml or no MCAP footer); "
                           f"run recover_bag() on it first")
    if not (d / "metadata.yaml").is_file():
        raise BagReadError(_SQLITE_NO_META.format(d=d) if storage_id(d) == "sqlite3"
                           else f"{d}: no metadata.yaml and no bag files")
    return BagReader(d)


def topic_types(bag_dir) -> Dict[str, str]:
    with _reader(bag_dir) as r:
        return {c.topic: c.msgtype for c in r.connections}


def read_messages(bag_dir, topics: Optional[Sequence[str]] = None) -> Iterator[BagMessage]:
    """Deserialized messages of `topics` (all if None) in receive-time order."""
    with _reader(bag_dir) as r:
        conns = [c for c in r.connections if topics is None or c.topic in topics]
        if not conns:
            return
        for conn, t_ns, raw in r.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, int(t_ns), r.deserialize(raw, conn.msgtype))


def read_raw(bag_dir, topics: Sequence[str], publish_times: bool = False):
    """({topic: (msgtype, [(receive ns, CDR bytes)])}, typestore able to deserialize them).

    For callers that deserialize only the messages they use (the dataset builder).
    publish_times: items are (receive ns, CDR bytes, publish ns) — MCAP publish_time, which
    the recorder node fills with the sender's DDS source timestamp (sqlite3 bags: receive ns).
    """
    out: Dict[str, Tuple[str, List[Tuple]]] = {}
    d = Path(bag_dir)
    with _reader(d) as r:
        conns = [c for c in r.connections if c.topic in topics]
        for c in conns:
            out.setdefault(c.topic, (c.msgtype, []))
        files = mcap_files(d)
        if conns and publish_times and files and all(f.suffix == ".mcap" for f in files):
            from mcap.reader import make_reader

            wanted = [c.topic for c in conns]
            for f in files:
                with open(f, "rb") as fh:
                    for _s, ch, m in make_reader(fh).iter_messages(topics=wanted,
                                                                   log_time_order=True):
                        out[ch.topic][1].append((int(m.log_time), m.data, int(m.publish_time)))
        elif conns:
            for conn, t_ns, raw in r.messages(connections=conns):
                item = (int(t_ns), raw, int(t_ns)) if publish_times else (int(t_ns), raw)
                out[conn.topic][1].append(item)
        store = r.typestore
    return out, store


def receive_times(bag_dir, with_header: bool = False) -> Dict[str, Any]:
    """{topic: (msgtype, int64 array of receive times)} without deserializing.

    with_header: {topic: (msgtype, receive times, header stamps or None)} — stamps read from
    the CDR bytes of types that start with a std_msgs/Header.
    """
    import numpy as np

    out: Dict[str, Tuple[str, List[int], Optional[List[int]]]] = {}
    with _reader(bag_dir) as r:
        for c in r.connections:
            has = with_header and c.msgtype in r.typestore.fielddefs and \
                rostypes.type_info(c.msgtype, r.typestore)[2]
            out.setdefault(c.topic, (c.msgtype, [], [] if has else None))
        for conn, t_ns, raw in r.messages():
            _typ, recv, hdr = out[conn.topic]
            recv.append(t_ns)
            if hdr is not None:
                hdr.append(rostypes.header_stamp_ns(raw))
    if with_header:
        return {k: (typ, np.asarray(v, dtype=np.int64), None if h is None else np.asarray(h, dtype=np.int64))
                for k, (typ, v, h) in out.items()}
    return {k: (typ, np.asarray(v, dtype=np.int64)) for k, (typ, v, _h) in out.items()}
