"""Episode bags: exact read-back with independent readers, crash safety with real signals.

Bags are written with the `mcap` library (bagio) and read back with `rosbags` (a separate
implementation of rosbag2 + MCAP + CDR), and with the `mcap` seeking reader for the fields
rosbags does not expose (publish_time, metadata records).
"""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from bc_policy_node.core.data import bagread, rostypes
from bc_policy_node.core.data.bagio import BagWriteError, EpisodeBagWriter, recover_bag
from bc_policy_node.core.types import JointStateData, TaskStateData

ROOT = Path(__file__).resolve().parents[2]
TOPICS = {"/joint_states": "sensor_msgs/msg/JointState",
          "/task_state": "bc_msgs/msg/TaskState",
          "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray"}
CMD = "/forward_position_controller/commands"


def rosbags_read(bag):
    """Independent reader: rosbags' rosbag2 Reader + its own CDR deserializer."""
    from rosbags.rosbag2 import Reader

    store = rostypes.typestore()
    out = {}
    with Reader(bag) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def mcap_read(bag):
    from mcap.reader import make_reader

    (path,) = Path(bag).glob("*.mcap")
    with open(path, "rb") as f:
        r = make_reader(f)
        msgs = [(ch.topic, m.log_time, m.publish_time, m.sequence) for _s, ch, m in r.iter_messages()]
        meta = {m.name: m.metadata for m in r.iter_metadata()}
        stats = r.get_summary().statistics
    return msgs, meta, stats


def joint_state(k):
    return JointStateData(stamp=100.0 + 0.02 * k, name=["j2", "j1", "j3"],
                          position=np.array([k, k + 0.25, -k]) * 0.001,
                          velocity=np.array([0.5, 1.5, 2.5]))


def task_state(k):
    return TaskStateData(stamp=100.0 + 0.02 * k, task="curved_reach", episode_id=7, seed=3,
                         variant="", goal=np.array([0.4, -0.1 * k]), obstacle=np.zeros(0),
                         waypoints=np.zeros(0), phase=0, num_phases=1, mode=-1, step=k,
                         status="running", success=False, done=False, reason="",
                         ee_position=np.array([0.1, 0.2]))


def write_episode(path, n=50, **meta):
    with EpisodeBagWriter(path, TOPICS, {"task": "curved_reach", "episode_id": 7, "seed": 3,
                                         **meta}) as w:
        for k in range(n):
            t = int(round((100.0 + 0.02 * k) * 1e9))
            w.write("/joint_states", joint_state(k), t + 400_000)
            # task state pre-serialized, as a raw=True rclpy subscription delivers it
            w.write("/task_state", rostypes.serialize("bc_msgs/msg/TaskState", task_state(k)), t + 500_000)
            w.write(CMD, {"data": [k * 0.5, -k * 0.5, 1.0 / (k + 1)]}, t + 3_000_000)
    return path


def test_roundtrip_exact_values_times_and_metadata(tmp_path):
    bag = write_episode(tmp_path / "ep_000", n=50, source="expert")
    got = rosbags_read(bag)
    assert {t: len(v) for t, v in got.items()} == {t: 50 for t in TOPICS}
    for k, (t, m) in enumerate(got["/joint_states"]):
        assert t == int(round((100.0 + 0.02 * k) * 1e9)) + 400_000
        assert list(m.name) == ["j2", "j1", "j3"]
        assert np.array_equal(m.position, np.array([k, k + 0.25, -k]) * 0.001)
        assert rostypes.stamp_to_ns(m.header.stamp) == int(round((100.0 + 0.02 * k) * 1e9))
    for k, (t, m) in enumerate(got["/task_state"]):
        assert m.step == k and m.task == "curved_reach" and np.array_equal(m.goal, [0.4, -0.1 * k])
    for k, (t, m) in enumerate(got[CMD]):
        assert np.array_equal(m.data, [k * 0.5, -k * 0.5, 1.0 / (k + 1)])

    msgs, meta, stats = mcap_read(bag)
    assert stats.message_count == 150
    js = [m for m in msgs if m[0] == "/joint_states"]
    cmd = [m for m in msgs if m[0] == CMD]
    # publish_time = header stamp where there is a header, else the receive time
    assert all(p == log - 400_000 for _t, log, p, _s in js)
    assert all(p == log for _t, log, p, _s in cmd)
    assert [s for *_x, s in cmd] == list(range(50))
    import json
    rec = json.loads(meta["bc_policy.episode"]["json"])
    assert rec["complete"] is True and rec["counts"] == {t: 50 for t in TOPICS}
    assert "serialized_metadata" in meta["rosbag2"]

    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 9 and info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == ["ep_000_0.mcap"] and info["message_count"] == 150
    assert {t["topic_metadata"]["name"]: t["message_count"]
            for t in info["topics_with_message_count"]} == {t: 50 for t in TOPICS}
    assert all(t["topic_metadata"]["type_description_hash"].startswith("RIHS01_")
               for t in info["topics_with_message_count"])
    assert info["custom_data"]["bc_policy.task"] == "curved_reach"
    ep = yaml.safe_load((bag / "episode.yaml").read_text())
    assert ep["complete"] is True and ep["source"] == "expert" and ep["seed"] == 3
    assert ep["counts"] == {t: 50 for t in TOPICS}
    assert not bagread.needs_recovery(bag)


