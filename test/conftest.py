"""Session-wide test environment: DDS on loopback, a private ROS domain and log dir per run.

This runs before any test module imports rclpy, so every ROS context started by the tests
(in-process or in child processes, which inherit os.environ) stays on this machine.
"""
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
if os.environ.get("ROS_DISTRO") == "humble":
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
# A fresh domain per session so parallel runs on one machine never cross-talk.
os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little")).randint(1, 100))
_tmp = tempfile.mkdtemp(prefix="bcp-test-ros-")
os.environ["ROS_HOME"] = _tmp
os.environ["ROS_LOG_DIR"] = os.path.join(_tmp, "log")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
