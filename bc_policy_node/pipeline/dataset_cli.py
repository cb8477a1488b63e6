"""`bc-policy dataset ACTION PATHS...`: build / inspect / edit datasets (core only, no rclpy).

  build           bags (episode dirs or folders of them; ours or any rosbag2 bag, sqlite3 or
                  MCAP) -> dataset folder (--out); the contract is --contract, else the one the
                  recorder stored in the bags (all must agree). --split-by RULE cuts long bags
                  into episodes (none | topic:/NAME[:FIELD] | service:/NAME | gap:SECONDS,
                  core/data/segment.py) and prints each episode's boundaries and cut reasons.
                  Cameras: --image-alignment asof|nearest, --image-max-age S (core/data/
                  alignment.py); frames aligned / outside the tolerance per camera are printed.
                  Nothing is written when no episode is included.
  info            bags -> per-episode rates/gaps/success table; dataset folder -> summary
  plot            dataset folder -> one PNG per episode (--episodes, default 0) into --out
  merge           dataset folders (one contract) -> --out
  delete          dataset folder + --episodes -> the dataset without them (--out, default in
                  place); bag dirs/folders (+ --episodes = episode ids) -> moved to --out
                  (default <folder>/.trash), never destroyed here
  export-lerobot  dataset folder -> LeRobot v3.0 layout in --out (cameras: one MP4 per camera,
                  core/data/lerobot_export.py)
  import-lerobot  LeRobot dataset folder (v3.0; v2.x as export-lerobot writes) -> dataset folder
                  (--out); the contract is the one export-lerobot stored, else --contract (state
                  dim, action dim and fps must fit it); the contract's cameras are decoded from
                  their videos (PyAV), other video features are skipped.
  recover         bags left open by a crash -> valid bags marked incomplete
Every action prints a one-screen summary; errors print one line and return 1.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..core.data.bagread import (BagReadError, find_bags, needs_recovery, read_episode_meta, recover_all,
                                 topic_types)
from ..core.contract import Contract, ContractError
from ..core.sim.env import resolve_contract
from ..core.data.dataset_builder import BuildError, build_dataset, save_build
from ..core.data.segment import SplitError, SplitRule
from ..core.data.dataset_tools import (bag_info, dataset_info, delete_bags, delete_episodes,
                                  format_bag_info, format_dataset_info, merge_datasets, plot_episode)
from ..core.data.episodes import Dataset, DatasetError

MAX_ROWS = 15


class CliError(ValueError):
    """A usage problem (missing --out, wrong kind of path...)."""


# ------------------------------------------------------------------------------ helpers
def parse_indices(text: Optional[str]) -> List[int]:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]."""
    if not text:
        return []
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            out.extend(range(int(a), int(b) + 1) if sep else [int(a)])
        except ValueError:
            raise CliError(f"--episodes: {part!r} is not an index or a range like 5-7") from None
    return out


def is_dataset(p: Path) -> bool:
    return (p / "meta.json").is_file() and (p / "data.npz").is_file()


def _need(args, name: str) -> str:
    value = getattr(args, name)
    if not value:
        raise CliError(f"`dataset {args.action}` needs --{name}")
    return value


def _one_dataset(args) -> Path:
    if len(args.paths) != 1 or not is_dataset(Path(args.paths[0])):
        raise CliError(f"`dataset {args.action}` takes one dataset folder (meta.json + data.npz), "
                       f"got {args.paths}")
    return Path(args.paths[0])


def bag_contract(bags: Sequence[Path], explicit: Optional[str] = None) -> Contract:
    """--contract, else the contract the recorder stored in every bag's episode.yaml."""
    if explicit:
        return resolve_contract(explicit)   # a YAML path, or metaworld/<task>
    specs: Dict[str, Any] = {}
    missing = []
    for bag in bags:
        spec = (read_episode_meta(bag).get("contract") or {}).get("spec")
        if spec is None:
            missing.append(bag.name)
            continue
        c = Contract.from_dict(spec)
        specs.setdefault(c.fingerprint(), (c, []))[1].append(bag.name)
    if missing or not specs:
        foreign = sum(bool(read_episode_meta(b).get("foreign")) for b in bags)
        why = f" ({foreign} foreign: not recorded by bc-policy)" if foreign else ""
        raise CliError(f"no contract stored in {len(missing) or len(bags)} bag(s){why} "
                       f"(e.g. {(missing or [b.name for b in bags])[:3]}); pass --contract")
    if len(specs) > 1:
        desc = "; ".join(f"{c.name} ({fp}): {names[:3]}" for fp, (c, names) in specs.items())
        raise CliError(f"the bags were recorded with different contracts: {desc}; pass --contract")
    return next(iter(specs.values()))[0]


def _bags(args) -> List[Path]:
    if not args.paths:
        raise CliError(f"`dataset {args.action}` needs bag folders")
    bags = find_bags(args.paths)
    if not bags:
        raise CliError(f"no episode bags in {args.paths}")
    return bags


