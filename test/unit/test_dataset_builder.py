"""Bags -> dataset: exact values at the sample times, alignment rules, gaps, flags, FrameTag."""
import json

import numpy as np
import pytest

from bc_policy_node.core.data import bagread
from bc_policy_node.core.data.bagio import EpisodeBagWriter
from bc_policy_node.core.contract import Contract
from bc_policy_node.core.data.dataset_builder import build_dataset, episode_from_bag
from bc_policy_node.core.data.episodes import Dataset
from bc_policy_node.core.types import JointStateData, TaskStateData

CMD = "/forward_position_controller/commands"
TOPICS = {"/joint_states": "sensor_msgs/msg/JointState", "/task_state": "bc_msgs/msg/TaskState",
          CMD: "std_msgs/msg/Float64MultiArray"}
RATE = 50.0
NAMES = ["j3", "j1", "j2", "gripper"]   # bag order differs from the contract's joint order


def contract(**over):
    d = {"contract_version": 1, "name": "t", "robot": "planar3", "task": "curved_reach",
         "control_rate_hz": RATE, "chunk_length": 4, "stale_after_s": 0.1,
         "observation": [{"name": "joint_pos", "topic": "/joint_states",
                          "type": "sensor_msgs/msg/JointState", "field": "position",
                          "joints": ["j1", "j2", "j3"]},
                         {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState",
                          "field": "goal", "size": 2}],
         "action": {"kind": "joint_position", "topic": CMD, "type": "std_msgs/msg/Float64MultiArray",
                    "joints": ["j1", "j2", "j3"], "lower": -3.0, "upper": 3.0, "max_step": 0.1}}
    d.update(over)
    return Contract.from_dict(d)


def q(i):      # joint positions of JointState message i, in NAMES order (j3, j1, j2, gripper)
    return np.array([3000.0 + i, 1000.0 + i, 2000.0 + i, -1.0]) * 1e-4


def goal(i):
    return np.array([0.5 + 1e-3 * i, -0.25 * i])


def cmd(k):
    return np.array([np.sin(k), np.cos(k), k * 1e-3])


def js(i, t):
    return JointStateData(stamp=t, name=NAMES, position=q(i), velocity=np.zeros(4))


def ts(i, t):
    return TaskStateData(stamp=t, task="curved_reach", episode_id=1, seed=2, variant="",
                         goal=goal(i), obstacle=np.zeros(0), waypoints=np.zeros(0), phase=0,
                         num_phases=1, mode=-1, step=i, status="running", success=False,
                         done=False, reason="", ee_position=np.zeros(2))


T0 = 1000.0   # header stamps and receive times on one clock (small: exact float seconds)


def lockstep_bag(path, n=60, skip_cmds=(), skip_task=(), complete=True, stamp_offset=0.0,
                 meta=None):
    """Lock-step recording: obs k at t_k (received +0.4 ms), command k received at t_k + 3 ms."""
    w = EpisodeBagWriter(path, TOPICS, {"task": "curved_reach", "episode_id": 1, **(meta or {})})
    for k in range(n):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        w.write("/joint_states", js(k, t + stamp_offset), recv + 400_000)
        if k not in skip_task:
            w.write("/task_state", ts(k, t + stamp_offset), recv + 450_000)
        if k not in skip_cmds:
            w.write(CMD, {"data": cmd(k)}, recv + 3_000_000)
    if complete:
        w.close(success=True, outcome="success")
    return path


def expected_obs(i_js, i_ts):
    return np.concatenate([q(i_js)[[1, 2, 0]], goal(i_ts)])


def test_lockstep_reproduces_published_values_exactly(tmp_path):
    lockstep_bag(tmp_path / "ep_000", n=60)
    ds, rep = build_dataset([tmp_path], contract())
    assert rep["included"] == 1 and rep["excluded"] == 0
    (ep,) = ds.episodes
    assert len(ep) == 60 and ep.labelled.all()
    for k in range(60):
        assert np.array_equal(ep.obs[k], expected_obs(k, k)), k
        assert np.array_equal(ep.act[k], cmd(k)), k
    assert np.allclose(ep.t, np.arange(60) / RATE, atol=1e-9)
    assert ep.meta["alignment"] == "command" and ep.meta["time_base"] == "header"
    assert ep.meta["episode_id"] == 1 and ep.meta["success"] is True and ep.meta["flags"] == []


