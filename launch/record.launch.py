"""Episode recorder for the topics a contract names (sim or a real ros2_control robot).

Every argument is described: ros2 launch bc_policy_node record.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("record")
