"""LeRobot v3.0 export of a camera dataset: one MP4 per camera (videos/observation.images.<name>/
chunk-000/file-000.mp4, every episode one after the other), the video feature in info.json,
per-episode [from_timestamp, to_timestamp) in meta/episodes; decoded independently with PyAV:
frame count, timestamps = index / fps, small pixel error, each frame the one of its own index;
`import-lerobot` reads the videos back (same counts, state exact, frames close). Frames are real
renders of the planar3 overhead camera (the shipped camera contract, in-process expert)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from bc_policy_node.core.contract import Contract
from bc_policy_node.core.data import lerobot_export as lx
from bc_policy_node.core.data.episodes import Dataset, Episode
from bc_policy_node.core.data.lerobot_export import LeRobotExportError, VideoOptions, export_lerobot
from bc_policy_node.core.data.lerobot_import import LeRobotImportError, import_lerobot
from bc_policy_node.core.eval.rollout import expert_rollouts
from bc_policy_node.core.sim.env import CONTRACTS_DIR

av = pytest.importorskip("av")

CONTRACT = CONTRACTS_DIR / "camera" / "planar3_curved_reach.yaml"
KEY = "observation.images.overhead"
VIDEO = f"videos/{KEY}/chunk-000/file-000.mp4"
MAE_MAX = 4.0        # measured ~2.6 (AV1 crf 30, yuv420p) on these frames
P99_MAX = 40.0       # measured ~18: edges of the arm and the goal marker (chroma subsampling)


@pytest.fixture(scope="module")
def camera_dataset():
    c = Contract.load(CONTRACT)
    rs = expert_rollouts("planar3", "curved_reach", [0, 1, 2], contract=c)
    eps = []
    for i, r in enumerate(rs):
        lab = np.ones(r.steps, bool)
        lab[5] = i != 1                        # a frame that is not a sample (e.g. image too old)
        eps.append(Episode(r.obs, r.actions, np.arange(r.steps) * c.dt + 1e-4,
                           {"episode_id": i, "seed": r.seed, "task": "curved_reach"}, lab, images=r.images))
    return Dataset(c, eps)


def decode_all(path):
    with av.open(str(path)) as f:
        s = f.streams.video[0]
        out = [(float(fr.pts * s.time_base), fr.to_ndarray(format="rgb24")) for fr in f.decode(s)]
        return s, [t for t, _ in out], np.stack([img for _, img in out])


def errors(a, b):
    e = np.abs(a.astype(int) - b.astype(int))
    return float(e.mean()), float(np.percentile(e, 99))


def test_export_writes_one_mp4_per_camera_in_lerobot_v3_layout(tmp_path, camera_dataset):
    ds = camera_dataset
    out = export_lerobot(ds, tmp_path / "lr")
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50 and info["total_frames"] == ds.num_frames
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    f = info["features"][KEY]
    assert f["dtype"] == "video" and f["shape"] == [64, 96, 3] and f["names"] == ["height", "width", "channels"]
    vi = f["info"]
    assert (vi["video.height"], vi["video.width"], vi["video.fps"], vi["video.channels"]) == (64, 96, 50, 3)
    assert vi["video.codec"] == "av1" and vi["video.pix_fmt"] == "yuv420p" and vi["has_audio"] is False
    assert vi["video.g"] == 2 and vi["video.crf"] == 30 and vi["is_depth_map"] is False
    assert sorted(p.relative_to(out).as_posix() for p in (out / "videos").rglob("*")
                  if p.is_file()) == [VIDEO]
    assert [p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet")] == \
        ["data/chunk-000/file-000.parquet"]

    # episodes: contiguous [from, to) in the one file; data index ranges; tasks
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    lengths = [len(e) for e in ds.episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i, row in enumerate(eps):
        assert row["episode_index"] == i and row["length"] == lengths[i] and row["tasks"] == ["curved_reach"]
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (starts[i], starts[i + 1])
        assert (row[f"videos/{KEY}/chunk_index"], row[f"videos/{KEY}/file_index"]) == (0, 0)
        assert row[f"videos/{KEY}/from_timestamp"] == pytest.approx(starts[i] / 50)
        assert row[f"videos/{KEY}/to_timestamp"] == pytest.approx(starts[i + 1] / 50)
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["curved_reach"] and b"pandas" in tasks.schema.metadata
    data = pq.read_table(out / "data/chunk-000/file-000.parquet").to_pydict()
    assert KEY not in data                                       # frames are in the video only
    fi = np.asarray(data["frame_index"])
    np.testing.assert_allclose(data["timestamp"], fi / 50, atol=1e-6)
    stats = json.loads((out / "meta" / "stats.json").read_text())[KEY]
    assert np.asarray(stats["mean"]).shape == (3, 1, 1) and stats["count"] == [ds.num_frames]
    assert 0 <= np.min(stats["min"]) <= np.max(stats["max"]) <= 1

    # the MP4, decoded on its own: count, timestamps = index / fps, pixels, each frame its own index
    s, times, frames = decode_all(out / VIDEO)
    orig = np.concatenate([e.images["overhead"] for e in ds.episodes])
    assert len(frames) == len(orig) == ds.num_frames and (s.width, s.height) == (96, 64)
    np.testing.assert_allclose(times, np.arange(len(frames)) / 50, atol=1e-6)
    mae, p99 = errors(frames, orig)
    print(f"\nAV1 crf 30 yuv420p: {(out / VIDEO).stat().st_size / len(frames):.0f} B/frame, "
          f"pixel error mean {mae:.2f}, p99 {p99:.0f}")
    assert mae < MAE_MAX and p99 < P99_MAX
    # no shift by one: the whole sequence is closest to the originals unshifted (one frame of
    # motion is about the size of the coding error, so frames one by one would not tell)
    shifted = {d: errors(frames[max(d, 0):len(frames) + min(d, 0)], orig[max(-d, 0):len(orig) + min(-d, 0)])[0]
               for d in (-1, 0, 1)}
    assert min(shifted, key=shifted.get) == 0, shifted
    for a in starts[1:-1]:                  # an episode's first frame is its own, not the previous one's last
        first, prev_last = orig[a].astype(int), orig[a - 1].astype(int)
        assert np.abs(frames[a] - first).mean() < np.abs(frames[a] - prev_last).mean() / 2


@pytest.mark.parametrize("vcodec", ["libsvtav1", "h264"])
def test_export_import_round_trip_with_videos(tmp_path, camera_dataset, vcodec):
    ds = camera_dataset
    export_lerobot(ds, tmp_path / "lr", video=VideoOptions(vcodec=vcodec, crf=23 if vcodec == "h264" else 30))
    back, rep = import_lerobot(tmp_path / "lr", scratch_dir=tmp_path)
    assert [len(e) for e in back.episodes] == [len(e) for e in ds.episodes]
    assert rep["values"] == "exact" and rep["hash_matches_export"] is True      # without the lossy frames
    im = rep["images"]["overhead"]
    assert im["frames"] == ds.num_frames and im["files"] == [VIDEO] and im["frames_outside_episodes"] == 0
    assert im["codec"] == ("av1" if vcodec == "libsvtav1" else "h264") and KEY not in rep["skipped_features"]
    for a, b in zip(ds.episodes, back.episodes):
        np.testing.assert_array_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.act, b.act)
        np.testing.assert_array_equal(a.labelled, b.labelled)
        assert isinstance(b.images["overhead"], np.memmap) and b.images["overhead"].dtype == np.uint8
        mae, p99 = errors(b.images["overhead"], a.images["overhead"])
        assert mae < MAE_MAX and p99 < P99_MAX, (vcodec, mae, p99)
    assert not list(tmp_path.glob(".frames_scratch_*"))
    back.save(tmp_path / "ds")
    again = Dataset.load(tmp_path / "ds")
    np.testing.assert_array_equal(again.episodes[2].images["overhead"], back.episodes[2].images["overhead"])


def test_a_new_video_file_past_the_size_limit(tmp_path, camera_dataset, monkeypatch):
    monkeypatch.setattr(lx, "VIDEO_FILE_SIZE_MB", 1e-6)          # every episode starts a new file
    out = export_lerobot(camera_dataset, tmp_path / "lr")
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r[f"videos/{KEY}/file_index"] for r in eps] == [0, 1, 2]
    assert all(r[f"videos/{KEY}/from_timestamp"] == 0.0 for r in eps)
    for r, ep in zip(eps, camera_dataset.episodes):
        _, times, frames = decode_all(out / f"videos/{KEY}/chunk-000/file-{r[f'videos/{KEY}/file_index']:03d}.mp4")
        assert len(frames) == len(ep) and errors(frames, ep.images["overhead"])[0] < MAE_MAX
    back, rep = import_lerobot(out)
    assert len(rep["images"]["overhead"]["files"]) == 3 and back.num_frames == camera_dataset.num_frames


def test_bad_inputs_name_the_problem(tmp_path, camera_dataset):
    with pytest.raises(LeRobotExportError, match="videos are written in the v3.0 layout only"):
        export_lerobot(camera_dataset, tmp_path / "v2", version="v2.1")
    out = export_lerobot(camera_dataset, tmp_path / "lr")
    # a contract whose camera is another size
    d = camera_dataset.contract.to_dict()
    d["observation"][-1]["crop"] = [0, 0, 64, 64]
    with pytest.raises(LeRobotImportError, match=r"shape \[64, 96, 3\] != the contract's \[64, 64, 3\]"):
        import_lerobot(out, Contract.from_dict(d))
    # a contract with a camera the dataset has no video of
    d = camera_dataset.contract.to_dict()
    d["observation"][-1]["name"] = "wrist"
    with pytest.raises(LeRobotImportError, match="camera 'wrist': no feature observation.images.wrist"):
        import_lerobot(out, Contract.from_dict(d))
    # episode metadata claiming more frames than the video has
    p = out / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(p)
    col = f"videos/{KEY}/from_timestamp"
    shifted = [x + (0.5 if i == 2 else 0.0) for i, x in enumerate(t.column(col).to_pylist())]
    import pyarrow as pa
    pq.write_table(t.set_column(t.schema.get_field_index(col), col, pa.array(shifted)), p)
    with pytest.raises(LeRobotImportError, match="episode 2, camera 'overhead'.*has no frame at 25 of its"):
        import_lerobot(out)
    (out / VIDEO).unlink()
    with pytest.raises(LeRobotImportError, match="video file missing: .*file-000.mp4"):
        import_lerobot(out)
