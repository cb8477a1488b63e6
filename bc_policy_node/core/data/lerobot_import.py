"""Import a LeRobot dataset as a training `core.data.episodes.Dataset` (pyarrow + numpy only).

Reads LeRobot's v3.0 layout (`CODEBASE_VERSION = "v3.0"`, several episodes per data file)::

    meta/info.json                          codebase_version, fps, features, data_path, ...
    meta/episodes/chunk-000/file-000.parquet  per episode: episode_index, tasks, length,
                                            data/chunk_index, data/file_index,
                                            dataset_from_index, dataset_to_index (global `index`)
    meta/tasks.parquet, meta/stats.json     (tasks are taken from the episodes' `tasks`)
    data/chunk-000/file-000.parquet         observation.state, action, timestamp, frame_index,
                                            episode_index, index, task_index

and the v2.0/v2.1 layout (one data file per episode, meta/episodes.jsonl) that
`core.data.lerobot_export` writes, so export -> import is a round trip.

The contract is the one `export-lerobot` stored in info.json (`bc_policy.contract`), else the
caller's (`--contract FILE`); either way the features must fit it: observation.state dim ==
obs dim, action dim == action dim, fps == control rate (one error lists every mismatch).
Frames are ordered by frame_index (which must be 0..n-1); timestamps that are not
frame_index / fps (within `tolerance_s`) are reported, not fatal; NaN/inf in the state or a
labelled action is refused with the episode named. For our own exports the float64 values come
back exactly from `meta/bc_policy_exact.npz` once verified against the float32 parquet columns,
and the content hash is compared with the exported one.

Cameras: every image term of the contract needs a feature `observation.images.<name>` of dtype
"video" and shape [h, w, 3] = the term's (cropped) shape. Its MP4 files are decoded with PyAV
(imported only then), each file once, front to back: v3.0 (`video_path` with {video_key},
{chunk_index}, {file_index}; an episode is the frames of its file with time in
[videos/<key>/from_timestamp, to_timestamp), frame k at from_timestamp + k / fps within
`tolerance_s`) and v2.x (one file per episode, {episode_chunk}, {episode_index}). Each episode
must get exactly its length in frames (else an error naming episode, camera and file). The
frames are the decoded video - lossy, close to what was encoded, not equal - so for a camera
dataset the export's content hash is compared without the images (`hash_without_images`).
Frames go to memory-mapped scratch files (`scratch_dir`, `episodes.FrameScratch`), not into
memory. Video features of cameras the contract does not have are skipped (report
`skipped_features`); image (PNG-in-parquet) camera features are refused.
"""
from __future__ import annotations

import bisect
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..contract import Contract, ContractError
from .episodes import Dataset, DatasetError, Episode, FrameScratch
from .lerobot_export import EXACT_PATH, hash_without_images, image_key, state_names

SUPPORTED_VERSIONS = ("v3.0", "v2.1", "v2.0")
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V3_EPISODE_COLUMNS = ("episode_index", "data/chunk_index", "data/file_index",
                      "dataset_from_index", "dataset_to_index")
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")   # videos/<key>/...
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
FRAME_COLUMNS = ("observation.state", "action", "timestamp", "frame_index", "episode_index")
OPTIONAL_COLUMNS = ("index", "task_index", "labelled", "t_measured")   # the last two: ours
KNOWN_FEATURES = set(FRAME_COLUMNS) | set(OPTIONAL_COLUMNS)
TIMESTAMP_TOLERANCE_S = 1e-4     # LeRobot's default tolerance_s
MAX_LISTED = 5


class LeRobotImportError(DatasetError):
    """Not a (supported) LeRobot dataset, a file missing, or data that does not fit the contract."""


