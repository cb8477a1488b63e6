"""The colcon-installed package exposes its executables and data where ros2 run / launch look."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "install"
EXECUTABLES = ["mujoco_bridge", "expert_node", "recorder_node", "policy_node", "dagger_node", "bc-policy"]


@pytest.fixture(scope="module")
def prefix():
    if not (INSTALL / "bc_policy_node").is_dir():
        pytest.skip("not built with colcon (run scripts/setup.sh)")
    return INSTALL / "bc_policy_node"


@pytest.mark.parametrize("exe", EXECUTABLES)
def test_executables_in_lib_package_dir(prefix, exe):
    path = prefix / "lib" / "bc_policy_node" / exe
    assert path.is_file() and os.access(path, os.X_OK)


def test_share_has_manifest_and_data(prefix):
    share = prefix / "share" / "bc_policy_node"
    assert (share / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "bc_policy_node").is_file()
    for folder in ("config", "launch", "models"):
        src = sorted(p.relative_to(ROOT) for p in (ROOT / folder).rglob("*")
                     if p.is_file() and p.suffix in {".py", ".yaml", ".xml", ".onnx", ".json", ".md"}
                     and "__pycache__" not in p.parts)
        for rel in src:
            assert (share / rel).exists(), f"{rel} is not installed under share/bc_policy_node"


def test_ament_index_finds_both_packages(prefix):
    code = ("from ament_index_python.packages import get_package_share_directory as g; "
            "print(g('bc_policy_node')); print(g('bc_msgs'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0].endswith("share/bc_policy_node") and lines[1].endswith("share/bc_msgs")


def test_one_version_in_both_manifests():
    import re
    import bc_policy_node
    xml = (ROOT / "package.xml").read_text()
    v = re.search(r"<version>([^<]+)</version>", xml).group(1)
    assert bc_policy_node.__version__ == v
    assert re.search(r"<version>([^<]+)</version>", (ROOT / "bc_msgs" / "package.xml").read_text()).group(1) == v
    out = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == v
