"""Bags the package did not write: rosbags' own writer (sqlite3 and MCAP), no metadata of ours.

Every bag here is written with `rosbags.rosbag2.Writer` (never with bagio), as `ros2 bag
record` would leave it: one session, several demonstrations separated by idle time, with a
Bool episode marker, TaskState episode ids, and the service-event logs of a Trigger `/reset`
and a SetBool `/record` (Jazzy service introspection). Values are checked exactly.
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from bc_policy_node.cli import main as cli
from bc_policy_node.core.data import bagread
from bc_policy_node.core.data.dataset_builder import build_dataset, episodes_from_bag
from bc_policy_node.core.data.episodes import Dataset
from bc_policy_node.core.data.segment import SplitError, SplitRule

from test_dataset_builder import (CMD, RATE, TOPICS, T0, cmd, contract, expected_obs, js,  # noqa: E402
                                  lockstep_bag, ts)

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
DEMOS = (30, 45, 25)          # frames per demonstration
IDLE_S = 1.0                  # between demonstrations: sensors on, no commands
LEAD = 10                     # idle frames before the first demonstration

_SRV = {
    "std_srvs/srv/Trigger_Request": "uint8 structure_needs_at_least_one_member",
    "std_srvs/srv/Trigger_Response": "bool success\nstring message",
    "std_srvs/srv/Trigger_Event": "service_msgs/msg/ServiceEventInfo info\n"
                                  "std_srvs/srv/Trigger_Request[<=1] request\n"
                                  "std_srvs/srv/Trigger_Response[<=1] response",
    "std_srvs/srv/SetBool_Request": "bool data",
    "std_srvs/srv/SetBool_Response": "bool success\nstring message",
    "std_srvs/srv/SetBool_Event": "service_msgs/msg/ServiceEventInfo info\n"
                                  "std_srvs/srv/SetBool_Request[<=1] request\n"
                                  "std_srvs/srv/SetBool_Response[<=1] response",
}


def foreign_store():
    """A typestore of the writer's own (Jazzy + bc_msgs + the std_srvs event types)."""
    from bc_policy_node.core.data.rostypes import BC_MSGS_DIR

    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for f in sorted(BC_MSGS_DIR.glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"bc_msgs/msg/{f.stem}"))
    for name, text in _SRV.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def _srv(name):
    """rosbags (0.11.9) files `pkg/srv/X` types under `pkg/srv/msg/X`: same CDR bytes."""
    return name.replace("/srv/", "/srv/msg/")