def test_fast_sensor_grid_alignment_zero_order_hold(tmp_path):
    """1 kHz joint states, 100 Hz task state, teleop-like 100 Hz commands -> grid rule."""
    w = EpisodeBagWriter(tmp_path / "ep", TOPICS, {"source": "teleop"})
    for i in range(1000):                       # 1 s of 1 kHz joint states
        t = T0 + i * 1e-3
        w.write("/joint_states", js(i, t), int(round(t * 1e9)) + 200_000)
        if i % 10 == 0:
            w.write("/task_state", ts(i // 10, t), int(round(t * 1e9)) + 300_000)
        if i % 10 == 5:                         # commands at 100 Hz, 5 ms after each task state
            w.write(CMD, {"data": cmd(i // 10)}, int(round(t * 1e9)))
    w.close()
    ep, rep = episode_from_bag(tmp_path / "ep", contract())
    assert rep["alignment"] == "grid" and rep["command_rate_hz"] == pytest.approx(100.0, rel=1e-6)
    # grid starts when both terms exist (t = T0) and ticks every 20 ms
    assert len(ep) == 50 and ep.labelled.all() and rep["windows_multi"] == 50
    for k in range(50):
        assert np.array_equal(ep.obs[k], expected_obs(20 * k, 2 * k)), k
        assert np.array_equal(ep.act[k], cmd(2 * k)), k   # first command after t_k
    # the same bag forced to the command rule: one frame per command, obs held at its time
    ep2, rep2 = episode_from_bag(tmp_path / "ep", contract(), alignment="command")
    assert len(ep2) == 100 and rep2["flags"]           # rate mismatch is flagged
    assert np.array_equal(ep2.obs[7], expected_obs(75, 7)) and np.array_equal(ep2.act[7], cmd(7))


def test_grid_window_without_command_holds_and_is_unlabelled(tmp_path):
    lockstep_bag(tmp_path / "ep", n=30, skip_cmds=(10,))
    ep, rep = episode_from_bag(tmp_path / "ep", contract(), alignment="grid")
    assert rep["windows_empty"] == 1 and len(ep) == 30
    assert not ep.labelled[10] and ep.labelled.sum() == 29
    assert np.array_equal(ep.act[10], cmd(9))          # the robot held the previous target
    assert np.array_equal(ep.act[11], cmd(11)) and np.array_equal(ep.obs[11], expected_obs(11, 11))


def test_gaps_flag_and_exclude_unless_kept(tmp_path):
    lockstep_bag(tmp_path / "a_ok", n=40)
    lockstep_bag(tmp_path / "b_cmd_gap", n=40, skip_cmds=range(10, 20))      # 0.22 s hole
    lockstep_bag(tmp_path / "c_obs_gap", n=40, skip_task=range(5, 12))       # 0.16 s hole
    lockstep_bag(tmp_path / "d_small", n=40, skip_task=(7, 8))               # 0.06 s < 0.1 s
    ds, rep = build_dataset([tmp_path], contract())
    status = {e["path"].rsplit("/", 1)[1]: e for e in rep["episodes"]}
    assert [e.meta["bag"].rsplit("/", 1)[1] for e in ds.episodes] == ["a_ok", "d_small"]
    assert status["b_cmd_gap"]["status"] == "excluded"
    assert any(CMD in r and "0.220" in r for r in status["b_cmd_gap"]["reasons"])
    assert any("/task_state" in r for r in status["c_obs_gap"]["reasons"])
    assert status["d_small"]["max_gap_s"]["/task_state"] == pytest.approx(0.06, abs=1e-6)
    ds2, rep2 = build_dataset([tmp_path], contract(), keep_flagged=True)
    assert len(ds2) == 4
    flagged = [e for e in ds2.episodes if e.meta["flags"]]
    assert len(flagged) == 2
    # held values, never interpolated: during the task-state hole the goal stays at message 4
    c = next(e for e in ds2.episodes if e.meta["bag"].endswith("c_obs_gap"))
    for k in range(5, 12):
        assert np.array_equal(c.obs[k], expected_obs(k, 4))
    ds3, _ = build_dataset([tmp_path], contract(), gap_tolerance_s=0.5)
    assert len(ds3) == 4


def test_incomplete_and_truncated_episodes(tmp_path):
    lockstep_bag(tmp_path / "a", n=20)
    w = EpisodeBagWriter(tmp_path / "b", TOPICS)
    try:
        for k in range(20):
            t = T0 + k / RATE
            w.write("/joint_states", js(k, t), int(round(t * 1e9)) + 1000)
            w.write("/task_state", ts(k, t), int(round(t * 1e9)) + 2000)
            w.write(CMD, {"data": cmd(k)}, int(round(t * 1e9)) + 3_000_000)
        w.flush()
    finally:
        w._file.close()        # simulate a crash: no footer, no metadata.yaml
    ds, rep = build_dataset([tmp_path], contract())
    e = {x["path"].rsplit("/", 1)[1]: x for x in rep["episodes"]}
    assert len(ds) == 1 and "needs recovery" in e["b"]["reasons"][0]
    ds, rep = build_dataset([tmp_path], contract(), recover=True)
    assert len(ds) == 1 and rep["episodes"][1]["reasons"] == ["incomplete episode"]
    ds, rep = build_dataset([tmp_path], contract(), include_incomplete=True)
    assert len(ds) == 2 and ds.episodes[1].meta["complete"] is False
    assert ds.episodes[1].meta["recovered"] is True
    assert np.array_equal(ds.episodes[1].act, np.stack([cmd(k) for k in range(20)]))


def test_clock_mismatch_falls_back_to_receive_times(tmp_path):
    # header stamps in sim time starting near 0, receive times on the wall clock
    lockstep_bag(tmp_path / "ep", n=30, stamp_offset=-T0 + 5.0)
    ep, rep = episode_from_bag(tmp_path / "ep", contract())
    assert rep["time_base"] == "receive" and rep["header_clock_skew_s"] > 900
    assert len(ep) == 30
    assert all(np.array_equal(ep.obs[k], expected_obs(k, k)) for k in range(30))
    assert all(np.array_equal(ep.act[k], cmd(k)) for k in range(30))


RECORDER_META = {"recorder": {"timestamps": {"log_time": "dds_reception", "publish_time": "dds_source"}}}
WALL0 = 1.7e18   # ns; wall clock of the recorder-node bags below


def recorder_lockstep_bag(path, n=40, period_ns=3_000_000, pause_at=None, late_cmds=(),
                          extra_after_done=1):
    """What the recorder node writes in lock-step: sim-time header stamps k*dt, wall-clock
    receive/source times `period_ns` apart (faster than real time), an empty FrameTag channel,
    and `extra_after_done` commands answering the final observation again. Commands in
    `late_cmds` are *received* after the next observation (a queue hiccup) but were sent
    before it (source time)."""
    topics = dict(TOPICS, **{"/dagger/frame_tag": "bc_msgs/msg/FrameTag"})
    w = EpisodeBagWriter(path, topics, {"task": "curved_reach", "episode_id": 7, **RECORDER_META})
    rows = []
    wall = WALL0
    for k in range(n):
        if pause_at is not None and k == pause_at:
            wall += 400_000_000                      # the whole loop stalls 0.4 s (wall clock)
        t = k / RATE
        rows.append((wall + 100_000, "/joint_states", js(k, t), wall))
        rows.append((wall + 120_000, "/task_state", ts(k, t), wall + 10_000))
        recv = wall + (period_ns + 200_000 if k in late_cmds else 900_000)
        rows.append((recv, CMD, {"data": cmd(k)}, wall + 800_000))
        wall += period_ns
    for j in range(extra_after_done):
        rows.append((wall + j * 1000, CMD, {"data": cmd(n + j)}, wall + j * 1000))
    for recv, topic, msg, src in sorted(rows, key=lambda r: r[0]):
        w.write(topic, msg, recv, publish_time_ns=src)
    w.close(success=True)
    return path


def test_recorder_lockstep_bag_frames_in_sim_time(tmp_path):
    recorder_lockstep_bag(tmp_path / "ep", n=40, pause_at=20)
    ds, rep = build_dataset([tmp_path], contract())
    (e,) = rep["episodes"]
    assert e["status"] == "included", e
    assert e["time_base"] == "source" and e["frame_clock"] == "header" and e["alignment"] == "command"
    assert e["command_rate_hz"] == pytest.approx(RATE) and e["wall_command_rate_hz"] > 300
    assert e["duplicate_commands"] == 1 and e["unanswered_observations"] == 0
    assert e["max_gap_s"]["/joint_states"] == pytest.approx(1 / RATE)   # the 0.4 s stall is no gap
    (ep,) = ds.episodes
    assert len(ep) == 40 and np.allclose(ep.t, np.arange(40) / RATE, atol=1e-9)
    for k in range(40):
        assert np.array_equal(ep.obs[k], expected_obs(k, k)) and np.array_equal(ep.act[k], cmd(k)), k


def test_source_times_pair_commands_causally_when_receive_order_is_not(tmp_path):
    recorder_lockstep_bag(tmp_path / "ep", n=30, late_cmds=(5, 17))
    ep, rep = episode_from_bag(tmp_path / "ep", contract())
    assert rep["time_base"] == "source" and len(ep) == 30
    assert all(np.array_equal(ep.act[k], cmd(k)) and np.array_equal(ep.obs[k], expected_obs(k, k))
               for k in range(30))
    # ordered by receive time, those two commands would answer the next observation
    ep_r, _ = episode_from_bag(tmp_path / "ep", contract(), time_base="receive", alignment="command")
    assert np.array_equal(ep_r.obs[5], expected_obs(6, 6)) and np.array_equal(ep_r.act[5], cmd(5))


def test_contract_mismatch_is_reported_not_silent(tmp_path):
    lockstep_bag(tmp_path / "ep", n=10)
    bad = contract(observation=[{"name": "joint_pos", "topic": "/joint_states",
                                 "type": "sensor_msgs/msg/JointState", "field": "position",
                                 "joints": ["j1", "j9", "j3"]}])
    ds, rep = build_dataset([tmp_path], bad)
    assert len(ds) == 0 and "j9" in rep["episodes"][0]["reasons"][0]
    wrong_type = contract(observation=[{"name": "g", "topic": "/task_state",
                                        "type": "sensor_msgs/msg/JointState", "field": "position",
                                        "size": 2}])
    ds, rep = build_dataset([tmp_path], wrong_type)
    assert len(ds) == 0 and "has type bc_msgs/msg/TaskState" in rep["episodes"][0]["reasons"][0]


def test_frame_tag_labels_come_from_the_expert(tmp_path):
    topics = dict(TOPICS, **{"/dagger/frames": "bc_msgs/msg/FrameTag"})
    w = EpisodeBagWriter(tmp_path / "ep", topics, {"source": "dagger"})
    c = contract()
    for k in range(30):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        w.write("/joint_states", js(k, t), recv + 400_000)
        w.write("/task_state", ts(k, t), recv + 450_000)
        executed = cmd(k) + 1.0
        w.write(CMD, {"data": executed}, recv + 3_000_000)
        labelled = k % 3 != 0
        w.write("/dagger/frames", {"stamp": t, "episode_id": 1, "step": k, "actor": k % 2,
                                   "labelled": labelled,
                                   # some frames without observation: assembled from raw topics
                                   "observation": [] if k % 5 == 0 else expected_obs(k, k),
                                   "expert_action": cmd(k) if labelled else [],
                                   "policy_action": executed, "executed_action": executed},
                recv + 3_100_000)
    w.close()
    ds, rep = build_dataset([tmp_path], c)
    (ep,) = ds.episodes
    e = rep["episodes"][0]
    assert e["alignment"] == "frame_tag" and e["frame_obs_mismatch"] == 0 and e["warnings"] == []
    assert len(ep) == 30
    assert np.array_equal(ep.labelled, [k % 3 != 0 for k in range(30)])
    for k in range(30):
        assert np.array_equal(ep.obs[k], expected_obs(k, k))
        assert np.array_equal(ep.act[k], cmd(k) if k % 3 else cmd(k) + 1.0)
    assert e["actor_counts"] == {"0": 15, "1": 15}
    stats = ds.stats()                      # labels only: executed actions are not in the stats
    labelled_acts = np.stack([cmd(k) for k in range(30) if k % 3])
    assert np.allclose(stats.act_mean, labelled_acts.mean(0))


def test_frame_tag_chunk_labels_become_episode_chunk_labels(tmp_path):
    """dagger label_chunk_length K > 1: labelled FrameTags carry the expert's K x act_dim plan
    (row-major); the episode gets chunk_labels (T, K, A), act = the plans' first actions,
    unlabelled frames hold the executed action in every row; saved and loaded back."""
    topics = dict(TOPICS, **{"/dagger/frames": "bc_msgs/msg/FrameTag"})
    w = EpisodeBagWriter(tmp_path / "bags" / "ep", topics, {"source": "dagger"})
    c = contract()
    kc, n = 5, 24                 # the label chunk length need not be the contract's (4)

    def plan(k):
        return cmd(k)[None, :] + 0.01 * np.arange(kc)[:, None]

    for k in range(n):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        w.write("/joint_states", js(k, t), recv + 400_000)
        w.write("/task_state", ts(k, t), recv + 450_000)
        executed = cmd(k) + 1.0
        w.write(CMD, {"data": executed}, recv + 3_000_000)
        labelled = k % 4 != 1
        w.write("/dagger/frames", {"stamp": t, "episode_id": 1, "step": k, "actor": k % 2,
                                   "labelled": labelled, "observation": expected_obs(k, k),
                                   "expert_action": plan(k).ravel() if labelled else [],
                                   "policy_action": executed, "executed_action": executed},
                recv + 3_100_000)
    w.close()
    ds, rep = build_dataset([tmp_path / "bags"], c, out_dir=tmp_path / "ds")
    (ep,) = ds.episodes
    e = rep["episodes"][0]
    assert e["alignment"] == "frame_tag" and e["chunk_labels"] == kc and e["warnings"] == []
    assert ep.chunk_labels.shape == (n, kc, 3) and ep.meta["chunk_labels"] == kc
    assert np.array_equal(ep.labelled, [k % 4 != 1 for k in range(n)])
    for k in range(n):
        if k % 4 != 1:
            assert np.array_equal(ep.chunk_labels[k], plan(k)), k
            assert np.array_equal(ep.act[k], cmd(k)), k
        else:
            assert np.array_equal(ep.act[k], cmd(k) + 1.0)
            assert np.array_equal(ep.chunk_labels[k], np.repeat((cmd(k) + 1.0)[None], kc, axis=0))
    back = Dataset.load(tmp_path / "ds").episodes[0]
    assert np.array_equal(back.chunk_labels, ep.chunk_labels)


def test_frame_tag_single_action_labels_have_no_chunk_labels(tmp_path):
    lockstep = dict(TOPICS, **{"/dagger/frames": "bc_msgs/msg/FrameTag"})
    w = EpisodeBagWriter(tmp_path / "ep", lockstep, {"source": "dagger"})
    for k in range(10):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        w.write("/joint_states", js(k, t), recv + 400_000)
        w.write("/task_state", ts(k, t), recv + 450_000)
        w.write("/dagger/frames", {"stamp": t, "episode_id": 1, "step": k, "actor": 0, "labelled": True,
                                   "observation": expected_obs(k, k), "expert_action": cmd(k),
                                   "policy_action": cmd(k), "executed_action": cmd(k)}, recv + 3_100_000)
    w.close()
    ds, rep = build_dataset([tmp_path], contract())
    assert ds.episodes[0].chunk_labels is None and "chunk_labels" not in rep["episodes"][0]


def test_out_dir_roundtrip_stats_split_and_report(tmp_path):
    for i in range(5):
        lockstep_bag(tmp_path / "bags" / f"ep_{i:03d}", n=20 + i, meta={"episode_id": i})
    ds, rep = build_dataset([tmp_path / "bags"], contract(), out_dir=tmp_path / "ds")
    back = Dataset.load(tmp_path / "ds")
    assert back.content_hash() == ds.content_hash() == rep["hash"]
    assert [e.meta["episode_id"] for e in back.episodes] == [0, 1, 2, 3, 4]
    assert back.num_frames == sum(20 + i for i in range(5)) == rep["frames"]
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert np.allclose(meta["stats"]["act_mean"], np.concatenate([e.act for e in ds.episodes]).mean(0))
    train, val = back.split(0.4, seed=1)
    assert len(train) + len(val) == 5 and len(val) == 2
    assert json.loads((tmp_path / "ds" / "build_report.json").read_text())["included"] == 5
    assert bagread.find_bags([tmp_path / "bags"])[0].name == "ep_000"


def test_sim_expert_bag_matches_in_process_assembly(tmp_path):
    """Simulator -> bag -> builder gives exactly the arrays the in-process path assembles."""
    pytest.importorskip("mujoco")
    from bc_policy_node.core.contract import ObservationAssembler
    from bc_policy_node.core.sim.env import COMMAND_TOPIC, SimEnv, load_contract

    c = load_contract("planar3", "curved_reach")
    env = SimEnv("planar3", "curved_reach")
    expert = env.make_expert()
    asm = ObservationAssembler(c)
    obs, acts = [], []
    w = EpisodeBagWriter(tmp_path / "ep", c.topics(), {"task": "curved_reach", "seed": 4})
    msgs = env.reset(seed=4)
    while not env.done and len(acts) < 120:
        stamp = int(round(msgs["/joint_states"].stamp * 1e9))
        for topic, m in msgs.items():
            w.write(topic, m, stamp + 300_000)
        obs.append(asm.assemble(msgs))
        a = expert.act_messages(msgs)
        acts.append(np.asarray(a, float))
        w.write(COMMAND_TOPIC, {"data": a}, stamp + 2_000_000)
        msgs = env.step(a)
    w.close(success=bool(msgs["/task_state"].success))
    ds, rep = build_dataset([tmp_path], c)
    (ep,) = ds.episodes
    assert rep["episodes"][0]["alignment"] == "command" and len(ep) == len(acts)
    assert np.array_equal(ep.obs, np.array(obs)) and np.array_equal(ep.act, np.array(acts))
