"""One bag's messages -> one time-aligned `Episode`: time base, alignment rule, gaps (numpy).

The messages come from `dataset_builder` (which reads the bag and, for long bags, cuts it
into windows with `segment`). Observations are assembled by `core.contract.ObservationAssembler`, the same object the
policy node feeds with live messages; this module only decides *which* message of every
observation topic is current at each sample time (zero-order hold) and which command is
the label. Nothing is interpolated: a stream with a hole longer than `gap_tolerance_s`
(default: the contract's `stale_after_s`, the age at which the policy node would hold) flags
the episode, which is excluded unless `keep_flagged=True` (then `meta["flags"]` says why).

Time base (per episode; the clock that orders messages across topics, reported):

* ``source`` - bags from the recorder node carry each message's DDS source timestamp (the
  sender's clock at publish, rosbag2's send_timestamp) in MCAP publish_time. On one host this
  order is causal: in lock-step, observation k is published before command k, which is
  published before observation k+1, whatever the recorder's queues did. Used when the bag
  says so (episode.yaml `recorder.timestamps`) and source and receive clocks agree within
  `max_clock_skew_s` (else the senders' clocks are not the recorder's).
* ``header`` - observation times are header stamps when the message has a Header, receive
  times otherwise; commands (Float64MultiArray: no header) use receive times. Used when the
  header clock agrees with the receive clock within `max_clock_skew_s`.
* ``receive`` - receive times for everything (header stamps on another clock, e.g. sim time
  in a wall-clock recording).
"ZOH at t" means: for every observation topic, the newest message with time <= t.

Frame clock: when header stamps run on another clock than the wall clock (sim time, e.g.
a lock-step bridge stepping faster than real time), messages are ordered by the wall clock
(source/receive) but frames are timed by the header stamp of the observation each command
answered (`frame_clock="header"`): `t`, the command-rate check and the gap checks then use
sim time, so a lock-step run is 50 Hz however fast it ran and a wall-clock pause is no gap.
In that mode a command answering an observation that was already answered (e.g. sent after
the episode ended) is not a new frame (`duplicate_commands`); observations without a
command are counted (`unanswered_observations`).

Alignment rules (the report says which one each episode used):

* ``frame_tag`` - the bag has a `bc_msgs/msg/FrameTag` topic (policy / DAgger /
  intervention rollouts): one frame per FrameTag (sorted by time); obs = its `observation`
  (or ZOH of the observation topics at its time if that field is empty); label =
  `expert_action` where `labelled` is true (and it has act_dim values), otherwise the
  `executed_action` with labelled=False (kept as context, excluded from the loss).
  Chunk labels (the dagger node's ``label_chunk_length`` K > 1): when labelled frames carry
  K x act_dim values (row-major, the expert's planned chunk from that observation), the
  episode gets `Episode.chunk_labels` (T, K, act_dim) and act[t] = the chunk's first action;
  unlabelled frames hold act[t] in every row (never in the loss).
* ``command`` - one frame per command on the contract's action topic: act[j] = command j,
  obs[j] = ZOH at the command's receive time c_j, i.e. the newest observation that existed
  when the command was issued: in lock-step, the observation this command answered.
  t[j] = c_j - c_0. Commands before every observation term has a value are dropped.
* ``grid`` - uniform samples t_k = t_0 + round(k * 1e9 / rate) ns from the first time t_0
  at which every term has a value; obs[k] = ZOH at t_k; act[k] = the first command received
  in (t_k, t_{k+1}]. A window without a command holds the previous command with
  labelled=False; leading windows before the first command are trimmed; the episode ends
  with the window of the last command.
* ``auto`` (default) - ``command`` when the command stream's median period is within
  `rate_tolerance` of the contract's dt (a controller running at the control rate), else
  ``grid`` (e.g. teleop devices publishing at their own rate).

Camera frames (the contract's image terms) are matched to the frames once these are fixed,
one camera at a time, on the frame clock (header stamps = the time the image shows when
`frame_clock` is "header", else the stream's time base), by `image_alignment`:

* ``asof`` (default) - the newest image with stamp <= the frame's time (what the policy node
  would have had: it never sees a future frame);
* ``nearest`` - the image whose stamp is closest to the frame's time (ties: the earlier one),
  for cameras whose stamps lag or lead the state (e.g. exposure-centre stamps);

and a tolerance: |frame time - image stamp| <= `image_max_age_s` (default: the term's
`max_age_s`, else the contract's `stale_after_s`). Images are never interpolated or blended:
the stored frame is the one the rule picked, decoded by `core.image` (uint8, cropped). A frame
whose image is outside the tolerance (or that has no image: as-of before the camera's first
frame) keeps the picked (or a black) image but gets ``labelled=False``: it stays in the
episode, so the time axis and the chunk targets of its neighbours are intact, but it is never
a training sample (`learning.data`). The report says per camera: frames aligned, frames
outside the tolerance, frames without an image, and the largest |age| seen; an episode with no
frame inside the tolerance of some camera is flagged. Image topics take no part in the state
ZOH, the `ready` time or the gap flags (their tolerance is per frame). A camera topic missing
from the bag, or without messages, is a BuildError naming it (FrameTags carry no images).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..contract import Contract, ContractError, ObservationAssembler
from .episodes import Episode
from .rostypes import HEADER_TYPE, header_stamp_ns

FRAME_TAG_TYPE = "bc_msgs/msg/FrameTag"
ALIGNMENTS = ("auto", "command", "grid")
IMAGE_ALIGNMENTS = ("asof", "nearest")
_META_KEYS = ("episode_id", "task", "seed", "source", "success", "outcome", "complete",
              "recovered", "notes")


class BuildError(ValueError):
    """One episode cannot be turned into frames (reason in the message)."""


class _Stream:
    """All messages of one topic, ordered by the time used for alignment.

    Messages stay CDR bytes until used (`msg(i)`): at 1 kHz most are never looked at.
    """

    def __init__(self, topic: str, msgtype: str, items: List[Tuple], store, base: str):
        self.topic, self.msgtype, self._store = topic, msgtype, store
        fields = store.fielddefs[msgtype][1]
        has_header = bool(fields) and fields[0][0] == "header" and fields[0][1][1] == HEADER_TYPE
        recv = np.array([it[0] for it in items], dtype=np.int64)
        src = np.array([it[2] if len(it) > 2 else it[0] for it in items], dtype=np.int64)
        hdr = np.array([header_stamp_ns(it[1]) for it in items], dtype=np.int64) if has_header \
            else recv.copy()
        self.has_header = has_header
        times = {"header": hdr, "receive": recv, "source": src}[base]
        order = np.argsort(times, kind="stable")
        self.times = times[order]
        self.recv = recv[order]
        self.source = src[order]
        self.header = hdr[order]
        self._raw = [items[i][1] for i in order]
        self._cache: Dict[int, Any] = {}

    def msg(self, i: int) -> Any:
        m = self._cache.get(i)
        if m is None:
            m = self._cache[i] = self._store.deserialize_cdr(self._raw[i], self.msgtype)
        return m

    def load(self, i: int) -> Any:
        """Message i deserialized without caching it (camera frames: decoded once, then dropped)."""
        m = self._cache.get(i)
        return m if m is not None else self._store.deserialize_cdr(self._raw[i], self.msgtype)

    @property
    def msgs(self) -> List[Any]:
        return [self.msg(i) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self._raw)


class _PartStreams:
    """A multi-part action's command streams as one: a frame per message of the first part,
    each other part's message nearest in time within half a control period (in lock-step the
    parts of one tick are published together), else its newest earlier one (held, counted in
    `held`). `msg(j)` is the tuple of part messages."""

    def __init__(self, streams: List[_Stream], dt_ns: float):
        self.primary, self.others = streams[0], streams[1:]
        self.times, self.has_header = self.primary.times, self.primary.has_header
        self.header = self.primary.header
        self.held = 0
        self._idx: List[np.ndarray] = []
        for s in self.others:
            if not len(s):
                raise BuildError(f"no commands on {s.topic}")
            near = np.clip(np.searchsorted(s.times, self.times), 1, len(s)) - 1
            after = np.minimum(near + 1, len(s) - 1)
            pick = np.where(np.abs(s.times[after] - self.times) < np.abs(s.times[near] - self.times), after, near)
            ok = np.abs(s.times[pick] - self.times) <= dt_ns / 2
            held = np.searchsorted(s.times, self.times, side="right") - 1
            self.held += int((~ok).sum())
            self._idx.append(np.where(ok, pick, np.maximum(held, 0)))

    def msg(self, j: int) -> Tuple[Any, ...]:
        return (self.primary.msg(j),) + tuple(s.msg(int(ix[j])) for s, ix in zip(self.others, self._idx))

    def __len__(self) -> int:
        return len(self.primary)


def _part_vector(part, msg: Any) -> np.ndarray:
    if part.msg_type == "geometry_msgs/msg/TwistStamped":
        t = msg.twist
        v = [t.linear.x, t.linear.y, t.linear.z] + ([t.angular.x, t.angular.y, t.angular.z] if part.dim == 6 else [])
        return np.asarray(v, dtype=float)
    if part.msg_type == "trajectory_msgs/msg/JointTrajectory":
        names = list(msg.joint_names)
        if not msg.points:
            raise ContractError(f"{part.topic}: JointTrajectory without points")
        pos = np.asarray(msg.points[0].positions, dtype=float)
        missing = [j for j in part.names if j not in names]
        if missing or len(pos) != len(names):
            raise ContractError(f"{part.topic}: trajectory joints {names} do not cover {missing}")
        return pos[[names.index(j) for j in part.names]]
    return np.asarray(msg.data, dtype=float).reshape(-1)


def command_vector(contract: Contract, msg: Any) -> np.ndarray:
    """The action in a command message of the contract's action type (a multi-part action: the
    tuple of its parts' messages, in part order)."""
    parts = contract.action.parts
    if len(parts) > 1 and (not isinstance(msg, tuple) or len(msg) != len(parts)):
        raise ContractError(f"a {contract.action.kind} action needs one message per part ({len(parts)})")
    msgs = msg if len(parts) > 1 else (msg,)
    vec = np.concatenate([_part_vector(p, m) for p, m in zip(parts, msgs)])
    if vec.shape != (contract.act_dim,) or not np.all(np.isfinite(vec)):
        raise ContractError(f"{'+'.join(p.topic for p in parts)}: command has shape {vec.shape} / non-finite "
                            f"values, contract expects ({contract.act_dim},) finite")
    return vec


