"""Bags -> training dataset (`core.data.episodes.Dataset`), with a report of every decision.

Owns which bags and episodes go into a dataset and why (`build_dataset`), reading a bag's
messages once (`load_bag`), cutting long bags into episodes by a `segment.SplitRule`, and
saving the dataset with `build_report.json` (`save_build`). How one episode's messages become
frames (time base, alignment rule, gap flags) is `alignment`'s job; its docstring states the
rules, and its names (`BuildError`, `command_vector`, `FRAME_TAG_TYPE`) are re-exported here.

Sources (`bagread` module docstring):

* our episode bags: one episode each; a bag left open by a crash is excluded ('needs
  recovery') unless `recover=True`; a recovered / interrupted episode (complete=false) is
  excluded ('incomplete episode') unless `include_incomplete`.
* foreign bags (any rosbag2 writer, sqlite3 or MCAP, no metadata of ours): source 'foreign',
  completeness unknown (complete=None) - included like complete episodes. They carry no
  contract: the caller passes one.
* `split_by` (a rule text or SplitRule, e.g. 'gap:0.5'): every bag gives one episode per
  window of the rule; each window is a report entry (name '<bag>#<i>') with its boundaries
  (`segment`: receive-time start/end ns, s from the bag's first message), the reasons of
  both cuts, and the frames it produced - or why it was excluded.

Cameras (contracts with image terms): `alignment` matches each camera's images to the frames
(`image_alignment` asof | nearest, `image_max_age_s`; frames outside the tolerance are
unlabelled, never samples) and decodes them to uint8. Memory stays about one episode: each
included episode's frames are written at once to an unlinked scratch .npy (in `scratch_dir`
or `out_dir`, else the temp folder) and memory-mapped from it, and `Dataset.save` copies them block by
block into `images/<camera>.npy`. The report adds per camera, over the included episodes:
frames aligned, frames outside the tolerance, the largest age seen (`cameras`).
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..contract import Contract, ContractError
from .alignment import (ALIGNMENTS, FRAME_TAG_TYPE, BuildError, align_episode,  # noqa: F401
                        command_vector, has_source_times)
from .bagread import (BagReadError, find_bags, needs_recovery, read_episode_meta, read_raw,
                      recover_bag, topic_types)
from .episodes import Dataset, Episode, FrameScratch
from .rosbag_reader import SETBOOL_EVENT, is_service_event, service_event_info, setbool_request
from .segment import (SplitError, SplitRule, Window, bag_span, gap_windows, marker_windows,
                      service_windows, slice_raw)

_ERRORS = (BuildError, ContractError, BagReadError, SplitError, OSError)


def load_bag(bag_dir, contract: Contract, extra_topics: Sequence[str] = ()):
    """(types, episode meta, raw, typestore): every topic's type, and the raw messages of the
    contract's topics, FrameTag topics and `extra_topics` (`bagread.read_raw`)."""
    bag = Path(bag_dir)
    types = topic_types(bag)
    em = read_episode_meta(bag)
    frame_tags = [t for t, ty in types.items() if ty == FRAME_TAG_TYPE]
    wanted = (list(contract.observation_topics()) + [p.topic for p in contract.action.parts] + frame_tags
              + list(extra_topics))
    raw, store = read_raw(bag, [t for t in dict.fromkeys(wanted) if t in types],
                          publish_times=has_source_times(em))
    return types, em, raw, store


def episode_from_bag(bag_dir, contract: Contract, gap_tolerance_s: Optional[float] = None,
                     **opts: Any) -> Tuple[Episode, Dict[str, Any]]:
    """One bag = one episode -> (Episode, report entry). Raises BuildError/ContractError/
    BagReadError. opts: `alignment.align_episode`'s keywords."""
    types, em, raw, store = load_bag(bag_dir, contract)
    return align_episode(raw, store, types, em, str(Path(bag_dir)), contract, gap_tolerance_s, **opts)