def import_lerobot(root, contract: Union[None, str, Path, Contract] = None,
                   tolerance_s: float = TIMESTAMP_TOLERANCE_S, scratch_dir=None) -> Tuple[Dataset, Dict[str, Any]]:
    """LeRobot dataset at `root` -> (Dataset, report). `contract`: a Contract or a YAML path.
    scratch_dir: where decoded camera frames are memory-mapped from (default: the temp folder)."""
    root = Path(root)
    info = _read_info(root)
    version = str(info.get("codebase_version"))
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise LeRobotImportError(f"{root / 'meta/info.json'}: fps {fps!r} is missing or not > 0")
    fps = float(fps)
    feats = info.get("features")
    if not isinstance(feats, dict):
        raise LeRobotImportError(f"{root / 'meta/info.json'}: no `features` mapping")
    missing = [k for k in ("observation.state", "action") if k not in feats]
    if missing:
        raise LeRobotImportError(f"{root / 'meta/info.json'}: features lack {missing} (has {sorted(feats)}); "
                                 f"only low-dimensional datasets with a state vector and an action are imported")
    ours = info.get("bc_policy") if isinstance(info.get("bc_policy"), dict) else {}
    notes: List[str] = []
    c, source = _resolve_contract(root, info, contract, ours, notes)
    _check_fit(root, feats, fps, c, source, notes)

    cameras = _check_cameras(root, feats, c, source)
    skipped = {k: str(f.get("dtype")) for k, f in feats.items()
               if k not in KNOWN_FEATURES and k not in cameras and isinstance(f, dict)}
    raw = (_episodes_v3 if version.startswith("v3") else _episodes_v2)(root, info, c)
    if not raw:
        raise LeRobotImportError(f"{root}: no episodes (meta lists none)")

    episodes, ts_bad = [], []
    for r in raw:
        ep, bad = _episode(r, fps, tolerance_s, root)
        episodes.append(ep)
        if bad:
            ts_bad.append(bad)

    exact = _apply_exact(root, ours, episodes, notes)
    meta_src = ours.get("episodes_meta")
    if isinstance(meta_src, list) and len(meta_src) == len(episodes):
        for ep, m in zip(episodes, meta_src):
            ep.meta = dict(m)
    elif meta_src is not None:
        notes.append(f"bc_policy.episodes_meta has {len(meta_src)} entries for {len(episodes)} episodes: "
                     f"generic episode metadata used")
    for ep, r in zip(episodes, raw):
        _check_finite(ep, r)
    images: Dict[str, Any] = {}
    if c.images:
        images = _read_videos(root, info, version, fps, tolerance_s, c, raw, episodes, scratch_dir)

    ds = Dataset(c, episodes)
    stored_hash = ours.get("dataset_hash")
    own_hash = ds.content_hash()
    if c.images:     # decoded video is lossy: compare what the export kept exactly
        stored_hash, own_hash = ours.get("hash_without_images"), hash_without_images(ds)
    report = {
        "root": str(root), "codebase_version": version, "fps": fps,
        "robot_type": info.get("robot_type"),
        "contract": {"name": c.name, "fingerprint": c.fingerprint(), "source": source},
        "episodes": len(ds), "frames": ds.num_frames,
        "unlabelled_frames": int(sum((~e.labelled).sum() for e in ds.episodes)),
        "values": exact, "hash": ds.content_hash(),
        "hash_matches_export": (None if stored_hash is None else own_hash == stored_hash),
        "images": images, "skipped_features": skipped,
        "timestamp_tolerance_s": tolerance_s, "timestamp_violations": ts_bad,
        "episode_lengths": [len(e) for e in ds.episodes],
        "lerobot_episode_index": [int(r["episode_index"]) for r in raw],
        "notes": notes,
    }
    total = info.get("total_episodes")
    if isinstance(total, int) and total != len(ds):
        notes.append(f"info.json says total_episodes {total}, the episode metadata lists {len(ds)}")
    return ds, report


