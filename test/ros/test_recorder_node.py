"""recorder_node through real processes over real DDS.

A publisher process (stream_publisher.py) sends JointState / TaskState / commands with known
values; the recorder (the installed executable, started from graph.record_nodes like
`bc-policy collect` does) writes one bag per episode. Bags are read back with rosbags'
AnyReader (independent of core.data.bagread) and built into a dataset. Crash, signals, full
disk and start-up errors are real: kill -9, SIGINT/SIGTERM, RLIMIT_FSIZE (EFBIG), bad parameters.
No assertion depends on timing; waits are on conditions with generous deadlines.
"""
import hashlib
import json
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from bc_policy_node import graph, procs  # noqa: E402
from bc_policy_node.core.data import bagread  # noqa: E402
from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.data.dataset_builder import build_dataset  # noqa: E402
from bc_policy_node.pipeline.graph_client import START_EPISODE, STOP_EPISODE, GraphClient  # noqa: E402
from bc_msgs.srv import StartEpisode, StopEpisode  # noqa: E402
from child_io import kill, read_line, wait_or_kill  # noqa: E402
from stream_publisher import CMD_TOPIC, DT, command, goal, joint_pos, joint_vel  # noqa: E402

pytestmark = pytest.mark.ros
HERE = Path(__file__).resolve().parent
CONTRACT = HERE / "data" / "recorder_test_contract.yaml"   # what stream_publisher.py sends
TOPICS = ("/joint_states", "/task_state", CMD_TOPIC)
PUB_ARGS = []
WAIT = 60.0     # s; generous deadline for conditions (never asserted as a duration)


# ------------------------------------------------------------------------------ helpers
def recorder_spec(out: Path, **params):
    (spec,) = graph.record_nodes(contract=str(CONTRACT), output_dir=str(out))
    spec.parameters.update(params)
    return spec


class Publisher:
    """stream_publisher.py in its own process, driven line by line."""

    def __init__(self, args=()):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "stream_publisher.py")] + PUB_ARGS + list(args),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = False

    def wait_ready(self):
        if not self.ready:
            line = read_line(self.proc, WAIT, "stream_publisher.py start-up").strip()
            assert line == "ready", f"publisher said {line!r}"
            self.ready = True

    def send(self, line: str):
        self.wait_ready()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        # a run of 2000 frames at 500 Hz takes 4 s of wall time; WAIT covers a starved machine
        return json.loads(read_line(self.proc, WAIT, "stream_publisher.py result"))["counts"]

    def run(self, episode: int, frames: int, rate: float, bad_every: int = 0) -> dict:
        self.send(f"run {episode} {frames} {rate} {bad_every}")
        return self.result()

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            kill(self.proc)


@pytest.fixture
def publisher():
    p = Publisher()
    yield p
    p.close()


@pytest.fixture
def client():
    with GraphClient("recorder_test_client") as c:
        yield c


@pytest.fixture
def contract():
    return Contract.load(CONTRACT)


def read_independent(bag: Path):
    """{topic: [deserialized msgs]} with rosbags AnyReader (not core.data.bagread)."""
    from rosbags.highlevel import AnyReader
    from bc_policy_node.core.data.rostypes import typestore

    out = {}
    with AnyReader([bag], default_typestore=typestore()) as r:
        for conn, _t, raw in r.messages():
            out.setdefault(conn.topic, []).append(r.deserialize(raw, conn.msgtype))
    return out


def episode_yaml(bag: Path) -> dict:
    return yaml.safe_load((bag / "episode.yaml").read_text())


def check_values(msgs: dict, ep: int, n: int):
    """The first n frames of episode ep, exactly as published."""
    assert len(msgs["/joint_states"]) >= n and len(msgs[CMD_TOPIC]) >= n
    for k in range(n):
        assert np.array_equal(msgs["/joint_states"][k].position, joint_pos(ep, k)), k
        assert np.array_equal(msgs["/joint_states"][k].velocity, joint_vel(ep, k)), k
        assert np.array_equal(msgs["/task_state"][k].goal, goal(ep, k)), k
        assert np.array_equal(msgs[CMD_TOPIC][k].data, command(ep, k)), k