def part_command(contract: Contract, topic: str, msg: Any) -> np.ndarray:
    """The command of the action part published on `topic` (checked: size, finite)."""
    part = next((p for p in contract.action.parts if p.topic == topic), None)
    if part is None:
        raise ContractError(f"{topic} is not a command topic of contract {contract.name!r}")
    vec = _part_vector(part, msg)
    if vec.shape != (part.dim,) or not np.all(np.isfinite(vec)):
        raise ContractError(f"{topic}: command has shape {vec.shape} / non-finite values, "
                            f"the {part.kind} part expects ({part.dim},) finite")
    return vec


def _max_gap(times: np.ndarray, t0: int, t1: int) -> float:
    """Longest interval (s) without a message over [t0, t1], counting the held value at t0."""
    if len(times) == 0:
        return (t1 - t0) * 1e-9
    before = times[times <= t0]
    inside = times[(times > t0) & (times <= t1)]
    seq = np.concatenate([[before[-1] if len(before) else t0], inside, [t1]])
    return float(np.max(np.diff(seq))) * 1e-9 if len(seq) > 1 else 0.0


def _zoh_obs(contract: Contract, streams: Dict[str, _Stream], samples: np.ndarray) -> np.ndarray:
    """obs[k] = ObservationAssembler fed with the newest message of every topic at samples[k]
    (the state terms; cameras are matched by `align_images`)."""
    asm = ObservationAssembler(dataclasses.replace(contract, images=()) if contract.images else contract)
    idx = {t: np.searchsorted(s.times, samples, side="right") - 1 for t, s in streams.items()}
    fed = {t: -1 for t in streams}
    out = np.empty((len(samples), contract.obs_dim))
    for k in range(len(samples)):
        for t, s in streams.items():
            i = int(idx[t][k])
            if i < 0:
                raise BuildError(f"no {t} message at or before sample {k}")
            if i != fed[t]:
                asm.update(t, s.msg(i), s.times[i] * 1e-9)
                fed[t] = i
        out[k] = asm.vector()
    return out


