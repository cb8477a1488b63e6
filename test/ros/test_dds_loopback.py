"""No DDS packet leaves loopback with the project's settings (and the probe would see one)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros
PROBE = Path(__file__).resolve().parent / "netns_probe.py"


def _can_make_netns():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1"],
                          capture_output=True, timeout=60).returncode == 0


needs_netns = pytest.mark.skipif(not _can_make_netns(), reason="needs root + unshare + veth to sniff safely")


def probe(guard: str):
    try:
        out = subprocess.run(["unshare", "-n", sys.executable, str(PROBE), guard],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"netns_probe.py {guard} did not finish within 120 s (killed):\n"
                    f"{str(e.stderr or '')[-2000:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_netns
def test_probe_sees_dds_multicast_without_the_guard():
    # Control: proves the sniffer would catch a leak (the packets stay inside the namespace).
    r = probe("off")
    assert r["received"] > 0
    assert any(k.startswith("239.255.0.1:") for k in r["destinations"]), r


@needs_netns
def test_no_dds_traffic_off_loopback_with_the_guard():
    r = probe("on")
    assert r["received"] > 0, "pub/sub must still work on loopback"
    assert r["udp_packets"] == 0, r["destinations"]