def format_import_summary(report: Dict[str, Any], out) -> str:
    """One screen: what was imported, with which contract, and anything skipped or off."""
    r, c = report, report["contract"]
    lines = [f"dataset {out}  (contract {c['name']} {c['fingerprint']}: {c['source']}; hash {r['hash']})",
             f"  LeRobot {r['codebase_version']} {r['root']}: {r['episodes']} episodes, {r['frames']} frames "
             f"at {r['fps']:g} fps ({r['frames'] / r['fps']:.1f} s)"
             + (f", robot_type {r['robot_type']}" if r.get("robot_type") else "")]
    if r["values"] == "exact":
        what = "content hash (without the lossy video frames)" if r.get("images") else "content hash"
        lines.append(f"  values: float64 exact ({EXACT_PATH} verified against the parquet columns)"
                     + {True: f"; {what} matches the export", False: f"; {what} DIFFERS from the export",
                        None: ""}[r["hash_matches_export"]])
    else:
        lines.append("  values: the parquet columns (float32 widened to float64)"
                     + ("; content hash differs from the export" if r["hash_matches_export"] is False else ""))
    for name, im in (r.get("images") or {}).items():
        lines.append(f"  camera {name}: {im['frames']} frames {im['shape'][1]}x{im['shape'][0]} decoded from "
                     f"{len(im['files'])} {im['codec']} video file(s) ({im['feature']})")
    if r["unlabelled_frames"]:
        lines.append(f"  unlabelled frames: {r['unlabelled_frames']} (excluded from the loss)")
    if r["skipped_features"]:
        sk = ", ".join(f"{k} ({v})" for k, v in list(r["skipped_features"].items())[:8])
        more = len(r["skipped_features"]) - 8
        lines.append(f"  skipped features: {sk}" + (f" ... {more} more" if more > 0 else "")
                     + ("; cameras the contract does not have" if any(v in ("image", "video")
                                                                    for v in r["skipped_features"].values()) else ""))
    bad = r["timestamp_violations"]
    if bad:
        desc = "; ".join(f"episode {b['episode']}: {b['frames']} frame(s), max {b['max_dev_s']:.2g} s"
                         for b in bad[:MAX_LISTED])
        lines.append(f"  timestamps off frame_index/fps by > {r['timestamp_tolerance_s']:g} s in {len(bad)} "
                     f"episode(s) (kept): {desc}" + (" ..." if len(bad) > MAX_LISTED else ""))
    else:
        lines.append(f"  timestamps: frame_index/fps within {r['timestamp_tolerance_s']:g} s")
    for n in r["notes"][:MAX_LISTED]:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ metadata
def _read_info(root: Path) -> Dict[str, Any]:
    if not root.is_dir():
        raise LeRobotImportError(f"no LeRobot dataset at {root}: directory not found")
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise LeRobotImportError(f"{root} is not a LeRobot dataset: {path} is missing")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LeRobotImportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise LeRobotImportError(f"{path}: not a JSON object")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotImportError(f"{path}: codebase_version {version!r} is not supported (reads LeRobot "
                                 f"v3.0, and v2.0/v2.1 as `export-lerobot` writes)")
    return info


def _resolve_contract(root: Path, info, contract, ours, notes) -> Tuple[Contract, str]:
    stored = None
    if ours.get("contract") is not None:
        try:
            stored = Contract.from_dict(ours["contract"])
        except ContractError as e:
            raise LeRobotImportError(f"{root / 'meta/info.json'}: bad bc_policy.contract: {e}") from None
    if contract is None:
        if stored is None:
            f = info["features"]
            raise LeRobotImportError(
                f"{root}: no contract stored in meta/info.json (not exported by bc-policy); pass --contract FILE "
                f"(the data has observation.state {f['observation.state'].get('shape')}, action "
                f"{f['action'].get('shape')}, fps {info.get('fps')})")
        return stored, "stored in the export"
    if isinstance(contract, Contract):
        c, source = contract, "given"
    else:
        c, source = Contract.load(contract), f"--contract {contract}"
    if stored is not None and stored.fingerprint() != c.fingerprint():
        diff = "; ".join(stored.mismatches(c)) or "metadata only (name, task, limits, ...)"
        notes.append(f"the contract stored in the export ({stored.name} {stored.fingerprint()}) differs from "
                     f"{source}, which is used: {diff}")
    return c, source


def _dim(feature: Any) -> Optional[int]:
    shape = list((feature or {}).get("shape") or [])
    if len(shape) > 1:
        return None
    return int(shape[0]) if shape else 1


def _names(feature: Dict[str, Any]) -> Optional[List[str]]:
    names = feature.get("names")
    if isinstance(names, dict):   # LeRobot sometimes nests {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else None