# ------------------------------------------------------------------------------ actions
def do_build(args) -> int:
    bags = _bags(args)
    out = Path(_need(args, "out"))
    rule = SplitRule.parse(getattr(args, "split_by", None))
    contract = bag_contract(bags, args.contract)
    if rule.topic:
        have = [b for b in bags if rule.topic in topic_types(b)]
        if not have:
            raise CliError(f"--split-by {rule}: topic {rule.topic} is not in any of the {len(bags)} bag(s) "
                           f"(e.g. {bags[0].name} has {sorted(topic_types(bags[0]))})")
    cams = {}
    if contract.images:
        cams = {"image_alignment": getattr(args, "image_alignment", None) or "asof",
                "image_max_age_s": getattr(args, "image_max_age", None), "scratch_dir": out.parent}
    ds, rep = build_dataset(bags, contract, None, args.gap_tolerance, split_by=rule,
                            keep_flagged=bool(getattr(args, "keep_flagged", False)),
                            include_incomplete=bool(getattr(args, "include_incomplete", False)), **cams)
    inc = [e for e in rep["episodes"] if e["status"] == "included"]
    exc = [e for e in rep["episodes"] if e["status"] != "included"]
    if inc:   # a build without episodes writes nothing (an existing dataset in --out stays)
        save_build(ds, rep, out)
    align = Counter(f"{e.get('alignment')}/{e.get('time_base')}" for e in inc)
    foreign = sum(bool(e.get("foreign")) for e in rep["episodes"])
    print(f"dataset {out}  (contract {contract.name} {contract.fingerprint()}, hash {rep['hash']})"
          + ("" if inc else "  NOT WRITTEN: no episode included"))
    print(f"  bags {rep['bags']}" + (f" ({foreign} foreign)" if foreign else "")
          + (f", split {rule}: {len(rep['episodes'])} episodes" if rule.kind != "none" else "")
          + f": included {len(inc)}, excluded {len(exc)}; frames {rep['frames']} "
          f"({ds.num_frames * contract.dt:.1f} s at {contract.control_rate_hz:g} Hz)")
    if inc:
        print("  alignment/time base: " + ", ".join(f"{k} x{v}" for k, v in sorted(align.items())))
        for name, r in rep.get("cameras", {}).items():
            seen = "-" if r["max_age_seen_s"] is None else f"{r['max_age_seen_s'] * 1e3:.0f} ms"
            print(f"  camera {name} ({r['rule']}, max age {r['max_age_s'] * 1e3:.0f} ms): {r['frames_aligned']} frames "
                  f"aligned, {r['frames_outside']} outside the tolerance (unlabelled), max age seen {seen}")
        known = [e.get("success") for e in inc if e.get("success") is not None]
        if known:
            print(f"  success {sum(map(bool, known))}/{len(known)} of the included episodes")
    if rule.kind != "none":
        segs = [e for e in rep["episodes"] if "segment" in e]
        for e in segs[:MAX_ROWS]:
            g = e["segment"]
            print(f"  {Path(e['path']).name:<24} {g['start_s']:8.3f}-{g['end_s']:8.3f} s  frames {e.get('frames', 0):<5} "
                  f"{e['status']:<8} cut: {g['cut_start']} | {g['cut_end']}")
        if len(segs) > MAX_ROWS:
            print(f"  ... {len(segs) - MAX_ROWS} more episodes (all listed in {out / 'build_report.json'})")
    for e in exc[:MAX_ROWS]:
        print(f"  excluded {Path(e['path']).name}: {'; '.join(e.get('reasons') or ['?'])}")
    if len(exc) > MAX_ROWS:
        print(f"  ... {len(exc) - MAX_ROWS} more excluded (all listed in {out / 'build_report.json'})")
    if inc:
        print(f"  report {out / 'build_report.json'}")
        return 0
    print(f"dataset build: no episode included; {out} left as it was", file=sys.stderr)
    for e in exc[:3]:
        print(f"  {Path(e['path']).name}: {'; '.join(e.get('reasons') or ['?'])}", file=sys.stderr)
    return 1


def do_info(args) -> int:
    if not args.paths:
        raise CliError("`dataset info` needs bag folders or dataset folders")
    datasets = [Path(p) for p in args.paths if is_dataset(Path(p))]
    others = [p for p in args.paths if not is_dataset(Path(p))]
    for d in datasets:
        print(f"{d}:")
        print(format_dataset_info(dataset_info(Dataset.load(d))))
    if others:
        bags = find_bags(others)
        try:
            contract = bag_contract(bags, args.contract) if bags else None
        except CliError:
            contract = None      # rates are then shown without a nominal value
        print(format_bag_info(bag_info(bags, contract, gap_tolerance_s=args.gap_tolerance), MAX_ROWS))
    return 0


def do_plot(args) -> int:
    d = _one_dataset(args)
    ds = Dataset.load(d)
    which = parse_indices(args.episodes) or [0]
    bad = [i for i in which if not 0 <= i < len(ds)]
    if bad:
        raise CliError(f"episodes {bad} not in 0..{len(ds) - 1}")
    out = Path(args.out or d / "plots")
    for i in which:
        print(plot_episode(ds, i, out / f"episode_{i:04d}.png"))
    return 0


