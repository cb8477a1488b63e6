"""Export a `core.data.episodes.Dataset` to the LeRobot dataset layout (v3.0; v2.1 on request).

LeRobot v3.0 (`CODEBASE_VERSION = "v3.0"`, huggingface/lerobot `datasets/utils.py`: several
episodes per file, `chunk-XXX/file-YYY` paths, a new file past `data_files_size_in_mb` /
`video_files_size_in_mb`, at most `chunks_size` files per chunk)::

    meta/info.json                            codebase_version, robot_type, fps, totals,
                                              chunks_size, data/video file sizes (MB), splits,
                                              data_path / video_path templates, features
    meta/episodes/chunk-000/file-000.parquet  per episode: episode_index, tasks, length,
                                              data/chunk_index, data/file_index,
                                              dataset_from_index, dataset_to_index (global
                                              `index`), videos/<key>/{chunk_index, file_index,
                                              from_timestamp, to_timestamp} per camera,
                                              meta/episodes/{chunk,file}_index, stats/<feature>/*
    meta/tasks.parquet                        task_index, indexed by the task string (pandas
                                              metadata: `pd.read_parquet` gives LeRobot's frame)
    meta/stats.json                           {feature: {min, max, mean, std, count}}; cameras
                                              per channel in [0, 1], shape (3, 1, 1)
    meta/bc_policy_exact.npz                  the float64 obs/act (+ chunk labels) of every
                                              frame, so that `import-lerobot` gives the dataset
                                              back bit for bit (LeRobot's columns are float32)
    data/chunk-000/file-000.parquet           the frames of every episode, in episode order
    videos/observation.images.<camera>/chunk-000/file-000.mp4
                                              every episode's frames of that camera, one after
                                              the other (LeRobot v3: one video stream per file;
                                              an episode is [from_timestamp, to_timestamp))

Parquet columns: observation.state (fixed-size list<float32>[obs_dim]), action
(list<float32>[act_dim]), timestamp (float32, = frame_index / fps: LeRobot checks that
timestamps are synchronous with fps), frame_index, episode_index, index, task_index (int64),
plus `labelled` (bool: false = not a training sample - no expert label, or a camera frame
outside the alignment tolerance) and `t_measured` (float64, the episode's measured time of the
frame, which may jitter around the nominal timestamp). Feature names come from the contract
(`joint_pos.j1`, `goal.0`, action joint names). info.json carries `bc_policy`: the contract,
the dataset's content hash, every episode's metadata and the path of the exact-values file
(read back by `core.data.lerobot_import`).

Cameras (the contract's image terms; the dataset's uint8 frames, already cropped): feature
`observation.images.<name>` with dtype "video", shape [h, w, 3], names [height, width,
channels] and `info` as LeRobot's `get_video_info` writes it (video.height/width/codec/pix_fmt/
fps/channels, has_audio, the encoder settings, is_depth_map). Frame k of an episode is video
frame from_timestamp * fps + k, presented at (its index in the file) / fps - the stream's time
base is 1/fps and every frame is kept (no B-frame reordering across the timestamps LeRobot
queries). Encoded with PyAV (imported only when there are cameras) with LeRobot's defaults:
libsvtav1, yuv420p, GOP 2, crf 30, preset 12 (`VideoOptions`); video is lossy (yuv420p halves
the chroma resolution), so frames come back close to, not equal to, the dataset's - the
dataset's exact frames are not in the export. Frames are read from the dataset's memory-mapped
arrays block by block and encoded episode by episode (memory: one block).

`version="v2.1"`: the previous layout (one parquet file per episode, meta/episodes.jsonl,
tasks.jsonl, episodes_stats.jsonl), for datasets without cameras only.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .episodes import Dataset, DatasetError

CODEBASE_VERSION = "v3.0"
VERSIONS = ("v3.0", "v2.1")
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100      # LeRobot DEFAULT_DATA_FILE_SIZE_IN_MB
VIDEO_FILE_SIZE_MB = 200     # LeRobot DEFAULT_VIDEO_FILE_SIZE_IN_MB
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
EXACT_PATH = "meta/bc_policy_exact.npz"
IMAGE_KEY = "observation.images.{}"
BLOCK = 256                  # frames read from a memory-mapped camera array at a time


class LeRobotExportError(DatasetError):
    """The dataset cannot be written in the requested layout (cameras in v2.1, a codec that
    refuses the frame size, ...)."""


@dataclass(frozen=True)
class VideoOptions:
    """Encoder settings (LeRobot's `VideoEncoderConfig` defaults)."""

    vcodec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    g: Optional[int] = 2            # GOP size (a keyframe every g frames: cheap random access)
    crf: Optional[int] = 30
    preset: Optional[int] = 12      # libsvtav1 speed preset (ignored by other codecs)
    fast_decode: int = 0
    extra_options: Dict[str, str] = field(default_factory=dict)

    def codec_options(self) -> Dict[str, str]:
        """What LeRobot's `get_codec_options(as_strings=True)` passes to the encoder."""
        o: Dict[str, str] = {}
        if self.g is not None:
            o["g"] = str(self.g)
        if self.crf is not None:
            o["crf"] = str(self.crf)
        if self.preset is not None and self.vcodec == "libsvtav1":
            o["preset"] = str(self.preset)          # 0 (slow) .. 13 (fast); x264 presets are names
        if self.vcodec == "libsvtav1" and self.fast_decode:
            o["svtav1-params"] = f"fast-decode={max(0, min(2, self.fast_decode))}"
        for k, v in self.extra_options.items():
            o.setdefault(k, str(v))
        return o


def image_key(name: str) -> str:
    return IMAGE_KEY.format(name)


def hash_without_images(dataset: Dataset) -> str:
    """The content hash of the dataset's state, actions, times and labels only (the contract
    without its cameras): what survives a lossy video round trip exactly."""
    import dataclasses

    from .episodes import Episode

    c = dataclasses.replace(dataset.contract, images=())
    return Dataset(c, [Episode(e.obs, e.act, e.t, e.meta, e.labelled, e.chunk_labels)
                       for e in dataset.episodes]).content_hash()


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
    out = {
        "observation.state": {"dtype": "float32", "shape": [c.obs_dim], "names": state_names(dataset)},
        "action": {"dtype": "float32", "shape": [c.act_dim], "names": list(c.action.joints)},
    }
    for term in c.images:
        out[image_key(term.name)] = {"dtype": "video", "shape": list(term.shape),
                                     "names": ["height", "width", "channels"]}
    out.update({"timestamp": scalar("float32"), "frame_index": scalar("int64"),
                "episode_index": scalar("int64"), "index": scalar("int64"), "task_index": scalar("int64"),
                "labelled": scalar("bool"), "t_measured": scalar("float64")})
    return out


def _stats(x: np.ndarray) -> Dict[str, List[float]]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) == 0:
        z = [0.0] * x.shape[1]
        return {"min": z, "max": z, "mean": z, "std": z, "count": [0]}
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


