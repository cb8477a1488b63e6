"""ONNX chunk-policy lifecycle node (sim or a real ros2_control robot; remap topics in the contract).

Every argument is described: ros2 launch bc_policy_node policy.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("policy")
