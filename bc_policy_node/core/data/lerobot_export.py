"""Export a `core.data.episodes.Dataset` to the LeRobot dataset layout (v2.1, pyarrow only).

Layout written (LeRobot `CODEBASE_VERSION = "v2.1"`, one parquet file per episode)::

    meta/info.json            codebase_version, robot_type, fps, totals, chunks_size=1000,
                              splits, data_path / video_path templates, features
    meta/episodes.jsonl       {"episode_index", "tasks": [str], "length"} per episode
    meta/tasks.jsonl          {"task_index", "task"}
    meta/episodes_stats.jsonl {"episode_index", "stats": {feature: {min,max,mean,std,count}}}
    meta/stats.json           aggregate {feature: {min,max,mean,std}} (v2.0 readers)
    meta/bc_policy_exact.npz  the float64 obs/act (+ chunk labels) of every frame, so that
                              `import-lerobot` gives the dataset back bit for bit (LeRobot's
                              columns are float32; LeRobot ignores this file)
    data/chunk-000/episode_000000.parquet

Parquet columns: observation.state (fixed-size list<float32>[obs_dim]), action
(list<float32>[act_dim]), timestamp (float32, = frame_index / fps: LeRobot checks that
timestamps are synchronous with fps), frame_index, episode_index, index, task_index (int64),
plus `labelled` (bool: false = no expert label, DAgger frames) and `t_measured` (float64, the
episode's measured time of the frame, which may jitter around the nominal timestamp).
Feature names come from the contract (`joint_pos.j1`, `goal.0`, action joint names).
info.json carries `bc_policy`: the contract, the dataset's content hash, every episode's metadata
and the path of the exact-values file (read back by `core.data.lerobot_import`).
Cameras/videos are not produced (`total_videos` 0, video_path null).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .episodes import Dataset

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
EXACT_PATH = "meta/bc_policy_exact.npz"


def state_names(dataset: Dataset) -> List[str]:
    names: List[str] = []
    for term in dataset.contract.observation:
        if term.joints:
            names += [f"{term.name}.{j}" for j in term.joints]
        else:
            names += [f"{term.name}.{i}" for i in range(term.size)] if term.size > 1 else [term.name]
    return names


def _features(dataset: Dataset) -> Dict[str, Any]:
    c = dataset.contract
    scalar = lambda dt: {"dtype": dt, "shape": [1], "names": None}  # noqa: E731
    return {
        "observation.state": {"dtype": "float32", "shape": [c.obs_dim], "names": state_names(dataset)},
        "action": {"dtype": "float32", "shape": [c.act_dim], "names": list(c.action.joints)},
        "timestamp": scalar("float32"), "frame_index": scalar("int64"),
        "episode_index": scalar("int64"), "index": scalar("int64"), "task_index": scalar("int64"),
        "labelled": scalar("bool"), "t_measured": scalar("float64"),
    }


def _stats(x: np.ndarray) -> Dict[str, List[float]]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) == 0:
        z = [0.0] * x.shape[1]
        return {"min": z, "max": z, "mean": z, "std": z, "count": [0]}
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


def _task_of(meta: Dict[str, Any], default: str) -> str:
    return str(meta.get("task_description") or meta.get("task") or default)


def export_lerobot(dataset: Dataset, out_dir, robot_type: Optional[str] = None,
                   overwrite: bool = False) -> Path:
    """Write `dataset` as a LeRobot v2.1 dataset under `out_dir`; returns out_dir."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    c = dataset.contract
    fps = c.control_rate_hz
    fps_out = int(fps) if float(fps).is_integer() else fps
    tasks: Dict[str, int] = {}
    episodes_lines, stats_lines = [], []
    index = 0
    all_obs, all_act = [], []
    for ei, ep in enumerate(dataset.episodes):
        n = len(ep)
        task = _task_of(ep.meta, c.task)
        ti = tasks.setdefault(task, len(tasks))
        frame = np.arange(n, dtype=np.int64)
        ts = (frame / fps).astype(np.float32)
        obs = ep.obs.astype(np.float32)
        act = ep.act.astype(np.float32)
        cols = {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), c.obs_dim),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(act.reshape(-1)), c.act_dim),
            "timestamp": pa.array(ts), "frame_index": pa.array(frame),
            "episode_index": pa.array(np.full(n, ei, dtype=np.int64)),
            "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, ti, dtype=np.int64)),
            "labelled": pa.array(ep.labelled.astype(bool)),
            "t_measured": pa.array(ep.t.astype(np.float64)),
        }
        path = out / DATA_PATH.format(episode_chunk=ei // CHUNKS_SIZE, episode_index=ei)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        episodes_lines.append({"episode_index": ei, "tasks": [task], "length": n})
        stats_lines.append({"episode_index": ei, "stats": {
            "observation.state": _stats(obs), "action": _stats(act[ep.labelled]),
            "timestamp": _stats(ts), "frame_index": _stats(frame),
            "episode_index": _stats(np.full(n, ei)), "index": _stats(np.arange(index, index + n)),
            "task_index": _stats(np.full(n, ti))}})
        all_obs.append(obs)
        all_act.append(act[ep.labelled])
        index += n
    n_eps = len(dataset.episodes)
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type or c.robot,
        "total_episodes": n_eps, "total_frames": index, "total_tasks": len(tasks),
        "total_videos": 0, "total_chunks": (n_eps + CHUNKS_SIZE - 1) // CHUNKS_SIZE,
        "chunks_size": CHUNKS_SIZE, "fps": fps_out, "splits": {"train": f"0:{n_eps}"},
        "data_path": DATA_PATH, "video_path": None, "features": _features(dataset),
        "bc_policy": {"contract": c.to_dict(), "dataset_hash": dataset.content_hash(),
                      "episodes_meta": [_jsonable(e.meta) for e in dataset.episodes],
                      "exact_arrays": EXACT_PATH},
    }
    agg = {}
    if n_eps:
        agg = {"observation.state": _stats(np.concatenate(all_obs)),
               "action": _stats(np.concatenate(all_act))}
        for v in agg.values():
            v.pop("count")
    _write_exact(dataset, out / EXACT_PATH)
    _write_json(out / "meta" / "info.json", info)
    _write_json(out / "meta" / "stats.json", agg)
    _write_jsonl(out / "meta" / "episodes.jsonl", episodes_lines)
    _write_jsonl(out / "meta" / "episodes_stats.jsonl", stats_lines)
    _write_jsonl(out / "meta" / "tasks.jsonl",
                 [{"task_index": i, "task": t} for t, i in sorted(tasks.items(), key=lambda x: x[1])])
    return out