def align_images(contract: Contract, streams: Dict[str, _Stream], frame_t: np.ndarray, frame_clock: str,
                 rule: str = "asof", max_age_s: Optional[float] = None
                 ) -> Tuple[Dict[str, np.ndarray], np.ndarray, Dict[str, Dict[str, Any]]]:
    """Every camera's image at each frame time (module docstring, "Camera frames").

    frame_t: (T,) ns on `frame_clock` ("header": image header stamps, else the streams' time
    base). Returns ({camera: uint8 (T, h, w, 3)}, (T,) bool: every camera within its
    tolerance, {camera: report}). Raises BuildError (no messages) / ImageError (a frame that
    does not fit its term)."""
    from ..image import decode

    if rule not in IMAGE_ALIGNMENTS:
        raise ValueError(f"image_alignment must be one of {IMAGE_ALIGNMENTS}, got {rule!r}")
    if max_age_s is not None and not max_age_s >= 0:
        raise ValueError(f"image_max_age_s must be >= 0, got {max_age_s!r}")
    n = len(frame_t)
    ok_all = np.ones(n, dtype=bool)
    images: Dict[str, np.ndarray] = {}
    report: Dict[str, Dict[str, Any]] = {}
    for term in contract.images:
        s = streams.get(term.topic)
        if s is None or not len(s):
            raise BuildError(f"camera {term.name!r}: no messages on {term.topic} ({term.msg_type}) in the episode")
        stamps = s.header if frame_clock == "header" else s.times
        order = np.argsort(stamps, kind="stable")
        ts = stamps[order]
        after = np.searchsorted(ts, frame_t, side="right")      # first image later than the frame
        if rule == "asof":
            pick = after - 1
        else:
            lo = np.maximum(after - 1, 0)
            hi = np.minimum(after, len(ts) - 1)
            pick = np.where(np.abs(ts[hi] - frame_t) < np.abs(frame_t - ts[lo]), hi, lo)
        has = pick >= 0
        pick = np.maximum(pick, 0)
        age_ns = np.where(has, frame_t - ts[pick], 0)            # > 0: the image is older than the frame
        tol = max_age_s if max_age_s is not None else (term.max_age_s if term.max_age_s is not None
                                                        else contract.stale_after_s)
        ok = has & (np.abs(age_ns) <= int(round(tol * 1e9)))
        out = np.zeros((n,) + term.shape, dtype=np.uint8)
        last, frame = -1, None
        for k in np.flatnonzero(has):
            i = int(order[pick[k]])
            if i != last:      # consecutive frames often share an image: decode it once
                frame, last = decode(term, s.load(i)), i
            out[k] = frame
        images[term.name] = out
        ok_all &= ok
        ages = np.abs(age_ns[has]) * 1e-9
        report[term.name] = {"topic": term.topic, "rule": rule, "clock": frame_clock, "max_age_s": tol,
                             "images": len(s), "frames_aligned": int(ok.sum()), "frames_outside": int((~ok).sum()),
                             "frames_without_image": int((~has).sum()),
                             "max_age_seen_s": float(ages.max()) if ages.size else None}
    return images, ok_all, report


