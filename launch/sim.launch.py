"""MuJoCo bridge + scripted expert (demonstrations, or the expert's label service with drive:=false).

Meta-World: robot:=sawyer task:=metaworld/<name> starts the bridge alone (no expert node for
these tasks yet; `drive` has no effect); commands come from a policy, dagger or a test.

Every argument is described: ros2 launch bc_policy_node sim.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("sim")