def _write_exact(dataset: Dataset, path: Path) -> None:
    """float64 obs/act of all frames (episodes concatenated, `lengths`) + chunk labels if any."""
    eps, c = dataset.episodes, dataset.contract
    cat = lambda name, dim: (np.concatenate([getattr(e, name) for e in eps])  # noqa: E731
                             if eps else np.zeros((0, dim)))
    extra = {}
    has = np.array([e.chunk_labels is not None for e in eps], dtype=bool)
    if has.any():
        extra["chunk_labels"] = np.concatenate([e.chunk_labels for e in eps if e.chunk_labels is not None])
        extra["chunk_label_episodes"] = has
    np.savez(path, obs=cat("obs", c.obs_dim), act=cat("act", c.act_dim),
             lengths=np.array([len(e) for e in eps], dtype=np.int64), **extra)


def _jsonable(o: Any) -> Any:
    return json.loads(json.dumps(o, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=4))


def _write_jsonl(path: Path, rows: List[Dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in rows))


def read_lerobot_episode(out_dir, episode_index: int) -> Dict[str, np.ndarray]:
    """Columns of one exported episode as numpy arrays (for checks and tools)."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    t = pq.read_table(out / DATA_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE,
                                             episode_index=episode_index))
    res = {}
    for name in t.column_names:
        col = t.column(name).combine_chunks()
        if hasattr(col, "flatten") and str(col.type).startswith("fixed_size_list"):
            res[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            res[name] = col.to_numpy(zero_copy_only=False)
    return res
