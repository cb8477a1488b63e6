"""ament_python package bc_policy_node (the version lives in package.xml only)."""
import os
import re
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "bc_policy_node"
HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "package.xml")) as f:
    VERSION = re.search(r"<version>([^<]+)</version>", f.read()).group(1).strip()


def tree(folder, patterns=("*",)):
    """data_files entries installing `folder` (recursively) into share/<pkg>/<folder>."""
    entries = {}
    for root, dirs, _files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        files = sorted(f for p in patterns for f in glob(os.path.join(root, p)) if os.path.isfile(f))
        if files:
            entries[os.path.join("share", PACKAGE, root)] = files
    return sorted(entries.items())


NODES = {
    "mujoco_bridge": "bc_policy_node.nodes.mujoco_bridge:main",
    "expert_node": "bc_policy_node.nodes.expert_node:main",
    "recorder_node": "bc_policy_node.nodes.recorder_node:main",
    "policy_node": "bc_policy_node.nodes.policy_node:main",
    "dagger_node": "bc_policy_node.nodes.dagger_node:main",
}

setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch", ("*.py",)),
        *tree("config", ("*.yaml", "*.xml")),
        *tree("models", ("*.xml", "*.onnx", "*.json", "*.md")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="bc_policy_node maintainers",
    maintainer_email="maintainers@bc-policy-node.dev",
    description="Behavioral cloning for robot arms, ROS 2-native (record, train, export ONNX, deploy, DAgger).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {target}" for name, target in NODES.items()]
        + ["bc-policy = bc_policy_node.cli:main"],
    },
)