def _check_fit(root: Path, feats, fps: float, c: Contract, source: str, notes: List[str]) -> None:
    bad = []
    for key, want, what, names in (("observation.state", c.obs_dim, "obs dim", None),
                                   ("action", c.act_dim, "action dim", list(c.action.joints))):
        f = feats[key]
        dtype = str(f.get("dtype"))
        if dtype in ("image", "video", "string"):
            bad.append(f"{key} dtype {dtype} is not numeric")
            continue
        d = _dim(f)
        if d is None:
            bad.append(f"{key} shape {f.get('shape')} is not a vector")
        elif d != want:
            bad.append(f"{key} dim {d} != contract {what} {want}")
        have = _names(f)
        expect = state_names(Dataset(c, [])) if key == "observation.state" else names
        if have is not None and d == want and have != expect:
            notes.append(f"{key} names {have[:6]}{'...' if len(have) > 6 else ''} differ from the contract's "
                         f"{expect[:6]}{'...' if len(expect) > 6 else ''} (values taken in column order)")
    if abs(fps - c.control_rate_hz) > 1e-6:
        bad.append(f"fps {fps:g} != contract control_rate_hz {c.control_rate_hz:g}")
    if bad:
        raise LeRobotImportError(f"{root} does not fit contract {c.name!r} ({source}): " + "; ".join(bad))