def test_raw_bytes_and_objects_give_identical_records(tmp_path):
    raw = rostypes.serialize("sensor_msgs/msg/JointState", joint_state(3))
    with EpisodeBagWriter(tmp_path / "a", {"/joint_states": TOPICS["/joint_states"]}) as w:
        w.write("/joint_states", raw, 5)
        w.write("/joint_states", joint_state(3), 6)
        w.write("/joint_states", rostypes.to_ros("sensor_msgs/msg/JointState", joint_state(3)), 7)
    from rosbags.rosbag2 import Reader
    with Reader(tmp_path / "a") as r:
        datas = [bytes(d) for _c, _t, d in r.messages()]
    assert datas == [raw, raw, raw]


def test_metadata_and_errors(tmp_path):
    with pytest.raises(ValueError, match="source"):
        EpisodeBagWriter(tmp_path / "x", TOPICS, {"source": "dreamed"})
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown message type"):
        EpisodeBagWriter(tmp_path / "y", {"/a": "nope_msgs/msg/Nope"})
    write_episode(tmp_path / "ep", n=2)
    with pytest.raises(BagWriteError, match="exists already"):
        EpisodeBagWriter(tmp_path / "ep", TOPICS)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(BagWriteError) as e:
        EpisodeBagWriter(blocker / "ep_001", TOPICS)
    assert str(blocker / "ep_001") in str(e.value)
    w = EpisodeBagWriter(tmp_path / "z", TOPICS)
    with pytest.raises(KeyError, match="not declared"):
        w.write("/other", b"\x00\x01\x00\x00", 1)
    w.close(complete=True, success=True, outcome="success")
    with pytest.raises(BagWriteError, match="after close"):
        w.write(CMD, {"data": [1.0]}, 2)
    meta = bagread.read_episode_meta(tmp_path / "z")
    assert meta["success"] is True and meta["outcome"] == "success" and meta["complete"] is True
    assert recover_bag(tmp_path / "z")["status"] == "ok"   # clean bags are left alone