class _ImageStats:
    """Per-channel min/max/mean/std of uint8 frames in [0, 1], LeRobot's (3, 1, 1) layout."""

    def __init__(self):
        self.n = 0
        self.s = np.zeros(3)
        self.s2 = np.zeros(3)
        self.lo = np.full(3, 255.0)
        self.hi = np.zeros(3)
        self.frames = 0

    def add(self, block: np.ndarray) -> None:
        x = block.reshape(-1, 3).astype(np.float64)
        self.n += len(x)
        self.frames += len(block)
        self.s += x.sum(0)
        self.s2 += (x * x).sum(0)
        self.lo = np.minimum(self.lo, x.min(0))
        self.hi = np.maximum(self.hi, x.max(0))

    def result(self) -> Dict[str, Any]:
        n = max(self.n, 1)
        mean = self.s / n
        std = np.sqrt(np.maximum(self.s2 / n - mean * mean, 0.0))
        shape = lambda v: [[[float(x) / 255.0]] for x in v]  # noqa: E731
        return {"min": shape(self.lo if self.n else np.zeros(3)), "max": shape(self.hi), "mean": shape(mean),
                "std": shape(std), "count": [int(self.frames)]}


def _task_of(meta: Dict[str, Any], default: str) -> str:
    return str(meta.get("task_description") or meta.get("task") or default)


def _prepare(out_dir, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True)")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    return out


