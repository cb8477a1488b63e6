"""`import-lerobot`: our export round-trips exactly; a LeRobot v3 dataset written independently
(pyarrow, LeRobot's v3 layout) imports with --contract; bad inputs fail with clear errors."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bc_policy_node.cli import main as cli
from bc_policy_node.core.data.episodes import Dataset
from bc_policy_node.core.data.lerobot_export import EXACT_PATH, export_lerobot
from bc_policy_node.core.data.lerobot_import import LeRobotImportError, import_lerobot

from test_dataset_builder import contract  # noqa: E402
from test_dataset_tools import small_dataset  # noqa: E402

FPS = 50


def assert_same(a: Dataset, b: Dataset):
    assert a.contract.fingerprint() == b.contract.fingerprint()
    assert [len(e) for e in a.episodes] == [len(e) for e in b.episodes]
    for x, y in zip(a.episodes, b.episodes):
        for name in ("obs", "act", "t", "labelled"):
            assert np.array_equal(getattr(x, name), getattr(y, name), equal_nan=True), name
            assert getattr(y, name).dtype == getattr(x, name).dtype
        assert (x.chunk_labels is None) == (y.chunk_labels is None)
        if x.chunk_labels is not None:
            assert np.array_equal(x.chunk_labels, y.chunk_labels)
        assert x.meta == y.meta
    assert a.content_hash() == b.content_hash()


# ------------------------------------------------------------------------ (a) round trip
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_export_import_round_trip_is_exact(tmp_path, version):
    ds = small_dataset()                                   # float64 values, an unlabelled frame, jittered t
    ds.episodes[1].act[3] = np.nan                         # unlabelled DAgger frame: no expert label
    ds.episodes[2].chunk_labels = np.random.default_rng(1).normal(size=(len(ds.episodes[2]), 4, 3))
    export_lerobot(ds, tmp_path / "lr", version=version)
    back, rep = import_lerobot(tmp_path / "lr")            # contract: the one stored by the export
    assert_same(ds, back)
    assert rep["values"] == "exact" and rep["hash_matches_export"] is True
    assert rep["contract"]["source"] == "stored in the export" and rep["codebase_version"] == version
    assert rep["episodes"] == 3 and rep["frames"] == 33 and rep["unlabelled_frames"] == 1
    assert rep["timestamp_violations"] == [] and rep["skipped_features"] == {}
    back.save(tmp_path / "ds")                             # what the trainer reads
    assert_same(ds, Dataset.load(tmp_path / "ds"))

    # without the exact-values file: the float32 parquet columns, said so in the report
    (tmp_path / "lr" / EXACT_PATH).unlink()
    f32, rep = import_lerobot(tmp_path / "lr")
    assert rep["values"] == "parquet" and rep["hash_matches_export"] is False
    assert any("missing" in n for n in rep["notes"])
    for x, y in zip(ds.episodes, f32.episodes):
        assert np.array_equal(y.obs, x.obs.astype(np.float32).astype(np.float64))
        assert np.array_equal(y.t, x.t) and np.array_equal(y.labelled, x.labelled) and y.meta == x.meta
    assert f32.episodes[2].chunk_labels is None


def test_exact_values_file_is_ignored_when_the_parquet_was_edited(tmp_path):
    ds = small_dataset()
    out = export_lerobot(ds, tmp_path / "lr", version="v2.1")
    p = out / "data" / "chunk-000" / "episode_000000.parquet"
    t = pq.read_table(p)
    obs = np.asarray(t.column("observation.state").combine_chunks().flatten()).reshape(-1, 5).copy()
    obs[2, 0] += 1.0
    t = t.set_column(0, "observation.state", pa.FixedSizeListArray.from_arrays(pa.array(obs.reshape(-1)), 5))
    pq.write_table(t, p)
    back, rep = import_lerobot(out)
    assert rep["values"] == "parquet" and any("does not match the parquet data" in n for n in rep["notes"])
    assert back.episodes[0].obs[2, 0] == np.float32(ds.episodes[0].obs[2, 0]) + np.float32(1.0)


# ------------------------------------------------- (b) a LeRobot v3 dataset, written independently
def v3_episodes(lengths=(4, 6, 5), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32))
            for n in lengths]


def write_v3(root, episodes, fps=FPS, files=((0, 1), (2,)), version="v3.0", ts_jitter=None,
             state_shape=5, action_shape=3):
    """LeRobot v3.0 as lerobot writes it: several episodes per data file (rows in any order),
    meta/episodes/chunk-000/file-000.parquet with global index ranges, meta/tasks.parquet."""
    tasks = ["pick the cube", "place the cube"]
    ep_rows, index = [], 0
    starts = np.cumsum([0] + [len(o) for o, _ in episodes])
    for fi, eps in enumerate(files):
        cols = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                "episode_index", "index", "task_index", "next.done")}
        for e in eps:
            obs, act = episodes[e]
            n = len(obs)
            frame = np.arange(n)
            ts = (frame / fps).astype(np.float32)
            if ts_jitter and e in ts_jitter:
                ts[ts_jitter[e][0]] += ts_jitter[e][1]
            cols["observation.state"] += obs.tolist()
            cols["action"] += act.tolist()
            cols["timestamp"] += ts.tolist()
            cols["frame_index"] += frame.tolist()
            cols["episode_index"] += [e] * n
            cols["index"] += list(range(starts[e], starts[e] + n))
            cols["task_index"] += [e % 2] * n
            cols["next.done"] += [False] * (n - 1) + [True]
            ep_rows.append({"episode_index": e, "tasks": [tasks[e % 2]], "length": n,
                            "data/chunk_index": 0, "data/file_index": fi,
                            "dataset_from_index": int(starts[e]), "dataset_to_index": int(starts[e] + n),
                            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                            "stats/action/mean": act.mean(0).tolist()})
            index += n
        perm = np.random.default_rng(fi).permutation(len(cols["index"]))    # rows in any order
        tbl = pa.table({
            "observation.state": pa.array([cols["observation.state"][i] for i in perm], pa.list_(pa.float32())),
            "action": pa.array([cols["action"][i] for i in perm], pa.list_(pa.float32())),
            "timestamp": pa.array([cols["timestamp"][i] for i in perm], pa.float32()),
            **{k: pa.array([cols[k][i] for i in perm], pa.int64())
               for k in ("frame_index", "episode_index", "index", "task_index")},
            "next.done": pa.array([cols["next.done"][i] for i in perm], pa.bool_())})
        path = root / f"data/chunk-000/file-{fi:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl, path)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    ep_rows.sort(key=lambda r: r["episode_index"])
    pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "task": tasks}),
                   root / "meta/tasks.parquet")
    scalar = lambda dt: {"dtype": dt, "shape": [1], "names": None}  # noqa: E731
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": len(episodes),
            "total_frames": int(starts[-1]), "total_tasks": 2, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {
                "observation.state": {"dtype": "float32", "shape": [state_shape],
                                      "names": [f"m{i}.pos" for i in range(state_shape)]},
                "action": {"dtype": "float32", "shape": [action_shape],
                           "names": [f"m{i}.pos" for i in range(action_shape)]},
                "observation.images.top": {"dtype": "video", "shape": [480, 640, 3],
                                           "names": ["height", "width", "channels"]},
                "timestamp": scalar("float32"), "frame_index": scalar("int64"),
                "episode_index": scalar("int64"), "index": scalar("int64"), "task_index": scalar("int64"),
                "next.done": scalar("bool")}}
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/stats.json").write_text("{}")
    return root


@pytest.fixture
def contract_file(tmp_path):
    p = tmp_path / "contract.yaml"
    p.write_text(yaml.safe_dump(contract().to_dict()))     # obs dim 5, action dim 3, 50 Hz
    return p


def test_independent_v3_dataset_imports_with_contract(tmp_path, contract_file):
    eps = v3_episodes()
    root = write_v3(tmp_path / "so100", eps, ts_jitter={1: (2, 0.003)})
    ds, rep = import_lerobot(root, contract_file)
    assert ds.contract.fingerprint() == contract().fingerprint()
    assert [len(e) for e in ds.episodes] == [4, 6, 5]
    for e, (obs, act) in zip(ds.episodes, eps):             # episode boundaries + frame order restored
        assert np.array_equal(e.obs, obs.astype(np.float64)) and np.array_equal(e.act, act.astype(np.float64))
        ts = (np.arange(len(obs)) / FPS).astype(np.float32)
        ts[2] += 0.003 if e.meta["episode_id"] == 1 else 0.0
        assert e.labelled.all() and np.array_equal(e.t, ts.astype(np.float64))   # t: the timestamps as stored
    assert [e.meta["task_description"] for e in ds.episodes] == ["pick the cube", "place the cube", "pick the cube"]
    assert [e.meta["episode_id"] for e in ds.episodes] == [0, 1, 2]
    assert rep["codebase_version"] == "v3.0" and rep["values"] == "parquet" and rep["hash_matches_export"] is None
    assert rep["skipped_features"] == {"observation.images.top": "video", "next.done": "bool"}
    assert [(b["episode"], b["frames"], b["first_frame"]) for b in rep["timestamp_violations"]] == [(1, 1, 2)]
    assert any("names" in n and "column order" in n for n in rep["notes"])
    ds.check_trainable()


# ------------------------------------------------------------------------ (c) bad inputs
def test_bad_inputs_name_the_problem(tmp_path, contract_file):
    with pytest.raises(LeRobotImportError, match="directory not found"):
        import_lerobot(tmp_path / "nothing", contract_file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeRobotImportError, match=r"meta/info.json is missing"):
        import_lerobot(tmp_path / "empty", contract_file)

    old = write_v3(tmp_path / "old", v3_episodes(), version="v1.6")
    with pytest.raises(LeRobotImportError, match=r"codebase_version 'v1.6' is not supported"):
        import_lerobot(old, contract_file)

    wrong = write_v3(tmp_path / "wrong", v3_episodes(), fps=30, action_shape=4)
    with pytest.raises(LeRobotImportError) as e:
        import_lerobot(wrong, contract_file)
    msg = str(e.value)
    assert "action dim 4 != contract action dim 3" in msg and "fps 30 != contract control_rate_hz 50" in msg
    assert "observation.state" not in msg                  # only what is wrong is listed

    good = write_v3(tmp_path / "good", v3_episodes())
    with pytest.raises(LeRobotImportError, match="no contract stored.*pass --contract"):
        import_lerobot(good)

    eps = v3_episodes()
    eps[1][0][3, 2] = np.nan
    nan = write_v3(tmp_path / "nan", eps)
    with pytest.raises(LeRobotImportError, match=r"episode 1 .*NaN/inf in observation.state at frame\(s\) \[3\]"):
        import_lerobot(nan, contract_file)

    (good / "data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(LeRobotImportError, match=r"data file missing: .*file-001.parquet"):
        import_lerobot(good, contract_file)

    shutil.rmtree(good / "meta/episodes")
    with pytest.raises(LeRobotImportError, match=r"no episode metadata: .*meta/episodes"):
        import_lerobot(good, contract_file)

    info = json.loads((good / "meta/info.json").read_text())
    del info["features"]["action"]
    (good / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotImportError, match=r"features lack \['action'\]"):
        import_lerobot(good, contract_file)


# ------------------------------------------------------------------------ CLI
def test_import_lerobot_through_the_cli(tmp_path, contract_file, capsys):
    root = write_v3(tmp_path / "so100", v3_episodes())
    out = tmp_path / "ds"
    assert cli(["dataset", "import-lerobot", str(root), "--out", str(out), "--contract", str(contract_file)]) == 0
    text = capsys.readouterr().out
    assert "3 episodes, 15 frames at 50 fps" in text and f"--contract {contract_file}" in text
    assert "observation.images.top (video)" in text and "cameras the contract does not have" in text
    assert len(text.splitlines()) <= 15
    ds = Dataset.load(out)
    assert [len(e) for e in ds.episodes] == [4, 6, 5]
    assert json.loads((out / "import_report.json").read_text())["episodes"] == 3

    # export -> import through the CLI: no --contract needed, the dataset comes back identical
    assert cli(["dataset", "export-lerobot", str(out), "--out", str(tmp_path / "lr")]) == 0
    assert cli(["dataset", "import-lerobot", str(tmp_path / "lr"), "--out", str(tmp_path / "ds2")]) == 0
    assert "content hash matches the export" in capsys.readouterr().out
    assert_same(ds, Dataset.load(tmp_path / "ds2"))

    # errors: one line on stderr, exit 1
    assert cli(["dataset", "import-lerobot", str(root), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "pass --contract" in err and len(err.strip().splitlines()) == 1
    assert cli(["dataset", "import-lerobot", str(root), "--contract", str(contract_file)]) == 1
    assert "needs --out" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