def split_windows(rule: SplitRule, contract: Contract, types: Dict[str, str], raw, store) -> List[Window]:
    """The rule's windows over one bag's messages (raw must hold the rule's topic)."""
    span = bag_span(raw)
    if rule.kind == "gap":
        act = contract.action.topic
        return gap_windows(rule, [it[0] for it in raw.get(act, ("", []))[1]], act, span)
    topic = rule.topic
    if topic not in types:
        near = difflib.get_close_matches(topic, sorted(types), n=3, cutoff=0.6)
        raise SplitError(f"split {rule.kind} {rule.name}: topic {topic} is not in the bag"
                         + (f" (similar: {near})" if near else "") + f"; bag has {sorted(types)}")
    msgtype, items = raw[topic]
    if rule.kind == "service":
        if not is_service_event(topic, msgtype):
            raise SplitError(f"split {rule}: {topic} has type {msgtype}, not a service event (<pkg>/srv/<Srv>_Event)")
        return service_windows(rule, [(it[0], *service_event_info(it[1])[:3],
                                       setbool_request(it[1]) if msgtype == SETBOOL_EVENT else None)
                                      for it in sorted(items, key=lambda it: it[0])], span)
    if msgtype not in store.fielddefs:
        raise SplitError(f"split {rule}: the bag has no definition of {msgtype} to read {topic}")
    msgs = sorted(((it[0], store.deserialize_cdr(it[1], msgtype)) for it in items), key=lambda x: x[0])
    return marker_windows(rule, msgtype, msgs, span)


def episodes_from_bag(bag_dir, contract: Contract, split_by: Union[str, SplitRule, None],
                      gap_tolerance_s: Optional[float] = None,
                      **opts: Any) -> List[Tuple[Optional[Episode], Dict[str, Any]]]:
    """One bag cut by `split_by` -> [(Episode or None if excluded, report entry)] per window.

    Raises (the whole bag fails) when the bag cannot be read or the rule does not fit it.
    """
    rule = split_by if isinstance(split_by, SplitRule) else SplitRule.parse(split_by)
    bag = Path(bag_dir)
    if rule.kind == "none":
        ep, rep = episode_from_bag(bag, contract, gap_tolerance_s, **opts)
        return [(ep, rep)]
    extra = [rule.topic] if rule.topic else []
    types, em, raw, store = load_bag(bag, contract, extra)
    windows = split_windows(rule, contract, types, raw, store)
    if not windows:
        raise SplitError(f"split {rule}: no episode in the bag (the marker never started one)")
    commands = {p.topic for p in contract.action.parts}
    keep = {t: v for t, v in raw.items() if t not in extra or t in contract.observation_topics() or t in commands}
    first_ns = bag_span(raw)[0]
    hold = list(contract.observation_topics())
    out: List[Tuple[Optional[Episode], Dict[str, Any]]] = []
    for w in windows:
        name = f"{bag}#{w.index}"
        seg = dict(w.report(first_ns), rule=str(rule))
        entry: Dict[str, Any] = {"path": name, "bag": str(bag), "segment": seg}
        try:
            ep, rep = align_episode(slice_raw(keep, w, hold), store, types, em, name, contract,
                                    gap_tolerance_s, **opts)
        except (BuildError, ContractError) as e:
            entry.update(frames=0, reasons=[f"{type(e).__name__}: {e}"])
            out.append((None, entry))
            continue
        ep.meta["bag"] = str(bag)
        ep.meta["segment"] = seg
        key = w.key if isinstance(w.key, int) and not isinstance(w.key, bool) else None
        ep.meta["episode_id"] = key if key is not None else w.index
        entry.update(rep, path=name)
        out.append((ep, entry))
    return out


