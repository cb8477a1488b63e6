"""procs.NodeProcess with real processes and real signals (no ROS: a stand-in executable).

A node must get SIGINT even when the process that starts it ignores SIGINT (`pytest &` in a
script, nohup wrappers: the ignore is inherited across exec), and stop() must escalate
SIGINT -> SIGTERM -> SIGKILL with bounded waits. No assertion depends on a duration.
"""
import signal
import sys
import time
from pathlib import Path

import pytest

from bc_policy_node import procs
from bc_policy_node.graph import NodeSpec

WAIT = 60.0     # s; deadline for conditions (a hang fails with the log, never blocks)

# Stand-in node: reports the dispositions it started with, then waits (bounded) for a signal.
NODE = """
import signal, sys, time
def name(h):
    return {signal.SIG_IGN: "SIG_IGN", signal.SIG_DFL: "SIG_DFL",
            signal.default_int_handler: "python-default"}.get(h, "other")
print("started", name(signal.getsignal(signal.SIGINT)), name(signal.getsignal(signal.SIGTERM)), flush=True)
mode = sys.argv[1]
if mode == "stubborn":                     # ignores the polite signals: only SIGKILL ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
try:
    deadline = time.monotonic() + 300      # never outlives a lost test run
    while time.monotonic() < deadline:
        time.sleep(0.01)
except KeyboardInterrupt:
    print("KeyboardInterrupt: clean shutdown", flush=True)
    sys.exit(0)
sys.exit(3)
"""


@pytest.fixture
def stand_in(monkeypatch):
    """NodeProcess runs `python -c NODE <mode> --ros-args ...` instead of an installed node."""
    def make(mode, tmp_path):
        monkeypatch.setattr(procs, "executable_path", lambda _name: [sys.executable, "-c", NODE, mode])
        return procs.NodeProcess(NodeSpec(executable="stand_in", name=f"stand_in_{mode}"), tmp_path)
    return make


def wait_log(node, text, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in node.log():
            return node.log()
        if not node.alive():
            break
        time.sleep(0.02)
    node.kill9()
    pytest.fail(f"{node.spec.name}: no {text!r} in its log within {timeout:g} s "
                f"(exit {node.proc.returncode}):\n{node.log_path.read_text()[-2000:]}")


def test_node_gets_sigint_even_if_the_parent_ignores_it(tmp_path, stand_in):
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)     # this test run as if started by `cmd &`
    try:
        node = stand_in("polite", tmp_path)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        log = wait_log(node, "ready")
        # SIG_DFL at exec, so Python installed its KeyboardInterrupt handler
        assert "started python-default SIG_DFL" in log, log
        code = node.stop(timeout=WAIT)                      # SIGINT first
    finally:
        node.kill9() if node.alive() else None
    log = node.log_path.read_text()
    assert code == 0 and "KeyboardInterrupt: clean shutdown" in log, (code, log)


def test_stop_escalates_to_sigkill_when_sigint_and_sigterm_are_ignored(tmp_path, stand_in):
    node = stand_in("stubborn", tmp_path)
    try:
        wait_log(node, "ready")
        code = node.stop(timeout=1.0)
    finally:
        node.kill9() if node.alive() else None
    assert code == -signal.SIGKILL, node.log_path.read_text()


def test_a_policy_graph_without_a_model_takes_the_shipped_one_or_says_there_is_none():
    """Launch files build their nodes from these specs: a task with no shipped policy (any
    Meta-World task) fails at launch with the remedy instead of a node that never configures."""
    from bc_policy_node.graph import dagger_nodes, policy_nodes

    spec = policy_nodes(robot="planar3", task="curved_reach")[0]
    assert Path(spec.parameters["model_path"]).is_file()
    for build in (policy_nodes, dagger_nodes):
        with pytest.raises(ValueError, match=r"no shipped policy for robot 'sawyer', task 'metaworld/reach-v3' "
                                             r"\(no sawyer_metaworld_reach-v3.onnx; shipped: .*planar3_curved_reach"
                                             r".*\): pass model:="):
            build(robot="sawyer", task="metaworld/reach-v3")
    assert policy_nodes(robot="sawyer", task="metaworld/reach-v3", model="/x.onnx")[0].parameters["model_path"] \
        == "/x.onnx"
