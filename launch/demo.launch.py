"""Simulated arm driven by a trained policy, with the recorder: bridge + expert (label service
only) + policy node + recorder. The policy defaults to models/policies/<robot>_<task>.onnx.

Every argument is described: ros2 launch bc_policy_node demo.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("demo")