def _event(store, srv, seq, event_type, stamp_ns, data=None, response=False):
    info = store.types["service_msgs/msg/ServiceEventInfo"](
        event_type=event_type, stamp=store.types["builtin_interfaces/msg/Time"](
            sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        client_gid=np.arange(16, dtype=np.uint8), sequence_number=seq)
    req_t, resp_t = store.types[_srv(f"std_srvs/srv/{srv}_Request")], store.types[_srv(f"std_srvs/srv/{srv}_Response")]
    req = [req_t(data=data) if srv == "SetBool" else req_t(structure_needs_at_least_one_member=0)]
    resp = [resp_t(success=True, message="")] if response else []
    return store.types[_srv(f"std_srvs/srv/{srv}_Event")](info=info, request=req if not response else [],
                                                     response=resp)


def session_bag(path, storage="sqlite3", demos=DEMOS, with_task_state=True):
    """One recording session as `ros2 bag record` leaves it. Returns [(first k, n)] per demo."""
    store = foreign_store()
    w = Writer(path, version=9, storage_plugin=STORAGES[storage])
    w.open()
    topics = dict(TOPICS, **{"/episode_marker": "std_msgs/msg/Bool",
                             "/reset/_service_event": "std_srvs/srv/Trigger_Event",
                             "/record/_service_event": "std_srvs/srv/SetBool_Event"})
    if not with_task_state:
        topics.pop("/task_state")
    # service events as rosbag2 (Jazzy) records them: no .msg exists for <Srv>_Event, so the
    # definition is left empty ("unknown"); the type hash is stored
    conns = {t: (w.add_connection(t, ty, msgdef="", rihs01="RIHS01_" + "ab" * 32) if "/srv/" in ty
                 else w.add_connection(t, ty, typestore=store)) for t, ty in topics.items()}
    put = lambda topic, t_ns, msg: w.write(conns[topic], int(t_ns),  # noqa: E731
                                           bytes(store.serialize_cdr(msg, _srv(topics[topic]))))
    from bc_policy_node.core.data.rostypes import to_ros

    ros = lambda typ, obj: to_ros(typ, obj, store)  # noqa: E731
    k, t, spans, seq = 0, T0, [], 0
    idle_frames = [LEAD] + [int(IDLE_S * RATE)] * (len(demos) - 1) + [5]
    active = False

    def frame(episode_id, command):
        nonlocal k, t
        recv = int(round(t * 1e9))
        put("/joint_states", recv + 400_000, ros(TOPICS["/joint_states"], js(k, t)))
        if with_task_state:
            put("/task_state", recv + 450_000, ros(TOPICS["/task_state"],
                                                   dict(vars(ts(k, t)), episode_id=episode_id)))
        if command:
            put(CMD, recv + 3_000_000, ros(TOPICS[CMD], {"data": cmd(k)}))
        if k % 10 == 0:       # the marker is repeated, not only sent at the edges
            put("/episode_marker", recv + 100_000, store.types["std_msgs/msg/Bool"](data=active))
        k += 1
        t += 1.0 / RATE

    def calls(t_ns, on):
        nonlocal seq
        seq += 1
        for i, (typ, resp) in enumerate(((0, False), (1, False), (2, True), (3, True))):
            put("/record/_service_event", t_ns + i * 1000, _event(store, "SetBool", seq, typ, t_ns, on, resp))
            if on:
                put("/reset/_service_event", t_ns + i * 1000, _event(store, "Trigger", seq, typ, t_ns, None, resp))

    for i, n in enumerate(demos):
        for _ in range(idle_frames[i]):
            frame(i if i else 0, False)       # idle: the previous episode's id (0 before the first)
        start = int(round(t * 1e9)) - 5_000_000
        active = True
        put("/episode_marker", start, store.types["std_msgs/msg/Bool"](data=True))
        calls(start, True)
        spans.append((k, n))
        for _ in range(n):
            frame(i + 1, True)
        active = False
        stop = int(round((t - 1.0 / RATE) * 1e9)) + 5_000_000
        put("/episode_marker", stop, store.types["std_msgs/msg/Bool"](data=False))
        calls(stop, False)
    for _ in range(idle_frames[-1]):
        frame(len(demos), False)
    w.close()
    return spans


def tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(d).rglob("*")):
        h.update(str(f.relative_to(d)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def one_demo_bag(path, storage, n=40):
    """A single demonstration, nothing else (the simplest foreign bag)."""
    store = foreign_store()
    w = Writer(path, version=9, storage_plugin=STORAGES[storage])
    w.open()
    conns = {t: w.add_connection(t, ty, typestore=store) for t, ty in TOPICS.items()}
    from bc_policy_node.core.data.rostypes import to_ros

    for k in range(n):
        t = T0 + k / RATE
        recv = int(round(t * 1e9))
        for topic, obj, dt in (("/joint_states", js(k, t), 400_000), ("/task_state", ts(k, t), 450_000),
                               (CMD, {"data": cmd(k)}, 3_000_000)):
            w.write(conns[topic], recv + dt, bytes(store.serialize_cdr(to_ros(TOPICS[topic], obj, store), TOPICS[topic])))
    w.close()
    return path


# ------------------------------------------------------------------------------ one bag, one episode
@pytest.mark.parametrize("storage", sorted(STORAGES))
def test_foreign_bag_builds_exactly_in_both_storages(tmp_path, storage):
    bag = one_demo_bag(tmp_path / "bags" / f"rec_{storage}", storage)
    assert bagread.storage_id(bag) == storage and not bagread.is_ours(bag)
    assert not bagread.needs_recovery(bag)
    before = tree_digest(bag)
    assert bagread.recover_all([tmp_path / "bags"]) == []          # nothing of ours to recover
    ds, rep = build_dataset([tmp_path / "bags"], contract(), recover=True)
    (e,) = rep["episodes"]
    assert e["status"] == "included", e.get("reasons")
    assert e["source"] == "foreign" and e["foreign"] is True and e["complete"] is None
    (ep,) = ds.episodes
    assert len(ep) == 40 and ep.meta["source"] == "foreign"
    assert np.array_equal(ep.obs, np.stack([expected_obs(k, k) for k in range(40)]))
    assert np.array_equal(ep.act, np.stack([cmd(k) for k in range(40)]))
    assert tree_digest(bag) == before                             # never rewritten


def test_sqlite3_bag_left_open_is_reported_with_rosbag2s_remedy_and_untouched(tmp_path):
    bag = one_demo_bag(tmp_path / "bags" / "rec", "sqlite3")
    (bag / "metadata.yaml").unlink()                               # writer killed before close
    before = tree_digest(bag)
    assert bagread.find_bags([tmp_path / "bags"]) == [bag]         # found, not silently skipped
    assert not bagread.needs_recovery(bag) and bagread.recover_all([tmp_path / "bags"]) == []
    with pytest.raises(bagread.BagReadError, match="ros2 bag reindex"):
        bagread.recover_bag(bag)
    ds, rep = build_dataset([bag], contract(), recover=True)
    assert len(ds) == 0 and "ros2 bag reindex" in rep["episodes"][0]["reasons"][0]
    assert tree_digest(bag) == before


def test_our_crashed_bag_still_needs_recovery_next_to_foreign_ones(tmp_path):
    from bc_policy_node.core.data.bagio import EpisodeBagWriter

    one_demo_bag(tmp_path / "a_sqlite", "sqlite3", n=20)
    lockstep_bag(tmp_path / "b_ours", n=20)
    w = EpisodeBagWriter(tmp_path / "c_crashed", TOPICS, {"episode_id": 3})
    w.write(CMD, {"data": cmd(0)}, 1)
    w.flush()
    w._file.close()
    ds, rep = build_dataset([tmp_path], contract())
    status = {Path(e["path"]).name: (e["status"], (e.get("reasons") or [""])[0]) for e in rep["episodes"]}
    assert status["a_sqlite"][0] == status["b_ours"][0] == "included"
    assert status["c_crashed"] == ("excluded", "BagReadError: needs recovery (not closed cleanly); run recover_bag()")
    assert [r["path"] for r in bagread.recover_all([tmp_path])] == [str(tmp_path / "c_crashed")]
    ds, rep = build_dataset([tmp_path], contract())
    assert [e.get("reasons") for e in rep["episodes"]][2] == ["incomplete episode"]


# ------------------------------------------------------------------------------ segmentation
RULES = ["topic:/episode_marker", "topic:/task_state", "service:/record", "gap:0.5"]


@pytest.mark.parametrize("storage", sorted(STORAGES))
@pytest.mark.parametrize("rule", RULES)
def test_long_bag_split_into_exact_demonstrations(tmp_path, storage, rule):
    bag = tmp_path / f"session_{storage}"
    spans = session_bag(bag, storage)
    ds, rep = build_dataset([bag], contract(), split_by=rule)
    inc = [e for e in rep["episodes"] if e["status"] == "included"]
    assert [e["frames"] for e in inc] == list(DEMOS), [(e["segment"], e.get("reasons")) for e in rep["episodes"]]
    assert rep["split_by"] == rule
    for ep, e, (k0, n) in zip(ds.episodes, inc, spans):
        assert np.array_equal(ep.act, np.stack([cmd(k) for k in range(k0, k0 + n)]))
        assert np.array_equal(ep.obs[:, :3], np.stack([expected_obs(k, k)[:3] for k in range(k0, k0 + n)]))
        seg = e["segment"]
        first_cmd = int(round((T0 + k0 / RATE) * 1e9)) + 3_000_000
        last_cmd = int(round((T0 + (k0 + n - 1) / RATE) * 1e9)) + 3_000_000
        assert seg["start_ns"] <= first_cmd and last_cmd < seg["end_ns"], seg
        assert seg["cut_start"] and seg["cut_end"] and seg["rule"] == rule
        assert ep.meta["segment"] == seg and ep.meta["source"] == "foreign"
        assert e["path"].startswith(str(bag) + "#")
    # windows never overlap
    segs = [e["segment"] for e in rep["episodes"]]
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(segs, segs[1:]))
    if rule == "topic:/task_state":
        assert [ep.meta["episode_id"] for ep in ds.episodes] == [1, 2, 3]
        assert "episode_id 1 -> 2" in inc[0]["segment"]["cut_end"]
    if rule == "gap:0.5":
        assert inc[0]["segment"]["cut_end"].startswith("idle 1.0")
    if rule == "topic:/episode_marker":
        assert inc[0]["segment"]["cut_start"] == "/episode_marker.data true"


def test_trigger_service_cuts_at_every_call_and_reports_the_lead_in(tmp_path):
    bag = tmp_path / "session"
    session_bag(bag, "mcap")
    ds, rep = build_dataset([bag], contract(), split_by="service:/reset")
    eps = rep["episodes"]
    # lead-in before the first call (no commands) + one window per call
    assert len(eps) == 4 and eps[0]["status"] == "excluded" and "no commands" in eps[0]["reasons"][0]
    assert eps[0]["segment"]["cut_start"] == "start of bag"
    assert [e["frames"] for e in eps[1:]] == list(DEMOS)
    assert eps[-1]["segment"]["cut_end"] == "end of bag"


def test_split_rule_syntax():
    assert SplitRule.parse("topic:/task_state:episode_id") == SplitRule("topic", "/task_state", "episode_id")
    assert SplitRule.parse("gap:0.5").gap_s == 0.5 and str(SplitRule.parse(None)) == "none"
    assert SplitRule.parse("service:/reset").topic == "/reset/_service_event"
    for bad in ("gap:-1", "gap:x", "topic:marker", "bogus:/x", "service:/a:b"):
        with pytest.raises(SplitError):
            SplitRule.parse(bad)


# ------------------------------------------------------------------------------ bad input
def test_unknown_split_topic_and_bag_without_contract_topics(tmp_path):
    bag = tmp_path / "session"
    session_bag(bag, "sqlite3")
    with pytest.raises(SplitError, match="/episode_markr.*not in the bag.*similar: \\['/episode_marker'\\]"):
        episodes_from_bag(bag, contract(), "topic:/episode_markr")
    ds, rep = build_dataset([bag], contract(), split_by="topic:/episode_markr")
    assert len(ds) == 0 and "/episode_markr" in rep["episodes"][0]["reasons"][0]
    with pytest.raises(SplitError, match="no field 'phase_id'.*episode_id"):
        episodes_from_bag(bag, contract(), "topic:/task_state:phase_id")

    other = contract(observation=[{"name": "x", "topic": "/imu", "type": "sensor_msgs/msg/JointState",
                                   "field": "position", "joints": ["a"]}],
                     action={"kind": "joint_position", "topic": "/arm/cmd",
                             "type": "std_msgs/msg/Float64MultiArray", "joints": ["a"],
                             "lower": -1.0, "upper": 1.0, "max_step": 0.1})
    ds, rep = build_dataset([bag], other)
    msg = rep["episodes"][0]["reasons"][0]
    assert "none of the contract's topics" in msg and "/imu" in msg and "/arm/cmd" in msg


def test_cli_build_split_prints_boundaries_and_bad_input_loses_nothing(tmp_path, capsys):
    bag = tmp_path / "bags" / "session"
    session_bag(bag, "sqlite3")
    cfile = tmp_path / "contract.yaml"
    cfile.write_text(yaml.safe_dump(contract().to_dict()))
    out = tmp_path / "ds"
    assert cli(["dataset", "build", str(tmp_path / "bags"), "--contract", str(cfile),
                "--split-by", "gap:0.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "included 3, excluded 0" in text and "split gap:0.5" in text
    assert text.count("idle 1.0") >= 2 and "frames 30" in text and "frames 45" in text
    assert [len(e) for e in Dataset.load(out).episodes] == list(DEMOS)
    saved = tree_digest(out)
    bag_before = tree_digest(bag)

    # no contract in a foreign bag: the error says so
    assert cli(["dataset", "build", str(bag), "--out", str(tmp_path / "x")]) == 1
    assert "--contract" in capsys.readouterr().err
    # unknown split topic: one clear line, exit 1, the existing dataset is not overwritten
    assert cli(["dataset", "build", str(bag), "--contract", str(cfile), "--split-by",
                "topic:/nope", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "/nope" in err and "not in" in err
    assert tree_digest(out) == saved and tree_digest(bag) == bag_before
    # missing directory
    assert cli(["dataset", "build", str(tmp_path / "missing"), "--contract", str(cfile),
                "--out", str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err
    assert "no such bag directory" in err and "missing" in err
    assert not (tmp_path / "y").exists()