def _check_cameras(root: Path, feats, c: Contract, source: str) -> Dict[str, str]:
    """{feature key: camera name} for the contract's image terms; every one must be a video
    feature of the term's shape (one error lists every problem)."""
    out, bad = {}, []
    videos = sorted(k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") == "video")
    for term in c.images:
        key = image_key(term.name)
        f = feats.get(key)
        if not isinstance(f, dict):
            bad.append(f"camera {term.name!r}: no feature {key} (video features: {videos})")
            continue
        if f.get("dtype") != "video":
            bad.append(f"camera {term.name!r}: {key} has dtype {f.get('dtype')!r}; only video features are read")
            continue
        shape = [int(x) for x in (f.get("shape") or [])]
        if shape != list(term.shape):
            bad.append(f"camera {term.name!r}: {key} shape {shape} != the contract's {list(term.shape)} "
                       f"(height, width, channels after the crop)")
            continue
        out[key] = term.name
    if bad:
        raise LeRobotImportError(f"{root} does not fit contract {c.name!r} ({source}): " + "; ".join(bad))
    return out


def _read_videos(root: Path, info, version: str, fps: float, tol: float, c: Contract, raw, episodes,
                 scratch_dir) -> Dict[str, Any]:
    """Every camera's frames into `episodes[i].images` (module docstring); report per camera."""
    import av   # lazy: only datasets with cameras need PyAV

    template = info.get("video_path")
    if not template:
        raise LeRobotImportError(f"{root / 'meta/info.json'}: video features but no video_path template")
    v3 = version.startswith("v3")
    chunks = int(info.get("chunks_size") or 1000)
    scratch = FrameScratch(scratch_dir)
    report: Dict[str, Any] = {}
    try:
        for ep in episodes:
            ep.images = {}
        for term in c.images:
            key = image_key(term.name)
            # file -> [(episode position, from_timestamp, length)]
            files: Dict[Path, List[Tuple[int, float, int]]] = {}
            for i, r in enumerate(raw):
                e = int(r["episode_index"])
                if v3:
                    v = r.get("videos") or {}
                    need = [f"videos/{key}/{k}" for k in VIDEO_COLUMNS]
                    if any(v.get(k) is None for k in need):
                        raise LeRobotImportError(f"episode {e}: the episode metadata lacks {need} (camera {term.name!r})")
                    path = root / str(template).format(video_key=key, chunk_index=int(v[need[0]]),
                                                       file_index=int(v[need[1]]))
                    start = float(v[need[2]])
                else:
                    path = root / str(template).format(video_key=key, episode_chunk=e // chunks, episode_index=e)
                    start = 0.0
                files.setdefault(path, []).append((i, start, len(episodes[i])))
            codec, total, outside = "", 0, 0
            for path, eps in files.items():
                if not path.is_file():
                    raise LeRobotImportError(f"camera {term.name!r}: video file missing: {path} (episodes "
                                             f"{[int(raw[i]['episode_index']) for i, _, _ in eps]})")
                eps.sort(key=lambda x: x[1])
                starts = [st for _, st, _ in eps]
                frames = {i: scratch.new((n,) + term.shape) for i, _, n in eps}
                got = {i: np.zeros(n, dtype=bool) for i, _, n in eps}
                try:
                    with av.open(str(path)) as f:
                        stream = f.streams.video[0]
                        codec = stream.codec_context.codec.canonical_name
                        for fr in f.decode(stream):
                            t = float(fr.pts * stream.time_base) if fr.pts is not None else float(fr.time or 0.0)
                            hit = None
                            j = bisect.bisect_right(starts, t + tol) - 1     # the episode starting last before t
                            if j >= 0:
                                i, start, n = eps[j]
                                k = int(round((t - start) * fps))
                                if 0 <= k < n and abs(t - (start + k / fps)) <= tol:
                                    hit = (i, k)
                            if hit is None:
                                outside += 1
                                continue
                            img = fr.to_ndarray(format="rgb24")
                            if img.shape != term.shape:
                                raise LeRobotImportError(f"camera {term.name!r}: {path} has {img.shape[1]}x{img.shape[0]} "
                                                         f"frames, the contract expects {term.shape[1]}x{term.shape[0]}")
                            frames[hit[0]][hit[1]] = img
                            got[hit[0]][hit[1]] = True
                except (av.error.FFmpegError, IndexError) as e:
                    raise LeRobotImportError(f"camera {term.name!r}: cannot decode {path}: {e}") from None
                for i, start, n in eps:
                    if not got[i].all():
                        miss = np.flatnonzero(~got[i])
                        raise LeRobotImportError(
                            f"episode {int(raw[i]['episode_index'])}, camera {term.name!r}: {path} has no frame at "
                            f"{len(miss)} of its {n} timestamps (from {start:g} s + k / {fps:g} within {tol:g} s; "
                            f"first missing k = {int(miss[0])})")
                    episodes[i].images[term.name] = frames[i]
                    total += n
            report[term.name] = {"feature": key, "files": [str(p.relative_to(root)) for p in files], "codec": codec,
                                 "frames": total, "shape": list(term.shape), "frames_outside_episodes": outside}
    finally:
        scratch.close()
    return report


def _tasks_v3(root: Path) -> Dict[int, str]:
    import pyarrow.parquet as pq

    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        return {}
    t = pq.read_table(path)
    names = t.column_names
    text = next((n for n in ("task", "__index_level_0__") if n in names), None)
    if "task_index" not in names or text is None:
        return {}
    return {int(i): str(s) for i, s in zip(t.column("task_index").to_pylist(), t.column(text).to_pylist())}


def _episodes_v3(root: Path, info, c: Contract) -> List[Dict[str, Any]]:
    """Per episode: its rows (dict of arrays) cut from the data file its metadata names."""
    import pyarrow.parquet as pq

    ep_dir = root / "meta" / "episodes"
    files = sorted(ep_dir.rglob("*.parquet")) if ep_dir.is_dir() else []
    if not files:
        raise LeRobotImportError(f"{root}: no episode metadata: {ep_dir}/chunk-XXX/file-XXX.parquet missing")
    rows: List[Dict[str, Any]] = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [k for k in V3_EPISODE_COLUMNS if k not in names]
        if missing:
            raise LeRobotImportError(f"{f}: episode metadata lacks columns {missing}")
        wanted = list(V3_EPISODE_COLUMNS) + [k for k in names if k in ("tasks", "length") or
                                             (k.startswith("videos/") and k.split("/")[-1] in VIDEO_COLUMNS)]
        rows += pq.read_table(f, columns=wanted).to_pylist()
    rows.sort(key=lambda r: r["episode_index"])
    dup = sorted(k for k, v in Counter(r["episode_index"] for r in rows).items() if v > 1)
    if dup:
        raise LeRobotImportError(f"{ep_dir}: episode_index listed more than once: {dup[:MAX_LISTED]}")
    tasks = _tasks_v3(root)
    template = str(info.get("data_path") or V3_DATA_PATH)
    cache: Dict[Path, Dict[str, np.ndarray]] = {}
    out = []
    for r in rows:
        e = int(r["episode_index"])
        path = root / template.format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))
        if path not in cache:      # one data file in memory at a time (episodes come in file order)
            cache = {path: _read_frames(path, c)}
        cols = cache[path]
        a, b = int(r["dataset_from_index"]), int(r["dataset_to_index"])
        sel = ((cols["index"] >= a) & (cols["index"] < b)) if "index" in cols else (cols["episode_index"] == e)
        part = {k: v[sel] for k, v in cols.items()}
        n = len(part["frame_index"])
        if n != b - a or ("length" in r and r["length"] is not None and n != int(r["length"])):
            raise LeRobotImportError(f"episode {e}: {path} has {n} frames with index in [{a}, {b}), the metadata "
                                     f"says {b - a} (length {r.get('length')})")
        other = sorted(set(part["episode_index"].tolist()) - {e})
        if other:
            raise LeRobotImportError(f"episode {e}: rows {a}..{b - 1} of {path} belong to episode(s) "
                                     f"{other[:MAX_LISTED]}")
        ep_tasks = [str(t) for t in (r.get("tasks") or [])]
        if not ep_tasks and "task_index" in part and n:
            ep_tasks = [tasks[i] for i in dict.fromkeys(part["task_index"].tolist()) if i in tasks]
        out.append({"episode_index": e, "path": path, "cols": part, "tasks": ep_tasks,
                    "videos": {k: v for k, v in r.items() if k.startswith("videos/")}})
    return out


