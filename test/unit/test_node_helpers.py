"""nodes.common helpers without a ROS graph: message_class, ThrottledLog, diagnostics,
JSON status, the run-time parameter guard (run_node itself, in real processes: test/ros/test_node_common.py)."""
from dataclasses import dataclass

import pytest

pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

from bc_policy_node.core.params import doc  # noqa: E402
from bc_policy_node.nodes import common  # noqa: E402


def test_message_class_resolves_both_spellings_and_names_what_is_wrong():
    from sensor_msgs.msg import JointState
    assert common.message_class("sensor_msgs/msg/JointState") is JointState
    assert common.message_class("/sensor_msgs/JointState") is JointState
    for bad, text in (("JointState", "not of the form"), ("a/srv/B", "not of the form"),
                      ("no_such_pkg/msg/X", "no_such_pkg"), ("sensor_msgs/msg/Nope", "'Nope'")):
        with pytest.raises(ValueError, match=text):
            common.message_class(bad)


def test_conversions_re_exports_the_one_message_class():
    from bc_policy_node.nodes import conversions
    assert conversions.message_class is common.message_class


class FakeLogger:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(("warn", text))

    def error(self, text):
        self.lines.append(("error", text))


def test_throttled_log_gates_each_key_on_its_own(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: now[0])
    log = FakeLogger()
    t = common.ThrottledLog(log, 2.0)
    assert t.warning("a", "a1") and t.warning("b", "b1")       # different keys: both pass
    assert not t.warning("a", "a2") and not t.error("b", "b2")
    now[0] += 1.999
    assert not t.warning("a", "a3")
    now[0] += 0.002
    assert t.error("a", "a4") and t.warning("b", "b5")
    assert log.lines == [("warn", "a1"), ("warn", "b1"), ("error", "a4"), ("warn", "b5")]


def test_diagnostic_array_formats_values_like_the_nodes_did():
    from builtin_interfaces.msg import Time
    arr = common.diagnostic_array(Time(sec=3, nanosec=4), "n: what", common.WARN, "msg", "arm",
                                  {"f": 1.23456789, "i": 7, "s": "x", "b": True})
    (st,) = arr.status
    assert (arr.header.stamp.sec, arr.header.stamp.nanosec) == (3, 4)
    assert (st.name, st.level, st.message, st.hardware_id) == ("n: what", common.WARN, "msg", "arm")
    assert [(kv.key, kv.value) for kv in st.values] == [("f", "1.23457"), ("i", "7"), ("s", "x"), ("b", "True")]


@dataclass(frozen=True)
class _Params:
    a: float = doc("set at run time", 1.0, runtime=True)
    b: float = doc("static", 2.0)


@dataclass(frozen=True)
class _Static:
    c: int = doc("static", 0)


def test_refuse_static_parameters_follows_the_runtime_flag():
    ok = [Parameter("a", value=3.0), Parameter("use_sim_time", value=True)]
    assert common.refuse_static_parameters(ok, _Params) is None
    r = common.refuse_static_parameters([Parameter("a", value=3.0), Parameter("b", value=1.0)], _Params,
                                        " (live)")
    assert not r.successful and r.reason == "b is read once at startup; only a (live) changes at run time"
    r = common.refuse_static_parameters([Parameter("c", value=1)], _Static)
    assert not r.successful and "c is read once at startup" in r.reason
