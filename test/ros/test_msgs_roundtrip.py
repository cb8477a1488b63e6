"""Every bc_msgs message and service round-trips between two processes over real DDS."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
M = pytest.importorskip("bc_msgs.msg")
S = pytest.importorskip("bc_msgs.srv")

from child_io import kill, read_line  # noqa: E402
from msgfill import fill  # noqa: E402
from roundtrip_peer import MSGS, SEED, SRVS  # noqa: E402

pytestmark = pytest.mark.ros
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def peer():
    proc = subprocess.Popen([sys.executable, str(HERE / "roundtrip_peer.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = read_line(proc, 60.0, "roundtrip_peer.py start-up")
    assert line.strip() == "ready", f"roundtrip_peer.py said {line!r}"
    yield proc
    proc.terminate()
    try:   # communicate() drains the pipe: a peer blocked on a full stdout could never exit
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:   # a slow DDS teardown is not what this module tests
        kill(proc)


@pytest.fixture(scope="module")
def node():
    rclpy.init()
    n = rclpy.create_node("bc_msgs_roundtrip_client")
    yield n
    n.destroy_node()
    rclpy.shutdown()


def test_interface_package_has_what_the_pipeline_needs():
    assert {"ActionChunk", "PolicyStatus", "TaskState", "FrameTag"} <= set(MSGS)
    assert {"ResetEpisode", "StartEpisode", "StopEpisode", "QueryExpert", "LoadPolicy", "StepSim"} <= set(SRVS)


@pytest.mark.parametrize("name", MSGS)
def test_message_round_trip(peer, node, name):
    cls = getattr(M, name)
    sent = fill(cls, SEED)
    got = []
    sub = node.create_subscription(cls, f"/rt/{name}/echo", got.append, 10)
    pub = node.create_publisher(cls, f"/rt/{name}", 10)
    deadline = time.monotonic() + 30.0
    while not got and time.monotonic() < deadline:
        if pub.get_subscription_count() > 0:
            pub.publish(sent)
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_subscription(sub)
    node.destroy_publisher(pub)
    assert got, f"{name}: nothing came back from the peer process"
    assert got[0] == sent
    assert got[0] != cls()  # the filled message is not just defaults


@pytest.mark.parametrize("name", SRVS)
def test_service_round_trip(peer, node, name):
    cls = getattr(S, name)
    client = node.create_client(cls, f"/rt/{name}")
    assert client.wait_for_service(timeout_sec=30.0), f"{name}: service not discovered"
    future = client.call_async(fill(cls.Request, SEED))
    rclpy.spin_until_future_complete(node, future, timeout_sec=30.0)
    node.destroy_client(client)
    assert future.done(), f"{name}: no response"
    assert future.result() == fill(cls.Response, SEED), "request or response altered in transit"
