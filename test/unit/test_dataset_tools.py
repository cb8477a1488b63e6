"""LeRobot export (read back with pyarrow), info tables, curation and plots."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from bc_policy_node.core.data.bagio import EpisodeBagWriter
from bc_policy_node.core.data.dataset_builder import build_dataset
from bc_policy_node.core.data.dataset_tools import (bag_info, dataset_info, delete_bags,
                                               delete_episodes, format_bag_info,
                                               format_dataset_info, merge_datasets,
                                               plot_episode, select_episodes)
from bc_policy_node.core.data.episodes import Dataset, DatasetError, Episode
from bc_policy_node.core.data.lerobot_export import export_lerobot, read_lerobot_episode

from test_dataset_builder import CMD, TOPICS, contract, lockstep_bag  # noqa: E402


def small_dataset(n_eps=3):
    c = contract()
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n_eps):
        n = 10 + i
        lab = np.ones(n, bool)
        lab[3] = i != 1
        eps.append(Episode(rng.normal(size=(n, c.obs_dim)), rng.normal(size=(n, c.act_dim)),
                           np.arange(n) * c.dt + 1e-4, {"episode_id": i, "task": "curved_reach" if i < 2 else "other",
                                                        "source": "expert", "success": i != 2}, lab))
    return Dataset(c, eps)


def test_lerobot_layout_and_values(tmp_path):
    ds = small_dataset()
    out = export_lerobot(ds, tmp_path / "lr", version="v2.1")     # v3.0 (the default): test_lerobot_video.py
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 50
    assert info["total_episodes"] == 3 and info["total_frames"] == 33 and info["total_tasks"] == 2
    assert info["features"]["observation.state"]["shape"] == [5]
    assert info["features"]["observation.state"]["names"] == [
        "joint_pos.j1", "joint_pos.j2", "joint_pos.j3", "goal.0", "goal.1"]
    assert info["features"]["action"]["names"] == ["j1", "j2", "j3"]
    assert [json.loads(l) for l in (out / "meta" / "tasks.jsonl").read_text().splitlines()] == [
        {"task_index": 0, "task": "curved_reach"}, {"task_index": 1, "task": "other"}]
    eps = [json.loads(l) for l in (out / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert [e["length"] for e in eps] == [10, 11, 12]
    t = pq.read_table(out / "data" / "chunk-000" / "episode_000001.parquet")
    assert {"observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
            "task_index"} <= set(t.column_names)
    cols = read_lerobot_episode(out, 1)
    assert np.array_equal(cols["observation.state"], ds.episodes[1].obs.astype(np.float32))
    assert np.array_equal(cols["action"], ds.episodes[1].act.astype(np.float32))
    assert np.array_equal(cols["index"], np.arange(10, 21)) and set(cols["episode_index"]) == {1}
    assert np.allclose(cols["timestamp"], np.arange(11) / 50.0)
    assert not cols["labelled"][3] and cols["labelled"].sum() == 10
    stats = [json.loads(l) for l in (out / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    lab = ds.episodes[1].labelled
    assert np.allclose(stats[1]["stats"]["action"]["mean"],
                       ds.episodes[1].act[lab].astype(np.float32).mean(0), atol=1e-6)
    assert stats[1]["stats"]["action"]["count"] == [10]
    agg = json.loads((out / "meta" / "stats.json").read_text())
    all_obs = np.concatenate([e.obs for e in ds.episodes]).astype(np.float32)
    assert np.allclose(agg["observation.state"]["max"], all_obs.max(0))
    with pytest.raises(FileExistsError):
        export_lerobot(ds, out)


def test_bag_info_table_rates_gaps_success(tmp_path):
    lockstep_bag(tmp_path / "ep_000", n=51, meta={"source": "expert"})
    lockstep_bag(tmp_path / "ep_001", n=51, skip_cmds=range(10, 20), meta={"source": "dagger"})
    w = EpisodeBagWriter(tmp_path / "ep_002", TOPICS, {"source": "teleop"})
    w.write(CMD, {"data": [0.0, 0.0, 0.0]}, 1)
    w._file.close()   # crashed, never recovered
    info = bag_info([tmp_path], contract())
    e0, e1, e2 = info["episodes"]
    assert e0["topics"][CMD]["count"] == 51 and e0["topics"][CMD]["rate_hz"] == pytest.approx(50.0)
    assert e0["topics"]["/joint_states"]["nominal_hz"] == 50.0
    assert e0["duration_s"] == pytest.approx(1.0 + 2.6e-3, abs=1e-6)
    assert e1["topics"][CMD]["count"] == 41 and e1["topics"][CMD]["gaps"] == 1
    assert e1["topics"][CMD]["max_gap_s"] == pytest.approx(0.22)
    assert e2["status"] == "needs recovery"
    assert info["success_rate"] == 1.0 and info["needs_recovery"] == 1 and info["with_gaps"] == 1
    assert info["sources"] == {"expert": 1, "dagger": 1, "teleop": 1}
    text = format_bag_info(info)
    assert "ep_001" in text and "needs recovery" in text and "50.0/50" in text
    assert len(text.splitlines()) <= 25


def test_curation_and_plot(tmp_path):
    ds = small_dataset()
    assert [e.meta["episode_id"] for e in delete_episodes(ds, [1]).episodes] == [0, 2]
    assert [e.meta["episode_id"] for e in select_episodes(ds, lambda e: e.meta["success"]).episodes] == [0, 1]
    ds.save(tmp_path / "a")
    delete_episodes(ds, [0]).save(tmp_path / "b")
    m = merge_datasets([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "m")
    assert len(Dataset.load(tmp_path / "m")) == 5 and m.num_frames == 33 + 23
    other = Dataset(contract(control_rate_hz=25.0), [])
    with pytest.raises(DatasetError, match="different contracts"):
        merge_datasets([ds, other])
    info = dataset_info(ds)
    assert info["episodes"] == 3 and info["frames"] == 33
    assert info["labelled_fraction"] == pytest.approx(32 / 33)
    assert info["success_rate"] == pytest.approx(2 / 3)
    assert "episodes 3" in format_dataset_info(info)
    png = plot_episode(ds, 1, tmp_path / "plots" / "ep1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_bags_to_dataset_to_lerobot_and_delete_bags(tmp_path):
    for i in range(3):
        lockstep_bag(tmp_path / "bags" / f"ep_{i:03d}", n=15, meta={"episode_id": i})
    ds, _ = build_dataset([tmp_path / "bags"], contract())
    export_lerobot(ds, tmp_path / "lr")
    cols = read_lerobot_episode(tmp_path / "lr", 2)
    assert np.array_equal(cols["action"], ds.episodes[2].act.astype(np.float32))
    assert np.allclose(cols["t_measured"], np.arange(15) / 50.0, atol=1e-9)
    removed = delete_bags([tmp_path / "bags" / "ep_001"], trash_dir=tmp_path / "trash")
    assert [p.name for p in removed] == ["ep_001"] and (tmp_path / "trash" / "ep_001").is_dir()
    ds2, rep = build_dataset([tmp_path / "bags"], contract())
    assert [e.meta["episode_id"] for e in ds2.episodes] == [0, 2]