def dir_digest(bag: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(bag.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def wait_up(client, rec):
    """Until this recorder process publishes its status (after start-up recovery), and its
    services are discovered. Status carries the pid: never mistaken for a killed predecessor."""
    client.wait_recorder(lambda s: s["pid"] == rec.pid, WAIT, f"recorder pid {rec.pid}")
    client.wait_for_services([START_EPISODE, STOP_EPISODE], timeout=WAIT)


def wait_written(client, sent: dict):
    """Until the open episode has every message `sent` (a condition, never a duration)."""
    client.wait_recorder(lambda s: all((s["episode"] or {}).get("written", {}).get(t) == n
                                       for t, n in sent.items()), WAIT, f"episode written: {sent}")


def wait_exit(node: procs.NodeProcess, timeout: float = WAIT) -> int:
    try:
        return node.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node.spec.name} did not exit:\n{node.log()[-2000:]}")


# ------------------------------------------------------------------------------ tests
def test_records_episodes_exactly_and_rejects_bad_commands(tmp_path, publisher, client, contract):
    out = tmp_path / "bags"
    rec = procs.NodeProcess(recorder_spec(out), tmp_path / "logs")
    client.check = lambda: rec.alive() or pytest.fail(f"recorder died:\n{rec.log()[-3000:]}")
    try:
        wait_up(client, rec)
        publisher.wait_ready()
        idle = publisher.run(99, 10, 250)                  # no episode open: counted, not written
        client.wait_recorder(lambda s: all(s["idle"][t] == 10 for t in TOPICS), WAIT, "idle messages counted")
        plan = [(0, 300, 250, 0), (1, 300, 500, 0), (2, 100, 250, 25)]
        sent, bags = {}, {}
        for ep, frames, rate, bad in plan:
            bags[ep] = Path(client.start_episode("curved_reach", seed=ep, episode_id=ep))
            sent[ep] = publisher.run(ep, frames, rate, bad)
            wait_written(client, sent[ep])
            resp = client.stop_episode(task_success=ep != 2, outcome="success" if ep != 2 else "timeout")
            assert resp.bag_path == str(bags[ep]) and resp.message == "saved"
            assert resp.messages_written == sum(sent[ep].values()), (ep, sent[ep])
        st = client.wait_recorder(lambda s: s["received"][CMD_TOPIC] == 10 + 700, WAIT, "all received")
        for t in TOPICS:
            assert st["received"][t] == idle[t] + sum(s[t] for s in sent.values())
            assert st["written"][t] == sum(s[t] for s in sent.values())
            assert st["idle"][t] == idle[t] and st["lost"][t] == 0
        assert st["rejected"][CMD_TOPIC] == 4 and st["episodes"]["finished"] == 3
        assert st["publishers"]["/joint_states"] == 1

        # read back independently: counts published == recorded, values exact, metadata
        for ep, frames, _rate, _bad in plan:
            msgs = read_independent(bags[ep])
            assert {t: len(msgs.get(t, [])) for t in TOPICS} == sent[ep]
            meta = episode_yaml(bags[ep])
            assert meta["complete"] is True and meta["episode_id"] == ep and meta["seed"] == ep
            assert meta["success"] is (ep != 2) and meta["counts"]["/joint_states"] == frames
            if ep != 2:
                check_values(msgs, ep, frames)
        assert episode_yaml(bags[2])["rejected"] == {CMD_TOPIC: 4}
        assert bags[0].name == "episode_000000_seed_0"

        # the dataset builder reproduces the published values; the episode with wrong-size
        # commands is excluded with the reason, never silently built
        ds, rep = build_dataset([out], contract)
        assert rep["included"] == 2 and len(ds) == 2
        for ep, e in zip((0, 1), ds.episodes):
            assert e.meta["episode_id"] == ep and e.meta["alignment"] == "command"
            assert np.array_equal(e.obs, np.stack([np.concatenate([joint_pos(ep, k), joint_vel(ep, k),
                                                                  goal(ep, k)]) for k in range(300)]))
            assert np.array_equal(e.act, np.stack([command(ep, k) for k in range(300)]))
            assert np.allclose(e.t, np.arange(300) * 0.02)     # sim clock, not the faster wall clock
        (bad,) = [e for e in rep["episodes"] if e["status"] == "excluded"]
        assert bad["episode_id"] == 2 and "shape" in bad["reasons"][0]

        # the output folder disappears (disk swapped, unmounted...): start_episode says why,
        # the node keeps running, earlier episodes stay intact
        digest = dir_digest(bags[0])
        out.rename(tmp_path / "moved")
        out.write_text("not a folder")
        resp = client.call(StartEpisode, START_EPISODE, StartEpisode.Request(task="t", seed=5, episode_id=5),
                           check_success=False)
        assert not resp.success and str(out) in resp.message and "cannot create" in resp.message
        assert rec.alive()
        assert dir_digest(tmp_path / "moved" / bags[0].name) == digest
    finally:
        code = rec.stop()
    assert code == 0, rec.log()[-2000:]


def test_kill9_keeps_finished_episodes_and_recovers_the_interrupted_one(tmp_path, publisher, client):
    out = tmp_path / "bags"
    rec = procs.NodeProcess(recorder_spec(out), tmp_path / "logs")
    try:
        wait_up(client, rec)
        publisher.wait_ready()
        done = Path(client.start_episode("curved_reach", seed=0, episode_id=0))
        sent0 = publisher.run(0, 100, 250)
        wait_written(client, sent0)
        client.stop_episode(task_success=True)
        digest = dir_digest(done)

        cut = Path(client.start_episode("curved_reach", seed=1, episode_id=1))
        result = {}
        runner = threading.Thread(target=lambda: result.update(publisher.run(1, 2000, 500)))
        runner.start()
        client.wait_recorder(lambda s: (s["episode"] or {}).get("written", {}).get("/joint_states", 0) >= 400,
                             WAIT, "400 joint states written")
        rec.kill9()
        runner.join(timeout=WAIT)
        assert bagread.needs_recovery(cut) and not bagread.needs_recovery(done)
    finally:
        if rec.alive():
            rec.stop()

    # restart: recover_on_start turns the cut bag into a valid bag marked incomplete
    rec2 = procs.NodeProcess(recorder_spec(out), tmp_path / "logs2")
    try:   # the first status of the new process comes after recovery
        client.wait_recorder(lambda s: s["pid"] == rec2.pid, WAIT, "the restarted recorder")
        log = rec2.log()
    finally:
        code = rec2.stop()
    assert "recovered interrupted episode" in log and code == 0, log
    assert dir_digest(done) == digest                       # never reopened, byte for byte
    assert {t: len(m) for t, m in read_independent(done).items() if t in TOPICS} == sent0
    meta = episode_yaml(cut)
    assert meta["complete"] is False and meta["recovered"] is True and meta["outcome"] == "interrupted"
    msgs = read_independent(cut)
    n = min(len(msgs["/joint_states"]), len(msgs[CMD_TOPIC]), len(msgs["/task_state"]))
    assert 100 <= n <= result["/joint_states"] == 2000
    check_values(msgs, 1, n)                                 # a prefix, exact, nothing invented


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finalizes_the_open_episode(tmp_path, publisher, client, sig):
    """SIGINT (Ctrl-C) and SIGTERM (what `ros2 launch` escalates to) alike: the open episode is
    closed as incomplete, readable, and the recorder exits 0."""
    out = tmp_path / "bags"
    rec = procs.NodeProcess(recorder_spec(out), tmp_path / "logs")
    try:
        wait_up(client, rec)
        bag = Path(client.start_episode("curved_reach", seed=3, episode_id=3, source="teleop"))
        sent = publisher.run(3, 150, 250)
        wait_written(client, sent)
        rec.proc.send_signal(sig)                            # mid-episode
        code, log = wait_exit(rec), rec.log()
    finally:
        rec.stop()
    assert code == 0, log[-2000:]
    assert not bagread.needs_recovery(bag)                   # closed cleanly: footer + metadata
    meta = episode_yaml(bag)
    assert meta["complete"] is False and meta["outcome"] == f"interrupted ({sig.name})"
    assert meta["source"] == "teleop" and meta["counts"] == {**sent, "/dagger/frame_tag": 0}
    msgs = read_independent(bag)
    check_values(msgs, 3, 150)


def test_disk_full_fails_the_episode_clearly_and_keeps_earlier_ones(tmp_path, publisher, client):
    """RLIMIT_FSIZE: the kernel refuses writes past 300 kB (EFBIG), like a full disk."""
    out = tmp_path / "bags"
    spec = recorder_spec(out, compression="none")
    cmd = procs.executable_path(spec.executable) + procs.ros_args(spec)
    log = open(tmp_path / "recorder.log", "wb")

    def limit():
        procs.default_stop_signals()         # as NodeProcess: SIGINT works under `pytest &` too
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
    rec = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        wait_up(client, rec)
        first = Path(client.start_episode("curved_reach", seed=0, episode_id=0))
        wait_written(client, publisher.run(0, 50, 250))
        assert client.stop_episode(task_success=True).success
        client.start_episode("curved_reach", seed=1, episode_id=1)
        publisher.run(1, 1500, 500)                           # ~600 kB uncompressed
        st = client.wait_recorder(lambda s: s["state"] == "error", WAIT, "write error reported")
        assert "File too large" in st["last_error"] and sum(st["lost"].values()) > 0
        resp = client.call(StopEpisode, STOP_EPISODE, StopEpisode.Request(), check_success=False)
        assert not resp.success and "write failed" in resp.message
        # the recorder keeps serving: the next (small) episode records normally
        nxt = Path(client.start_episode("curved_reach", seed=2, episode_id=2))
        sent = publisher.run(2, 20, 250)
        wait_written(client, sent)
        assert client.stop_episode(task_success=True).messages_written == sum(sent.values())
        assert episode_yaml(nxt)["complete"] is True
    finally:
        rec.send_signal(signal.SIGINT)
        try:
            wait_or_kill(rec, WAIT, "recorder after SIGINT")
        finally:
            log.close()
    assert episode_yaml(first)["complete"] is True and not bagread.needs_recovery(first)
    check_values(read_independent(first), 0, 50)


def test_records_a_best_effort_publisher(tmp_path, client):
    """A publisher offering best effort (camera drivers, sensor data) never matches a reliable
    subscription: the recorder sees the offered QoS and subscribes that topic best effort (the
    reliable topics stay reliable), and its messages end up in the bag."""
    out = tmp_path / "bags"
    rec = procs.NodeProcess(recorder_spec(out), tmp_path / "logs")
    pub = Publisher(["--best-effort", "/joint_states"])
    reliable = ("/task_state", CMD_TOPIC)
    try:
        wait_up(client, rec)
        pub.wait_ready()                 # each of its writers matched a reader: the recorder's
        st = client.wait_recorder(lambda s: s["qos"]["/joint_states"] == "best_effort"
                                  and s["publishers"]["/joint_states"] == 1, WAIT,
                                  "/joint_states subscribed best effort and matched")
        assert [st["qos"][t] for t in reliable] == ["reliable", "reliable"], st["qos"]
        bag = Path(client.start_episode("curved_reach", seed=4, episode_id=4))
        sent = pub.run(4, 100, 100)
        # the reliable topics arrive whole; best effort may drop under load, so the test waits
        # for what the reliable ones carry (sent after each joint state) and then checks that
        # what did arrive of /joint_states is exact
        client.wait_recorder(lambda s: all((s["episode"] or {}).get("written", {}).get(t) == sent[t]
                                           for t in reliable), WAIT, f"episode written: {sent}")
        assert client.stop_episode(task_success=True).success
        log = rec.log()
    finally:
        pub.close()
        code = rec.stop()
    assert code == 0 and "/joint_states: subscription now best_effort" in log, log[-2000:]
    msgs = read_independent(bag)
    assert [len(msgs.get(t, [])) for t in reliable] == [sent[t] for t in reliable]
    js = msgs.get("/joint_states", [])
    assert js, "nothing of the best-effort publisher in the bag"
    ks = [round((m.header.stamp.sec + m.header.stamp.nanosec * 1e-9) / DT) for m in js]
    assert ks == sorted(set(ks)) and 0 <= ks[0] and ks[-1] < sent["/joint_states"], ks
    for k, m in zip(ks, js):
        assert np.array_equal(m.position, joint_pos(4, k)) and np.array_equal(m.velocity, joint_vel(4, k)), k
    offered = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
               for t in yaml.safe_load((bag / "metadata.yaml").read_text())
               ["rosbag2_bagfile_information"]["topics_with_message_count"]}
    assert "best_effort" in str(offered["/joint_states"]).lower(), offered["/joint_states"]


def test_startup_errors_are_clear(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    unwritable = procs.NodeProcess(recorder_spec(blocker / "bags"), tmp_path / "l1")
    unknown = procs.NodeProcess(recorder_spec(tmp_path / "ok", extra_topics=[
        "/task_state:bc_msgs/msg/TaskState", "/gripper:no_such_pkg/msg/Gripper"]), tmp_path / "l2")
    assert wait_exit(unwritable) == 1 and wait_exit(unknown) == 1
    log = unwritable.log()
    assert "output_dir" in log and str(blocker / "bags") in log and "not writable" in log, log
    log = unknown.log()
    assert "/gripper" in log and "no_such_pkg/msg/Gripper" in log, log