def do_merge(args) -> int:
    parts = [Path(p) for p in args.paths]
    if len(parts) < 2 or not all(is_dataset(p) for p in parts):
        raise CliError(f"`dataset merge` takes two or more dataset folders, got {args.paths}")
    out = Path(_need(args, "out"))
    ds = merge_datasets(parts, out)
    print(f"merged {len(parts)} datasets -> {out}")
    print(format_dataset_info(dataset_info(ds)))
    return 0


def do_delete(args) -> int:
    which = parse_indices(args.episodes)
    if len(args.paths) == 1 and is_dataset(Path(args.paths[0])):
        d = Path(args.paths[0])
        if not which:
            raise CliError("`dataset delete <dataset>` needs --episodes (indices)")
        ds = Dataset.load(d)
        bad = [i for i in which if not 0 <= i < len(ds)]
        if bad:
            raise CliError(f"episodes {bad} not in 0..{len(ds) - 1}")
        out = Path(args.out or d)
        new = delete_episodes(ds, which)
        new.save(out)
        print(f"removed episodes {which} from {d}: {len(ds)} -> {len(new)} episodes -> {out}")
        print(format_dataset_info(dataset_info(new)))
        return 0
    bags = _bags(args)
    if which:
        bags = [b for b in bags if read_episode_meta(b).get("episode_id") in set(which)]
        if not bags:
            raise CliError(f"no bag with episode_id in {which} under {args.paths}")
    trash = Path(args.out) if args.out else bags[0].parent / ".trash"
    moved = delete_bags(bags, trash)
    print(f"moved {len(moved)} episode bag(s) to {trash} (delete that folder to free the space):")
    for b in moved[:MAX_ROWS]:
        print(f"  {b.name}")
    if len(moved) > MAX_ROWS:
        print(f"  ... {len(moved) - MAX_ROWS} more")
    return 0


def do_export(args) -> int:
    from ..core.data.lerobot_export import export_lerobot

    d = _one_dataset(args)
    out = Path(_need(args, "out"))
    ds = Dataset.load(d)
    export_lerobot(ds, out)
    n_files = sum(1 for _ in (out / "data").rglob("*.parquet"))
    videos = sorted((out / "videos").rglob("*.mp4")) if (out / "videos").is_dir() else []
    cams = ", ".join(f"{t.name} {t.shape[1]}x{t.shape[0]}" for t in ds.contract.images)
    print(f"LeRobot v3.0 dataset {out}: {len(ds)} episodes, {ds.num_frames} frames at "
          f"{ds.contract.control_rate_hz:g} fps, {n_files} parquet data file(s), "
          f"state dim {ds.contract.obs_dim}, action dim {ds.contract.act_dim}"
          + (f"; cameras {cams}: {len(videos)} MP4 file(s), {sum(v.stat().st_size for v in videos) / 1e6:.1f} MB"
             if videos else ""))
    return 0


def do_import(args) -> int:
    import json

    from ..core.data.lerobot_import import format_import_summary, import_lerobot

    if len(args.paths) != 1:
        raise CliError(f"`dataset import-lerobot` takes one LeRobot dataset folder, got {args.paths}")
    out = Path(_need(args, "out"))
    ds, rep = import_lerobot(args.paths[0], args.contract, scratch_dir=out.parent)
    ds.save(out)     # the same folder `dataset build` writes; import_report.json beside it
    (out / "import_report.json").write_text(json.dumps(rep, indent=1, default=str))
    print(format_import_summary(rep, out))
    print(f"  report {out / 'import_report.json'}")
    return 0


def do_recover(args) -> int:
    bags = _bags(args)
    todo = [b for b in bags if needs_recovery(b)]
    results = recover_all(todo)
    print(f"{len(bags)} bags, {len(todo)} needed recovery")
    for r in results[:MAX_ROWS]:
        print(f"  {Path(r['path']).name}: {r['status']}, {r.get('messages', 0)} messages kept, "
              f"{r.get('bytes_dropped', 0)} bytes dropped ({r.get('reason', '')}); marked incomplete")
    if len(results) > MAX_ROWS:
        print(f"  ... {len(results) - MAX_ROWS} more")
    if results:
        print("recovered episodes are excluded by `dataset build` unless --include-incomplete")
    return 0


ACTIONS = {"build": do_build, "info": do_info, "plot": do_plot, "merge": do_merge,
           "delete": do_delete, "export-lerobot": do_export, "import-lerobot": do_import,
           "recover": do_recover}


def main(args) -> int:
    try:
        return ACTIONS[args.action](args)
    except (CliError, DatasetError, ContractError, BagReadError, BuildError, SplitError,
            FileExistsError, OSError) as e:
        print(f"dataset {args.action}: {e}", file=sys.stderr)
        return 1
