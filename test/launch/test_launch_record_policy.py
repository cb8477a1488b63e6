"""launch_pytest: the individual record.launch.py and policy.launch.py (as on a real robot), here
next to sim.launch.py with the expert not driving: the policy commands, the recorder records an
episode on request, every node exits cleanly. Skipped where the launch stack is not installed."""
import threading
import time

import pytest

launch_pytest = pytest.importorskip("launch_pytest")
pytest.importorskip("launch_ros")

import rclpy  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import PolicyStatus  # noqa: E402
from bc_msgs.srv import StartEpisode, StopEpisode  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from launch_common import include_many  # noqa: E402

pytestmark = [pytest.mark.launch, pytest.mark.ros]
EXITS = {}


@launch_pytest.fixture
def robot_launch(tmp_path_factory):
    bags = tmp_path_factory.mktemp("bags")
    return include_many([("sim", {"drive": "false"}), ("record", {"output_dir": str(bags)}),
                         ("policy", {"use_sim_time": "true"})], EXITS)


def _call(node, srv, name, req):
    client = node.create_client(srv, name)
    assert client.wait_for_service(timeout_sec=30.0), f"{name} missing"
    future = client.call_async(req)
    deadline = time.monotonic() + 30.0
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert future.done(), f"{name}: no answer"
    return future.result()


@pytest.mark.launch(fixture=robot_launch)
def test_record_and_policy_launch_files_run_together():
    rclpy.init()
    node = rclpy.create_node("launch_robot_probe")
    got = {"cmd": 0, "status": None}
    node.create_subscription(Float64MultiArray, "/forward_position_controller/commands",
                             lambda m: got.__setitem__("cmd", got["cmd"] + 1), qos.COMMAND)
    node.create_subscription(PolicyStatus, "/policy/status", lambda m: got.__setitem__("status", m), qos.STATUS)
    spin = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
    spin.start()
    try:
        start = _call(node, StartEpisode, "/recorder/start_episode",
                      StartEpisode.Request(task="curved_reach", seed=0, episode_id=1, source="policy"))
        assert start.success, start.message
        deadline = time.monotonic() + 60.0
        while got["cmd"] < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got["cmd"] >= 20, f"policy commands: {got['cmd']} (status {got['status']})"
        stop = _call(node, StopEpisode, "/recorder/stop_episode", StopEpisode.Request(outcome="test"))
        assert stop.success and stop.messages_written > 0, stop.message
    finally:
        rclpy.shutdown()
        spin.join(timeout=5)
    yield
    assert len(EXITS) >= 4 and all(code == 0 for code in EXITS.values()), EXITS