def has_source_times(em: Dict[str, Any]) -> bool:
    """The recorder node stored DDS source timestamps in MCAP publish_time (episode.yaml)."""
    stamps = ((em.get("recorder") or {}).get("timestamps") or {})
    return stamps.get("publish_time") == "dds_source"


def align_episode(raw: Dict[str, Tuple[str, List[Tuple]]], store, types: Dict[str, str],
                  em: Dict[str, Any], bag: str, contract: Contract,
                  gap_tolerance_s: Optional[float] = None, *, alignment: str = "auto",
                  time_base: str = "auto", max_clock_skew_s: float = 0.5,
                  rate_tolerance: float = 0.1,
                  frame_topic: Optional[str] = None, image_alignment: str = "asof",
                  image_max_age_s: Optional[float] = None) -> Tuple[Episode, Dict[str, Any]]:
    """Messages of one episode -> (Episode, report entry). Raises BuildError/ContractError.

    raw: {topic: (msgtype, [(receive ns, CDR bytes[, publish ns])])} (`bagread.read_raw`) of
    the contract's topics and FrameTag topics; types: every topic of the bag; em: the bag's
    episode metadata (`bagread.read_episode_meta`); bag: the name in the report and meta.
    image_alignment / image_max_age_s: how camera frames are matched (module docstring).
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    if image_alignment not in IMAGE_ALIGNMENTS:
        raise ValueError(f"image_alignment must be one of {IMAGE_ALIGNMENTS}, got {image_alignment!r}")
    tol = contract.stale_after_s if gap_tolerance_s is None else float(gap_tolerance_s)
    obs_topics = {t.topic: t.msg_type for t in contract.observation}   # the state vector's topics
    image_topics = contract.image_topics()
    act_topic = contract.action.topic
    has_source = has_source_times(em)
    candidates = [t for t, ty in types.items() if ty == FRAME_TAG_TYPE]
    frame_topics = [t for t in candidates if raw.get(t) and raw[t][1]]  # empty channels: unused
    if frame_topic is None and len(frame_topics) > 1:
        raise BuildError(f"several FrameTag topics with messages {frame_topics}; pass frame_topic")
    frame_topic = frame_topic or (frame_topics[0] if frame_topics else None)
    needed = list(obs_topics.items()) + ([] if frame_topic else [(p.topic, p.msg_type) for p in contract.action.parts])
    missing = [f"{t} ({ty})" for t, ty in needed if t not in types]
    if missing and not frame_topic:   # with FrameTag (it carries the observation) raw topics are optional
        what = "none of the contract's topics" if len(missing) == len(needed) else "contract topics"
        raise BuildError(f"{what} {', '.join(missing)} not in the bag (bag has {sorted(types)})")
    for t, ty in list(needed) + list(image_topics.items()):
        if t in types and types[t] != ty:
            raise BuildError(f"topic {t} has type {types[t]} in the bag, contract says {ty}")
    lost = [f"{t} ({ty}) of camera {term.name!r}" for term in contract.images
            for t, ty in [(term.topic, term.msg_type)] if t not in types]
    if lost:   # FrameTags carry no images: a camera topic is needed either way
        raise BuildError(f"camera topic(s) {', '.join(lost)} not in the bag (bag has {sorted(types)})")
    if frame_topic and frame_topic not in raw:
        raise BuildError(f"FrameTag topic {frame_topic} is not in the bag")

    # ---- time base (the clock that orders messages across topics; module docstring)
    base0 = "receive" if time_base == "auto" else time_base
    streams = {t: _Stream(t, typ, items, store, base0) for t, (typ, items) in raw.items()}
    skews = [float(np.median(s.recv - s.header)) * 1e-9
             for s in streams.values() if s.has_header and len(s)]
    worst = max((abs(x) for x in skews), default=0.0)
    # clock offset recorder - senders: the smallest receive delay (a stalled recorder adds delay to
    # every message it takes late, which a median would mistake for another clock)
    src_worst = max((abs(float(np.min(s.recv - s.source))) * 1e-9
                     for s in streams.values() if len(s)), default=0.0)
    frame_clock = time_base
    if time_base == "auto":
        if has_source and src_worst <= max_clock_skew_s:
            time_base = "source"
        else:
            time_base = "header" if worst <= max_clock_skew_s else "receive"
        # header stamps on another clock than the wall clock (sim time, e.g. lock-step faster
        # than real time): order by the wall clock, but time frames by the observations' stamps
        frame_clock = "header" if (time_base != "header" and skews and worst > max_clock_skew_s) \
            else time_base
        if time_base != base0:
            streams = {t: _Stream(t, typ, items, store, time_base) for t, (typ, items) in raw.items()}
    if time_base == "source" and not has_source:
        raise BuildError("time_base='source' needs a bag from the recorder node (DDS source "
                         "timestamps in publish_time)")
    obs_streams = {t: streams[t] for t in obs_topics if t in streams and len(streams[t])}
    rep: Dict[str, Any] = {"path": bag, "time_base": time_base, "frame_clock": frame_clock,
                           "header_clock_skew_s": worst, "flags": [], "warnings": []}
    if has_source:
        rep["source_clock_skew_s"] = src_worst

    labelled = None
    chunks: Optional[np.ndarray] = None     # (T, K, act_dim) FrameTag chunk labels
    if frame_topic:
        fr = streams[frame_topic]
        if not len(fr):
            raise BuildError(f"FrameTag topic {frame_topic} has no messages")
        samples = fr.times
        frames = fr.msgs
        given = [np.asarray(m.observation, float) for m in frames]
        have = np.array([o.shape == (contract.obs_dim,) and bool(np.all(np.isfinite(o)))
                         for o in given])
        odd = sorted({o.shape[0] for o, h in zip(given, have) if not h and o.size})
        if odd:
            rep["warnings"].append(f"FrameTag.observation of size {odd} or non-finite (contract "
                                   f"obs_dim {contract.obs_dim}): assembled from raw topics")
        zoh = None
        if len(obs_streams) == len(obs_topics):  # raw topics present: fallback + cross-check
            ready = max(int(s.times[0]) for s in obs_streams.values())
            ok = samples >= ready
            zoh = np.full((len(samples), contract.obs_dim), np.nan)
            try:
                if ok.any():
                    zoh[ok] = _zoh_obs(contract, obs_streams, samples[ok])
            except ContractError as e:
                if not have.all():
                    raise
                rep["warnings"].append(f"raw observation topics unusable for cross-check: {e}")
                zoh = None
        if not have.all() and (zoh is None or np.isnan(zoh[~have]).any()):
            raise BuildError("FrameTag frames without observation and no raw observation "
                             "topics to assemble it from")
        obs = np.stack([given[i] if have[i] else zoh[i] for i in range(len(given))])
        if zoh is not None:
            both = have & ~np.isnan(zoh).any(axis=1)
            diff = np.abs(obs[both] - zoh[both]).max(axis=1) if both.any() else np.zeros(0)
            rep["frame_obs_mismatch"] = int((diff > 1e-9).sum())
            if rep["frame_obs_mismatch"]:  # FrameTag is authoritative: warn, don't exclude
                rep["warnings"].append(f"FrameTag.observation differs from the contract's assembly "
                                       f"in {rep['frame_obs_mismatch']} frames (max {diff.max():.3g})")
        a_dim = contract.act_dim
        act = np.zeros((len(samples), a_dim))
        labelled = np.zeros(len(samples), dtype=bool)
        actors: Dict[str, int] = {}
        # chunk labels (dagger label_chunk_length K > 1): expert_action = K x act_dim, row-major;
        # K = the first labelled frame's. Labels of another size in such an episode are dropped.
        k_chunk = next((len(m.expert_action) // a_dim for m in frames if bool(m.labelled)
                        and len(m.expert_action) > a_dim and len(m.expert_action) % a_dim == 0), 0)
        chunks = np.zeros((len(samples), k_chunk, a_dim)) if k_chunk else None
        odd_labels = 0
        prev = None
        for i, m in enumerate(frames):
            lab = np.asarray(m.expert_action, float)
            x = np.asarray(m.executed_action, float)
            if chunks is not None and bool(m.labelled) and lab.size:
                if lab.size == k_chunk * a_dim and np.all(np.isfinite(lab)):
                    chunks[i] = lab.reshape(k_chunk, a_dim)
                    lab = chunks[i, 0]
                else:
                    odd_labels += 1
                    lab = np.zeros(0)
            if bool(m.labelled) and lab.shape == (a_dim,) and np.all(np.isfinite(lab)):
                act[i], labelled[i] = lab, True
            elif x.shape == (contract.act_dim,) and np.all(np.isfinite(x)):
                act[i] = x
            elif prev is not None:
                act[i] = prev
            prev = act[i]
            if chunks is not None and not labelled[i]:
                chunks[i] = act[i]           # held context (never in the loss)
            actors[str(int(m.actor))] = actors.get(str(int(m.actor)), 0) + 1
        if chunks is not None:
            rep["chunk_labels"] = k_chunk
            if odd_labels:
                rep["warnings"].append(f"{odd_labels} labelled frames whose expert_action is not a "
                                       f"{k_chunk} x {a_dim} chunk like the others: unlabelled")
        steps = np.array([int(m.step) for m in frames])
        rep.update(alignment="frame_tag", label_source=frame_topic, actor_counts=actors,
                   missing_steps=int(np.sum(np.clip(np.diff(steps) - 1, 0, None))) if len(steps) > 1 else 0)
        if frame_clock == "header" and fr.has_header:   # FrameTag stamps = observation stamps
            frame_t = fr.header
            gap_streams = {frame_topic: (np.sort(fr.header), int(fr.header.min()), int(fr.header.max()))}
            for t, s_ in obs_streams.items():
                if s_.has_header:
                    gap_streams[t] = (np.sort(s_.header), int(fr.header.min()), int(fr.header.max()))
                else:
                    gap_streams[t] = (s_.times, int(samples[0]), int(samples[-1]))
        else:
            rep["frame_clock"] = time_base
            frame_t = samples
            gap_streams = {frame_topic: (fr.times, None, None)}
    else:
        parts = [streams[p.topic] for p in contract.action.parts]
        cmd = parts[0] if len(parts) == 1 else _PartStreams(parts, contract.dt * 1e9)
        if not len(cmd):
            raise BuildError(f"no commands on {act_topic}")
        if len(parts) > 1:
            rep["part_commands_held"] = cmd.held
        missing = [t for t in obs_topics if t not in obs_streams]
        if missing:
            raise BuildError(f"no messages on observation topics {missing}")
        ready = max(int(s.times[0]) for s in obs_streams.values())
        ct = cmd.times
        keep = np.nonzero(ct >= ready)[0]
        prim = None
        if frame_clock == "header":
            prim = next((s for s in obs_streams.values() if s.has_header), None)
        if prim is not None:   # frames timed by the stamp of the observation each command answered
            paired = np.searchsorted(prim.times, ct, side="right") - 1
            ft = prim.header[np.maximum(paired, 0)]
            fk = ft[keep]
            period = float(np.median(np.diff(fk))) * 1e-9 if len(fk) > 1 else contract.dt
            wall = float(np.median(np.diff(ct))) * 1e-9 if len(ct) > 1 else 0.0
            rep["wall_command_rate_hz"] = 1.0 / wall if wall > 0 else float("inf")
        else:
            frame_clock = time_base
            period = float(np.median(np.diff(ct))) * 1e-9 if len(ct) > 1 else contract.dt
        rep["frame_clock"] = frame_clock
        rep["command_rate_hz"] = 1.0 / period if period > 0 else float("inf")
        mode = alignment
        if mode == "auto":
            mode = "command" if abs(period / contract.dt - 1.0) <= rate_tolerance else "grid"
        rep["alignment"] = mode
        rep["label_source"] = act_topic
        vec = [None] * len(cmd)

        def cvec(j: int) -> np.ndarray:
            if vec[j] is None:
                vec[j] = command_vector(contract, cmd.msg(j))
            return vec[j]

        if mode == "command":
            rep["commands_before_ready"] = int(len(ct) - len(keep))
            if not len(keep):
                raise BuildError("no command after every observation term had a value")
            if prim is not None:
                # one frame per answered observation: a later command answering the same
                # observation (e.g. sent after the episode ended) is not a new frame
                first = np.concatenate([[True], np.diff(paired[keep]) > 0])
                rep["duplicate_commands"] = int((~first).sum())
                keep = keep[first]
                rep["unanswered_observations"] = int(paired[keep[-1]] - paired[keep[0]] + 1 - len(keep))
            samples = ct[keep]
            act = np.stack([cvec(int(j)) for j in keep])
            labelled = np.ones(len(samples), dtype=bool)
            if abs(period / contract.dt - 1.0) > rate_tolerance:
                rep["flags"].append(f"command rate {rep['command_rate_hz']:.2f} Hz vs contract "
                                    f"{contract.control_rate_hz} Hz")
        else:
            prim = None
            rep["frame_clock"] = frame_clock = time_base
            last = int(ct[-1])
            n = int(np.floor((last - ready) * contract.control_rate_hz / 1e9)) + 1
            grid = ready + np.round(np.arange(n + 1) * 1e9 / contract.control_rate_hz).astype(np.int64)
            first = np.searchsorted(ct, grid[:-1], side="right")       # first command > t_k
            has = (first < len(ct)) & (ct[np.minimum(first, len(ct) - 1)] <= grid[1:])
            held = np.searchsorted(ct, grid[:-1], side="right") - 1    # newest command <= t_k
            ok = has | (held >= 0)
            start = int(np.argmax(ok)) if ok.any() else n
            end = int(np.nonzero(has)[0][-1]) + 1 if has.any() else start
            if end <= start:
                raise BuildError("no command falls into any sample window")
            ks = np.arange(start, end)
            samples = grid[ks]
            act = np.stack([cvec(int(first[k])) if has[k] else cvec(int(held[k])) for k in ks])
            labelled = has[ks].copy()
            rep["windows_empty"] = int((~has[ks]).sum())
            rep["windows_multi"] = int(np.sum((np.searchsorted(ct, grid[ks + 1], side="right")
                                               - first[ks]) > 1))
            rep["trimmed_leading"] = int(start)
        obs = _zoh_obs(contract, obs_streams, samples)
        if prim is not None:
            frame_t = ft[keep]
            gap_streams = {act_topic: (frame_t, int(frame_t[0]), int(frame_t[-1]))}
            for t, s_ in obs_streams.items():
                gap_streams[t] = ((np.sort(s_.header), int(frame_t[0]), int(frame_t[-1]))
                                  if s_.has_header else (s_.times, int(samples[0]), int(samples[-1])))
        else:
            frame_t = samples
            gap_streams = {act_topic: (ct, None, None)}

    # ---- gaps: every observation stream and the label stream, over the frames' span
    t0, t1 = int(frame_t[0]), int(frame_t[-1])
    for t, s_ in obs_streams.items():
        gap_streams.setdefault(t, (s_.times, None, None))
    gaps = {t: _max_gap(ts, t0 if a is None else a, t1 if b is None else b)
            for t, (ts, a, b) in gap_streams.items()}
    rep["max_gap_s"] = gaps
    for t, g in gaps.items():
        if g > tol:
            rep["flags"].append(f"gap of {g:.3f} s on {t} (tolerance {tol:.3f} s)")
    images = None
    if contract.images:
        images, in_tol, rep["images"] = align_images(contract, streams, np.asarray(frame_t, dtype=np.int64),
                                                     rep["frame_clock"], image_alignment, image_max_age_s)
        rep["image_frames_outside"] = int((~in_tol).sum())
        labelled = in_tol if labelled is None else labelled & in_tol
        for name, r in rep["images"].items():
            if not r["frames_aligned"]:
                rep["flags"].append(f"camera {name!r}: no frame has an image within {r['max_age_s']:.3f} s "
                                    f"({r['rule']}; {r['images']} images on {r['topic']})")
    meta = {k: em.get(k) for k in _META_KEYS}
    meta.update(bag=bag, alignment=rep["alignment"], time_base=time_base,
                frame_clock=rep["frame_clock"],
                label_source=rep["label_source"], start_time_ns=t0, flags=list(rep["flags"]),
                duration_s=(t1 - t0) * 1e-9)
    chunk_labels = chunks
    if chunk_labels is not None:
        meta["chunk_labels"] = int(chunk_labels.shape[1])
    if images is not None:
        meta["images"] = {k: {f: r[f] for f in ("rule", "max_age_s", "frames_outside", "max_age_seen_s")}
                          for k, r in rep["images"].items()}
    ep = Episode(obs=obs, act=act, t=(frame_t - t0) * 1e-9, meta=meta, labelled=labelled,
                 chunk_labels=chunk_labels, images=images)
    rep.update(frames=len(ep), duration_s=meta["duration_s"], labelled=int(ep.labelled.sum()))
    return ep, rep