def _frame_columns(dataset: Dataset, ei: int, index: int, ti: int) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    import pyarrow as pa

    c, ep = dataset.contract, dataset.episodes[ei]
    n = len(ep)
    frame = np.arange(n, dtype=np.int64)
    obs, act = ep.obs.astype(np.float32), ep.act.astype(np.float32)
    cols = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), c.obs_dim),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(act.reshape(-1)), c.act_dim),
        "timestamp": pa.array((frame / c.control_rate_hz).astype(np.float32)), "frame_index": pa.array(frame),
        "episode_index": pa.array(np.full(n, ei, dtype=np.int64)),
        "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
        "task_index": pa.array(np.full(n, ti, dtype=np.int64)),
        "labelled": pa.array(ep.labelled.astype(bool)),
        "t_measured": pa.array(ep.t.astype(np.float64)),
    }
    return cols, obs, act


def _episode_stats(obs, act, labelled, n: int, ei: int, index: int, ti: int, fps: float) -> Dict[str, Any]:
    frame = np.arange(n)
    return {"observation.state": _stats(obs), "action": _stats(act[labelled]),
            "timestamp": _stats((frame / fps).astype(np.float32)), "frame_index": _stats(frame),
            "episode_index": _stats(np.full(n, ei)), "index": _stats(np.arange(index, index + n)),
            "task_index": _stats(np.full(n, ti))}


def export_lerobot(dataset: Dataset, out_dir, robot_type: Optional[str] = None, overwrite: bool = False,
                   version: str = CODEBASE_VERSION, video: Optional[VideoOptions] = None) -> Path:
    """Write `dataset` as a LeRobot dataset under `out_dir` (module docstring); returns out_dir."""
    if version not in VERSIONS:
        raise LeRobotExportError(f"version must be one of {VERSIONS}, got {version!r}")
    c = dataset.contract
    if version == "v2.1":
        if c.images:
            raise LeRobotExportError(f"contract {c.name!r} has cameras {[t.name for t in c.images]}: videos are "
                                     f"written in the v3.0 layout only (version='v3.0')")
        return _export_v21(dataset, _prepare(out_dir, overwrite), robot_type)
    return _export_v3(dataset, _prepare(out_dir, overwrite), robot_type, video or VideoOptions())


# ----------------------------------------------------------------------------- v3.0
class _Videos:
    """One MP4 per camera and file index: every episode's frames appended to the open file;
    a new file (next file index) once the open one passes `max_mb`."""

    def __init__(self, out: Path, dataset: Dataset, opts: VideoOptions, max_mb: float):
        import av   # lazy: only exports with cameras need PyAV

        self.av, self.out, self.opts, self.max_bytes = av, out, opts, max_mb * 1e6
        self.fps = dataset.contract.control_rate_hz
        self.rate = Fraction(self.fps).limit_denominator(1_000_000)
        self.terms = dataset.contract.images
        self.state: Dict[str, Dict[str, Any]] = {}
        self.first_path: Dict[str, Path] = {}
        os.environ.setdefault("SVT_LOG", "1")     # SVT-AV1: errors only (its info banner is ~40 lines)

    def _open(self, term, chunk: int, file: int) -> Dict[str, Any]:
        key = image_key(term.name)
        path = self.out / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w, _ = term.shape
        where = f"camera {term.name!r} ({w}x{h}, {self.opts.vcodec} {self.opts.pix_fmt})"
        try:
            container = self.av.open(str(path), "w")
            stream = container.add_stream(self.opts.vcodec, rate=self.rate, options=self.opts.codec_options())
            stream.width, stream.height, stream.pix_fmt = w, h, self.opts.pix_fmt
            stream.codec_context.time_base = Fraction(1) / self.rate
        except (self.av.error.FFmpegError, ValueError) as e:
            raise LeRobotExportError(f"{where}: cannot open the encoder: {e}") from None
        self.first_path.setdefault(term.name, path)
        return {"container": container, "stream": stream, "path": path, "chunk": chunk, "file": file,
                "frames": 0, "bytes": 0, "where": where}

    def add_episode(self, frames: np.ndarray, term) -> Dict[str, Any]:
        """Encode one episode's frames; returns its videos/<key>/* metadata."""
        st = self.state.get(term.name)
        if st is None:
            st = self.state[term.name] = self._open(term, 0, 0)
        elif st["frames"] and st["bytes"] >= self.max_bytes:      # encoded bytes so far (mp4 buffers its writes)
            self._close(st)
            chunk, file = (st["chunk"] + 1, 0) if st["file"] == CHUNKS_SIZE - 1 else (st["chunk"], st["file"] + 1)
            st = self.state[term.name] = self._open(term, chunk, file)
        start = st["frames"]
        VideoFrame = self.av.VideoFrame
        try:
            for a in range(0, len(frames), BLOCK):
                for img in np.asarray(frames[a:a + BLOCK]):
                    f = VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                    f.pts = st["frames"]
                    st["frames"] += 1
                    for packet in st["stream"].encode(f):
                        st["bytes"] += packet.size
                        st["container"].mux(packet)
        except self.av.error.FFmpegError as e:
            raise LeRobotExportError(f"{st['where']}: encoding failed: {e}") from None
        key = image_key(term.name)
        return {f"videos/{key}/chunk_index": st["chunk"], f"videos/{key}/file_index": st["file"],
                f"videos/{key}/from_timestamp": start / self.fps,
                f"videos/{key}/to_timestamp": st["frames"] / self.fps}

    def _close(self, st: Dict[str, Any]) -> None:
        try:
            for packet in st["stream"].encode():
                st["container"].mux(packet)
            st["container"].close()
        except self.av.error.FFmpegError as e:
            raise LeRobotExportError(f"{st['where']}: finishing {st['path']} failed: {e}") from None

    def close(self) -> None:
        for st in self.state.values():
            self._close(st)

    def info(self, term) -> Dict[str, Any]:
        """LeRobot's `get_video_info` of the camera's first file + the encoder settings."""
        with self.av.open(str(self.first_path[term.name])) as f:
            s = f.streams.video[0]
            info: Dict[str, Any] = {"video.height": s.height, "video.width": s.width,
                                    "video.codec": s.codec_context.codec.canonical_name, "video.pix_fmt": s.pix_fmt,
                                    "video.fps": int(s.base_rate) if s.base_rate else self.fps, "video.channels": 3,
                                    "has_audio": bool(f.streams.audio)}
        for k, v in asdict(self.opts).items():
            if k != "vcodec":
                info.setdefault(f"video.{k}", v)
        info["is_depth_map"] = False
        return info