def _child(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


WRITER_CHILD = """
    import sys, time
    from bc_policy_node.core.data.bagio import EpisodeBagWriter
    root = sys.argv[1]
    topics = {"/cmd": "std_msgs/msg/Float64MultiArray", "/joint_states": "sensor_msgs/msg/JointState"}
    with EpisodeBagWriter(root + "/ep_000", topics, {"episode_id": 0}) as w:
        for k in range(40):
            w.write("/cmd", {"data": [float(k)]}, 10**9 + k)
    print("closed", flush=True)
    with EpisodeBagWriter(root + "/ep_001", topics, {"episode_id": 1}, flush_interval_s=0.02) as w:
        k = 0
        while True:
            w.write("/cmd", {"data": [float(k)]}, 2 * 10**9 + k * 10**6)
            k += 1
            if k % 100 == 0:
                w.flush()
                print("flushed", k, flush=True)
            time.sleep(0.0005)
"""


def _wait_for(proc, pred):
    for line in proc.stdout:
        if pred(line.split()):
            return line.split()
    raise AssertionError(f"child ended early: {proc.stderr.read()}")


def test_kill_9_mid_episode_leaves_earlier_intact_and_recovers_the_rest(tmp_path):
    proc = _child(WRITER_CHILD, tmp_path)
    try:
        _wait_for(proc, lambda w: w[0] == "closed")
        fields = _wait_for(proc, lambda w: w[0] == "flushed" and int(w[1]) >= 300)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    flushed = int(fields[1])
    ep0, ep1 = tmp_path / "ep_000", tmp_path / "ep_001"
    assert not bagread.needs_recovery(ep0)
    assert [m.data[0] for _t, m in rosbags_read(ep0)["/cmd"]] == list(range(40))
    assert bagread.needs_recovery(ep1) and not (ep1 / "metadata.yaml").exists()
    assert bagread.read_episode_meta(ep1)["complete"] is False

    rep = recover_bag(ep1)
    assert rep["status"] == "recovered"
    got = rosbags_read(ep1)["/cmd"]
    values = [m.data[0] for _t, m in got]
    # everything flushed before the kill is there, in order, exactly; nothing invented
    assert len(values) >= flushed
    assert values == [float(k) for k in range(len(values))]
    assert [t for t, _m in got] == [2 * 10**9 + k * 10**6 for k in range(len(values))]
    meta = bagread.read_episode_meta(ep1)
    assert meta["complete"] is False and meta["recovered"] is True
    assert meta["counts"] == {"/cmd": len(values), "/joint_states": 0}
    assert not bagread.needs_recovery(ep1)
    msgs, mmeta, stats = mcap_read(ep1)                   # valid summary for seeking readers
    assert stats.message_count == len(values)
    assert '"recovered": true' in mmeta["bc_policy.episode"]["json"]
    assert recover_bag(ep1)["status"] == "ok"


def test_kill_before_first_chunk_recovers_an_empty_valid_bag(tmp_path):
    script = """
        import sys, os, signal
        from bc_policy_node.core.data.bagio import EpisodeBagWriter
        w = EpisodeBagWriter(sys.argv[1] + "/ep", {"/cmd": "std_msgs/msg/Float64MultiArray"},
                             flush_interval_s=1e9)
        w.write("/cmd", {"data": [1.0]}, 1)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = _child(script, tmp_path)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rep = recover_bag(tmp_path / "ep")
    assert rep["status"] == "recovered" and rep["counts"] == {"/cmd": 0}
    from rosbags.rosbag2 import Reader
    with Reader(tmp_path / "ep") as r:
        assert [c.topic for c in r.connections] == ["/cmd"] and r.message_count == 0


def test_sigint_finalizes_a_valid_bag_marked_incomplete(tmp_path):
    script = """
        import sys, time
        from bc_policy_node.core.data.bagio import EpisodeBagWriter
        with EpisodeBagWriter(sys.argv[1] + "/ep", {"/cmd": "std_msgs/msg/Float64MultiArray"}) as w:
            k = 0
            while True:
                w.write("/cmd", {"data": [float(k)]}, 10**9 + k)
                k += 1
                if k == 200:
                    print("ready", flush=True)
                time.sleep(0.0005)
    """
    proc = _child(script, tmp_path)
    _wait_for(proc, lambda w: w[0] == "ready")
    proc.send_signal(signal.SIGINT)
    proc.wait()
    bag = tmp_path / "ep"
    assert not bagread.needs_recovery(bag)          # footer + metadata.yaml written
    meta = bagread.read_episode_meta(bag)
    assert meta["complete"] is False and meta["outcome"] == "interrupted: KeyboardInterrupt"
    values = [m.data[0] for _t, m in rosbags_read(bag)["/cmd"]]
    assert len(values) >= 200 and values == [float(k) for k in range(len(values))]
    assert meta["counts"]["/cmd"] == len(values)


def test_disk_full_raises_bag_write_error_and_keeps_earlier_episodes(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse writes past the limit (EFBIG), like a full disk.
    script = """
        import sys, resource, signal, os
        import numpy as np
        from bc_policy_node.core.data.bagio import EpisodeBagWriter, BagWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        topics = {"/cmd": "std_msgs/msg/Float64MultiArray"}
        with EpisodeBagWriter(sys.argv[1] + "/ep_000", topics, compression="none") as w:
            for k in range(100):
                w.write("/cmd", {"data": [float(k)] * 7}, k)
        w = EpisodeBagWriter(sys.argv[1] + "/ep_001", topics, compression="none", chunk_size=4096)
        try:
            for k in range(100000):
                w.write("/cmd", {"data": list(np.random.rand(7))}, k)
        except BagWriteError as e:
            print("ERROR", e.path, "|", e)
        w.close()
    """
    proc = _child(script, tmp_path)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.startswith("ERROR " + str(tmp_path / "ep_001")), out
    assert "write failed" in out
    assert [m.data[0] for _t, m in rosbags_read(tmp_path / "ep_000")["/cmd"]] == list(range(100))
    assert bagread.read_episode_meta(tmp_path / "ep_001")["complete"] is False
    rep = recover_bag(tmp_path / "ep_001")
    n = rep["counts"]["/cmd"]
    assert n > 0 and len(rosbags_read(tmp_path / "ep_001")["/cmd"]) == n


def test_recover_all_only_touches_crashed_bags(tmp_path):
    write_episode(tmp_path / "ep_000", n=5)
    before = (tmp_path / "ep_000" / "ep_000_0.mcap").read_bytes()
    w = EpisodeBagWriter(tmp_path / "ep_001", TOPICS, flush_interval_s=0.0)
    w.write(CMD, {"data": [1.0, 2.0, 3.0]}, 10)
    w.write(CMD, {"data": [4.0, 5.0, 6.0]}, 20)      # each write flushed (interval 0)
    w._file.close()                                   # crash without close()
    lazy = EpisodeBagWriter(tmp_path / "ep_002", TOPICS, flush_interval_s=3600.0)
    lazy.write(CMD, {"data": [7.0, 8.0, 9.0]}, 30)
    assert lazy.flush_if_due() is False               # not due: the chunk stays in memory
    lazy._file.close()
    reps = bagread.recover_all([tmp_path])
    assert reps[1]["messages"] == 0                   # ... and was lost by the "crash"
    reps = reps[:1]
    assert [r["path"] for r in reps] == [str(tmp_path / "ep_001")] and reps[0]["messages"] == 2
    assert (tmp_path / "ep_000" / "ep_000_0.mcap").read_bytes() == before
    assert [list(m.data) for _t, m in rosbags_read(tmp_path / "ep_001")[CMD]] == [[1, 2, 3], [4, 5, 6]]
