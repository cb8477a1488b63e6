"""Episode bags: exact read-back with independent readers, crash safety with real signals.

Bags are written with the `mcap` library (bagio) and read back with `rosbags` (a separate
implementation of rosbag2 + MCAP + CDR), and with the `mcap` seeking reader for the fields
rosbags does not expose (publish_time, metadata records).
"""
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
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


CHILD_TIMEOUT_S = 120.0   # deadline for a child's progress / exit (a hang fails, never blocks)


class Child:
    """A `python -c script` child whose stdout/stderr are drained by threads, so every wait
    on it has a deadline and a failure shows what the child printed."""

    def __init__(self, script, *args, preexec_fn=None):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, preexec_fn=preexec_fn)
        self.out, self.err = [], []
        self._lines = queue.Queue()
        self._pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True),
                       threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True)]
        for t in self._pumps:
            t.start()

    def _pump(self, stream, into, lines):
        for line in stream:
            into.append(line)
            if lines:
                self._lines.put(line)
        if lines:
            self._lines.put(None)              # EOF

    @property
    def returncode(self):
        return self.proc.returncode

    def output(self):
        return f"stdout:\n{''.join(self.out)[-3000:]}\nstderr:\n{''.join(self.err)[-3000:]}"

    def fail(self, what):
        self.kill()
        pytest.fail(f"child {what} (exit code {self.proc.returncode})\n{self.output()}")

    def wait_for(self, pred, timeout=CHILD_TIMEOUT_S):
        """The first stdout line (split) that satisfies pred; fails on EOF or after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.wait(timeout=CHILD_TIMEOUT_S)
                self.fail("ended before printing the expected line")
            if pred(line.split()):
                return line.split()
        self.fail(f"printed no expected line within {timeout:.0f} s")

    def wait(self, timeout=CHILD_TIMEOUT_S):
        """Exit code; fails (after killing the child) if it has not exited within `timeout`."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"did not exit within {timeout:.0f} s")
        for t in self._pumps:
            t.join(timeout=10.0)
        return self.proc.returncode

    def kill(self):
        """Teardown: SIGKILL if still running, reaped with a deadline (never raises)."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def ignore_sigint():
    """preexec_fn: the child starts with SIGINT ignored, as it inherits it from a test run under
    nohup or in a non-interactive shell's background job (`cmd &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        k, deadline = 0, time.monotonic() + 300     # waits to be killed; never outlives a lost parent
        while time.monotonic() < deadline:
            w.write("/cmd", {"data": [float(k)]}, 2 * 10**9 + k * 10**6)
            k += 1
            if k % 100 == 0:
                w.flush()
                print("flushed", k, flush=True)
            time.sleep(0.0005)
"""


def test_kill_9_mid_episode_leaves_earlier_intact_and_recovers_the_rest(tmp_path):
    with Child(WRITER_CHILD, tmp_path) as proc:
        proc.wait_for(lambda w: w[0] == "closed")
        fields = proc.wait_for(lambda w: w[0] == "flushed" and int(w[1]) >= 300)
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.wait(timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, proc.output()
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
    with Child(script, tmp_path) as proc:
        proc.wait(timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, proc.output()
    rep = recover_bag(tmp_path / "ep")
    assert rep["status"] == "recovered" and rep["counts"] == {"/cmd": 0}
    from rosbags.rosbag2 import Reader
    with Reader(tmp_path / "ep") as r:
        assert [c.topic for c in r.connections] == ["/cmd"] and r.message_count == 0


# The child to be SIGINT-ed restores Python's handler first: a process that starts with SIGINT
# ignored (inherited from nohup / a background job) keeps it ignored, Python installs its
# KeyboardInterrupt handler only over SIG_DFL, and the SIGINT would never arrive.
SIGINT_CHILD = """
    import signal
    inherited = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import sys, time
    from bc_policy_node.core.data.bagio import EpisodeBagWriter
    print("inherited", "SIG_IGN" if inherited is signal.SIG_IGN else "handler", flush=True)
    with EpisodeBagWriter(sys.argv[1] + "/ep", {"/cmd": "std_msgs/msg/Float64MultiArray"}) as w:
        k, deadline = 0, time.monotonic() + 300     # waits for SIGINT; never outlives a lost parent
        while time.monotonic() < deadline:
            w.write("/cmd", {"data": [float(k)]}, 10**9 + k)
            k += 1
            if k == 200:
                print("ready", flush=True)
            time.sleep(0.0005)
"""


def _sigint_scenario(tmp_path, preexec_fn=None):
    with Child(SIGINT_CHILD, tmp_path, preexec_fn=preexec_fn) as proc:
        inherited = proc.wait_for(lambda w: w[0] == "inherited")[1]
        proc.wait_for(lambda w: w[0] == "ready")
        proc.proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=CHILD_TIMEOUT_S)
    assert code != 0 and "KeyboardInterrupt" in "".join(proc.err), proc.output()
    if preexec_fn is ignore_sigint:      # the simulation is real: the child started with SIG_IGN
        assert inherited == "SIG_IGN", proc.output()
    bag = tmp_path / "ep"
    assert not bagread.needs_recovery(bag), proc.output()   # footer + metadata.yaml written
    meta = bagread.read_episode_meta(bag)
    assert meta["complete"] is False and meta["outcome"] == "interrupted: KeyboardInterrupt"
    values = [m.data[0] for _t, m in rosbags_read(bag)["/cmd"]]
    assert len(values) >= 200 and values == [float(k) for k in range(len(values))]
    assert meta["counts"]["/cmd"] == len(values)


def test_sigint_finalizes_a_valid_bag_marked_incomplete(tmp_path):
    _sigint_scenario(tmp_path)


def test_sigint_finalizes_the_bag_even_if_the_test_run_ignores_sigint(tmp_path):
    """Same scenario from a parent whose SIGINT is SIG_IGN (nohup, `pytest &`): the child
    reports that it really started with SIGINT ignored, and the bag is still finalized."""
    _sigint_scenario(tmp_path, preexec_fn=ignore_sigint)


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
    with Child(script, tmp_path) as proc:
        proc.wait(timeout=CHILD_TIMEOUT_S)
    out, err = "".join(proc.out), "".join(proc.err)
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