def _camera_totals(entries: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for e in entries:
        if e.get("status") != "included":
            continue
        for name, r in (e.get("images") or {}).items():
            t = out.setdefault(name, {"topic": r["topic"], "rule": r["rule"], "max_age_s": r["max_age_s"],
                                      "frames_aligned": 0, "frames_outside": 0, "frames_without_image": 0,
                                      "max_age_seen_s": None})
            for k in ("frames_aligned", "frames_outside", "frames_without_image"):
                t[k] += r[k]
            if r["max_age_seen_s"] is not None:
                t["max_age_seen_s"] = max(t["max_age_seen_s"] or 0.0, r["max_age_seen_s"])
    return out


def build_dataset(bag_dirs: Sequence, contract: Contract, out_dir=None,
                  gap_tolerance_s: Optional[float] = None, *, keep_flagged: bool = False,
                  include_incomplete: bool = False, recover: bool = False,
                  split_by: Union[str, SplitRule, None] = None, scratch_dir=None,
                  **episode_opts: Any) -> Tuple[Dataset, Dict[str, Any]]:
    """Bags (episode dirs, or folders of them) -> (Dataset, report).

    Excluded (listed in the report with reasons, never silently): incomplete episodes of ours
    unless include_incomplete; flagged episodes (gaps, rate mismatch, FrameTag/contract
    mismatch) unless keep_flagged; bags that fail to parse or do not match the contract (or
    the split rule). Truncated bags are recovered first when `recover=True`, else excluded
    with 'needs recovery'. Foreign bags are included (module docstring). With `out_dir`, the
    dataset is saved there with `build_report.json` (`save_build`). Camera frames of the
    included episodes are memory-mapped from unlinked scratch files in `scratch_dir` (default
    `out_dir`, else the system's temp folder; module docstring).
    """
    rule = split_by if isinstance(split_by, SplitRule) else SplitRule.parse(split_by)
    bags = find_bags(bag_dirs)
    episodes: List[Episode] = []
    entries: List[Dict[str, Any]] = []
    spill = FrameScratch(scratch_dir if scratch_dir is not None else out_dir) if contract.images else None
    try:
        _build_entries(bags, contract, rule, gap_tolerance_s, keep_flagged, include_incomplete, recover,
                       episode_opts, episodes, entries, spill)
    finally:
        if spill is not None:
            spill.close()
    ds = Dataset(contract, episodes)
    report = {"contract": contract.name, "contract_fingerprint": contract.fingerprint(),
              "gap_tolerance_s": contract.stale_after_s if gap_tolerance_s is None else gap_tolerance_s,
              "split_by": str(rule), "bags": len(bags), "included": len(episodes),
              "excluded": sum(e["status"] == "excluded" for e in entries),
              "frames": ds.num_frames, "hash": ds.content_hash(), "episodes": entries}
    if contract.images:
        report["image_alignment"] = episode_opts.get("image_alignment", "asof")
        report["cameras"] = _camera_totals(entries)
    if out_dir is not None:
        save_build(ds, report, out_dir)
    return ds, report


def _build_entries(bags, contract: Contract, rule: SplitRule, gap_tolerance_s, keep_flagged: bool,
                   include_incomplete: bool, recover: bool, episode_opts: Dict[str, Any],
                   episodes: List[Episode], entries: List[Dict[str, Any]],
                   spill: Optional[FrameScratch]) -> None:
    for bag in bags:
        entry: Dict[str, Any] = {"path": str(bag)}
        try:
            if needs_recovery(bag):
                if not recover:
                    raise BagReadError("needs recovery (not closed cleanly); run recover_bag()")
                entry["recovery"] = recover_bag(bag)
            em = read_episode_meta(bag)
            entry.update(episode_id=em.get("episode_id"), source=em.get("source"),
                         complete=em.get("complete"), success=em.get("success"))
            if em.get("foreign"):
                entry["foreign"] = True
            if em.get("complete") is False and not include_incomplete:
                entry.update(status="excluded", reasons=["incomplete episode"])
                entries.append(entry)
                continue
            results = episodes_from_bag(bag, contract, rule, gap_tolerance_s, **episode_opts)
        except _ERRORS as e:
            entry.update(status="excluded", reasons=[f"{type(e).__name__}: {e}"])
            entries.append(entry)
            continue
        for ep, rep in results:
            row = dict(entry, **rep)
            if ep is None:
                row["status"] = "excluded"
            elif rep["flags"] and not keep_flagged:
                row.update(status="excluded", reasons=list(rep["flags"]))
            else:
                row["status"] = "included"
                if spill is not None and ep.images:
                    ep.images = {k: spill.keep(v) for k, v in ep.images.items()}
                episodes.append(ep)
            entries.append(row)


def save_build(ds: Dataset, report: Dict[str, Any], out_dir) -> Path:
    """Dataset.save(out_dir) + out_dir/build_report.json."""
    out = ds.save(out_dir)
    (out / "build_report.json").write_text(json.dumps(report, indent=1, default=str))
    return out