def _episodes_v2(root: Path, info, c: Contract) -> List[Dict[str, Any]]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise LeRobotImportError(f"{root}: no episode metadata: {path} is missing")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    template = str(info.get("data_path") or V2_DATA_PATH)
    chunks = int(info.get("chunks_size") or 1000)
    out = []
    for r in sorted(rows, key=lambda r: r["episode_index"]):
        e = int(r["episode_index"])
        f = root / template.format(episode_chunk=e // chunks, episode_index=e)
        cols = _read_frames(f, c)
        n = len(cols["frame_index"])
        if r.get("length") is not None and n != int(r["length"]):
            raise LeRobotImportError(f"episode {e}: {f} has {n} frames, meta/episodes.jsonl says {r['length']}")
        other = sorted(set(cols["episode_index"].tolist()) - {e})
        if other:
            raise LeRobotImportError(f"episode {e}: {f} holds rows of episode(s) {other[:MAX_LISTED]}")
        out.append({"episode_index": e, "path": f, "cols": cols, "tasks": [str(t) for t in (r.get("tasks") or [])]})
    return out


# ------------------------------------------------------------------------------ frames
def _read_frames(path: Path, c: Contract) -> Dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LeRobotImportError(f"data file missing: {path}")
    names = pq.read_schema(path).names
    missing = [k for k in FRAME_COLUMNS if k not in names]
    if missing:
        raise LeRobotImportError(f"{path}: missing columns {missing} (has {names})")
    t = pq.read_table(path, columns=[k for k in FRAME_COLUMNS + OPTIONAL_COLUMNS if k in names])
    out = {"observation.state": _matrix(t.column("observation.state"), c.obs_dim, path, "observation.state"),
           "action": _matrix(t.column("action"), c.act_dim, path, "action")}
    for k in t.column_names:
        if k not in out:
            col = t.column(k)
            if col.null_count:
                raise LeRobotImportError(f"{path}: column {k} has {col.null_count} null values")
            out[k] = np.asarray(col.to_numpy())
    return out


def _matrix(col, dim: int, path: Path, name: str) -> np.ndarray:
    """A list<number>[dim] (or, for dim 1, a number) column -> (rows, dim) float64."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise LeRobotImportError(f"{path}: {name} has {arr.null_count} null rows")
    typ = arr.type
    if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        if pa.types.is_fixed_size_list(typ):
            lengths = np.full(len(arr), typ.list_size)
        else:
            lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
        wrong = np.flatnonzero(lengths != dim)
        if len(wrong):
            raise LeRobotImportError(f"{path}: {name} row {int(wrong[0])} has {int(lengths[wrong[0]])} values, "
                                     f"the contract needs {dim} ({len(wrong)} such rows)")
        flat = arr.flatten()
        values_type = flat.type
    elif dim == 1:
        flat, values_type = arr, typ
    else:
        raise LeRobotImportError(f"{path}: {name} has type {typ}, expected a list of {dim} numbers")
    if not (pa.types.is_floating(values_type) or pa.types.is_integer(values_type)):
        raise LeRobotImportError(f"{path}: {name} holds {values_type}, expected numbers")
    if flat.null_count:
        raise LeRobotImportError(f"{path}: {name} has {flat.null_count} null values")
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(arr), dim)


def _episode(r: Dict[str, Any], fps: float, tol: float, root: Path) -> Tuple[Episode, Optional[Dict[str, Any]]]:
    cols, e, path = r["cols"], r["episode_index"], r["path"]
    order = np.argsort(cols["frame_index"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    fi = cols["frame_index"].astype(np.int64)
    n = len(fi)
    wrong = np.flatnonzero(fi != np.arange(n))
    if len(wrong):
        k = int(wrong[0])
        raise LeRobotImportError(f"episode {e} ({path}): frame_index is not 0..{n - 1} (sorted position {k} "
                                 f"holds frame {int(fi[k])}: frames missing or duplicated)")
    ts = cols["timestamp"].astype(np.float64)
    dev = np.abs(ts - fi / fps)
    off = np.flatnonzero(~(dev <= tol))
    bad = None
    if len(off):
        bad = {"episode": e, "frames": int(len(off)), "first_frame": int(off[0]),
               "max_dev_s": float(np.nanmax(dev)) if np.isfinite(dev).any() else float("inf")}
    t = cols["t_measured"].astype(np.float64) if "t_measured" in cols else ts
    labelled = cols["labelled"].astype(bool) if "labelled" in cols else None
    meta: Dict[str, Any] = {"episode_id": e, "source": "lerobot", "lerobot_dataset": root.name}
    if r["tasks"]:
        meta["task_description"] = r["tasks"][0]
        if len(r["tasks"]) > 1:
            meta["tasks"] = list(r["tasks"])
    return Episode(cols["observation.state"], cols["action"], t, meta, labelled), bad


def _apply_exact(root: Path, ours: Dict[str, Any], episodes: List[Episode], notes: List[str]) -> str:
    """Our export's float64 values (+ chunk labels), if they still match the parquet columns."""
    rel = ours.get("exact_arrays")
    if not rel:
        return "parquet"
    path = root / str(rel)
    if not path.is_file():
        notes.append(f"{path} is missing: float32 values from the parquet files (chunk labels, if any, lost)")
        return "parquet"
    with np.load(path) as f:
        z = {k: f[k] for k in f.files}
    lengths = [len(e) for e in episodes]
    obs, act = z.get("obs"), z.get("act")
    has = z.get("chunk_label_episodes", np.zeros(len(episodes), bool)).astype(bool)
    cl = z.get("chunk_labels")
    same = (obs is not None and act is not None and list(z.get("lengths", [])) == lengths
            and obs.shape == (sum(lengths),) + episodes[0].obs.shape[1:]
            and act.shape == (sum(lengths),) + episodes[0].act.shape[1:] and len(has) == len(episodes)
            and (not has.any() or (cl is not None and cl.ndim == 3 and len(cl) == sum(np.array(lengths)[has]))))
    if same:
        f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
        same = (np.array_equal(f32(obs), np.concatenate([e.obs for e in episodes]), equal_nan=True)
                and np.array_equal(f32(act), np.concatenate([e.act for e in episodes]), equal_nan=True))
    if not same:
        notes.append(f"{path} does not match the parquet data (edited after the export?): float32 values "
                     f"from the parquet files used (chunk labels, if any, lost)")
        return "parquet"
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    pos = 0
    for i, ep in enumerate(episodes):
        a, b = bounds[i], bounds[i + 1]
        ep.obs, ep.act = obs[a:b].astype(np.float64), act[a:b].astype(np.float64)
        if has[i]:
            ep.chunk_labels = cl[pos:pos + len(ep)].astype(np.float64)
            pos += len(ep)
    return "exact"


def _check_finite(ep: Episode, r: Dict[str, Any]) -> None:
    where = f"episode {r['episode_index']} ({r['path']})"
    for name, x in (("observation.state", ep.obs), ("action", np.where(ep.labelled[:, None], ep.act, 0.0))):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if len(bad):
            raise LeRobotImportError(f"{where}: NaN/inf in {name} at frame(s) {bad[:MAX_LISTED].tolist()}"
                                     f"{' ...' if len(bad) > MAX_LISTED else ''} ({len(bad)} frames)")
    if ep.chunk_labels is not None:
        bad = np.flatnonzero(~np.isfinite(ep.chunk_labels[ep.labelled]).all(axis=(1, 2)))
        if len(bad):
            raise LeRobotImportError(f"{where}: NaN/inf in chunk labels ({len(bad)} labelled frames)")
