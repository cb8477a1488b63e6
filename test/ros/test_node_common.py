"""`nodes.common.run_node` in real processes over real DDS: SIGTERM (what `ros2 launch`
escalates to) shuts every node down exactly like SIGINT, exit code 0.

The recorder's bag finalization on SIGTERM mid-episode is tested in test_recorder_node.py
(test_signal_finalizes_the_open_episode). Waits are bounded conditions that fail with a
message; no assertion depends on a duration.
"""
import signal
import subprocess

import pytest

rclpy = pytest.importorskip("rclpy")

from rcl_interfaces.srv import ListParameters  # noqa: E402

from bc_policy_node.graph import policy_nodes, sim_nodes  # noqa: E402
from bc_policy_node.pipeline.graph_client import GraphClient, GraphError  # noqa: E402
from bc_policy_node.procs import NodeProcess  # noqa: E402

pytestmark = pytest.mark.ros
WAIT = 60.0     # s; generous deadline for conditions (never asserted as a duration)


def wait_exit(node: NodeProcess, timeout: float = WAIT) -> int:
    try:
        return node.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{node.spec.name} did not exit within {timeout:g} s of SIGTERM:\n{node.log()[-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_nodes_exit_cleanly_on_a_signal(tmp_path, sig):
    """Bridge, expert and policy node (lifecycle, own control thread) spinning: one signal each
    -> the shutdown path of run_node ("<SIG>: shutting down"), exit code 0."""
    specs = sim_nodes() + policy_nodes()
    nodes = [NodeProcess(s, tmp_path / s.name) for s in specs]
    try:
        with GraphClient("node_common_test_client") as client:
            def alive():
                for n in nodes:
                    if not n.alive():
                        pytest.fail(f"{n.spec.name} died at start:\n{n.log()[-3000:]}")
            client.check = alive
            for n in nodes:   # a parameter service answers only once the node's executor spins
                client.call(ListParameters, f"/{n.spec.name}/list_parameters", ListParameters.Request(),
                            timeout=WAIT, check_success=False)
        for n in nodes:
            n.proc.send_signal(sig)
        codes = {n.spec.name: wait_exit(n) for n in nodes}
        for n in nodes:
            log = n.log()
            assert codes[n.spec.name] == 0, f"{n.spec.name} exit {codes[n.spec.name]}:\n{log[-3000:]}"
            assert f"{sig.name}: shutting down" in log, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
    finally:
        for n in nodes:
            n.stop()


def test_a_second_graph_on_the_same_domain_is_refused_with_the_remedy(tmp_path):
    """Two bridges named mujoco_bridge on one ROS_DOMAIN_ID (two bc-policy runs, or a run beside
    a launch): the client's service wait names the clash and the remedy instead of talking to
    whichever bridge answers."""
    bridge = sim_nodes(drive=False)[0]
    nodes = [NodeProcess(bridge, tmp_path / f"bridge{i}") for i in range(2)]
    try:
        with GraphClient("node_common_clash_client") as client:
            client.wait_until(lambda: [n for n, ns in client.node.get_node_names_and_namespaces()
                                       if ns == "/"].count("mujoco_bridge") == 2, WAIT,
                              "both bridges to be discovered")
            with pytest.raises(GraphError, match=r"found twice on ROS_DOMAIN_ID=\d+: /mujoco_bridge.*"
                                                 r"ROS_DOMAIN_ID=<0-101>"):
                client.wait_for_services(["/mujoco_bridge/reset"], timeout=WAIT)
    finally:
        for n in nodes:
            n.stop()