def _tasks_table(tasks: Dict[str, int]):
    """meta/tasks.parquet as pandas writes a frame indexed by `task` (LeRobot reads it with
    pd.read_parquet and takes the index as the task text); no pandas needed to write it."""
    import pyarrow as pa

    order = sorted(tasks.items(), key=lambda x: x[1])
    t = pa.table({"task_index": pa.array([i for _, i in order], pa.int64()),
                  "task": pa.array([s for s, _ in order], pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [
        {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
         "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    return t.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _export_v3(dataset: Dataset, out: Path, robot_type: Optional[str], opts: VideoOptions) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = dataset.contract
    fps = c.control_rate_hz
    fps_out = int(fps) if float(fps).is_integer() else fps
    videos = _Videos(out, dataset, opts, VIDEO_FILE_SIZE_MB) if c.images else None
    image_stats = {t.name: _ImageStats() for t in c.images}
    tasks: Dict[str, int] = {}
    ep_rows: List[Dict[str, Any]] = []
    all_obs, all_act = [], []
    writer, data_chunk, data_file, data_path = None, 0, 0, None
    index = 0
    try:
        for ei, ep in enumerate(dataset.episodes):
            n = len(ep)
            task = _task_of(ep.meta, c.task)
            ti = tasks.setdefault(task, len(tasks))
            cols, obs, act = _frame_columns(dataset, ei, index, ti)
            table = pa.table(cols)
            if writer is not None and data_path is not None and data_path.stat().st_size >= DATA_FILE_SIZE_MB * 1e6:
                writer.close()
                writer = None
                data_chunk, data_file = ((data_chunk + 1, 0) if data_file == CHUNKS_SIZE - 1
                                         else (data_chunk, data_file + 1))
            if writer is None:
                data_path = out / DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
                data_path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(data_path, table.schema)
            writer.write_table(table)
            row: Dict[str, Any] = {"episode_index": ei, "tasks": [task], "length": n,
                                   "data/chunk_index": data_chunk, "data/file_index": data_file,
                                   "dataset_from_index": index, "dataset_to_index": index + n}
            for term in c.images:
                frames = (ep.images or {})[term.name]
                row.update(videos.add_episode(frames, term))   # type: ignore[union-attr]
                for a in range(0, n, BLOCK):
                    image_stats[term.name].add(np.asarray(frames[a:a + BLOCK]))
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            for feat, st in _episode_stats(obs, act, ep.labelled, n, ei, index, ti, fps).items():
                for k, v in st.items():
                    row[f"stats/{feat}/{k}"] = [float(x) for x in v]
            ep_rows.append(row)
            all_obs.append(obs)
            all_act.append(act[ep.labelled])
            index += n
    finally:
        if writer is not None:
            writer.close()
        if videos is not None:
            videos.close()
    n_eps = len(dataset.episodes)
    features = _features(dataset)
    for term in c.images:
        if videos is not None and term.name in videos.first_path:
            features[image_key(term.name)]["info"] = videos.info(term)
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type or c.robot,
        "total_episodes": n_eps, "total_frames": index, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILE_SIZE_MB, "fps": fps_out, "splits": {"train": f"0:{n_eps}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH if c.images else None, "features": features,
        "bc_policy": {"contract": c.to_dict(), "dataset_hash": dataset.content_hash(),
                      "episodes_meta": [_jsonable(e.meta) for e in dataset.episodes],
                      "exact_arrays": EXACT_PATH},
    }
    if c.images:
        info["bc_policy"]["hash_without_images"] = hash_without_images(dataset)
    agg: Dict[str, Any] = {}
    if n_eps:
        agg = {"observation.state": _stats(np.concatenate(all_obs)), "action": _stats(np.concatenate(all_act))}
        agg.update({image_key(k): s.result() for k, s in image_stats.items()})
    ep_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    if ep_rows:
        pq.write_table(pa.Table.from_pylist(ep_rows), ep_path)
    pq.write_table(_tasks_table(tasks), out / TASKS_PATH)
    _write_exact(dataset, out / EXACT_PATH)
    _write_json(out / "meta" / "info.json", info)
    _write_json(out / "meta" / "stats.json", agg)
    return out


# ----------------------------------------------------------------------------- v2.1
def _export_v21(dataset: Dataset, out: Path, robot_type: Optional[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
        cols, obs, act = _frame_columns(dataset, ei, index, ti)
        path = out / V2_DATA_PATH.format(episode_chunk=ei // CHUNKS_SIZE, episode_index=ei)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        episodes_lines.append({"episode_index": ei, "tasks": [task], "length": n})
        stats_lines.append({"episode_index": ei,
                            "stats": _episode_stats(obs, act, ep.labelled, n, ei, index, ti, fps)})
        all_obs.append(obs)
        all_act.append(act[ep.labelled])
        index += n
    n_eps = len(dataset.episodes)
    info = {
        "codebase_version": "v2.1", "robot_type": robot_type or c.robot,
        "total_episodes": n_eps, "total_frames": index, "total_tasks": len(tasks),
        "total_videos": 0, "total_chunks": (n_eps + CHUNKS_SIZE - 1) // CHUNKS_SIZE,
        "chunks_size": CHUNKS_SIZE, "fps": fps_out, "splits": {"train": f"0:{n_eps}"},
        "data_path": V2_DATA_PATH, "video_path": None, "features": _features(dataset),
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


# ----------------------------------------------------------------------------- shared
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
    """Columns of one exported episode as numpy arrays (for checks and tools), either layout."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = Path(out_dir)
    info = json.loads((out / "meta" / "info.json").read_text())
    if str(info.get("codebase_version")).startswith("v3"):
        eps = pq.read_table(out / EPISODES_PATH.format(chunk_index=0, file_index=0),
                            columns=["episode_index", "data/chunk_index", "data/file_index"]).to_pylist()
        r = next(e for e in eps if e["episode_index"] == episode_index)
        t = pq.read_table(out / DATA_PATH.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]))
        t = t.filter(pc.equal(t.column("episode_index"), episode_index))
    else:
        t = pq.read_table(out / V2_DATA_PATH.format(episode_chunk=episode_index // CHUNKS_SIZE,
                                                    episode_index=episode_index))
    res = {}
    for name in t.column_names:
        col = t.column(name).combine_chunks()
        if hasattr(col, "flatten") and str(col.type).startswith("fixed_size_list"):
            res[name] = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
        else:
            res[name] = col.to_numpy(zero_copy_only=False)
    return res
