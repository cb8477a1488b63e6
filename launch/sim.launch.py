"""MuJoCo bridge + scripted expert (demonstrations, or the expert's label service with drive:=false).

Meta-World: robot:=sawyer task:=metaworld/<name> (any v3 task with a scripted policy): the bridge's
Meta-World backend and the expert node serving that task's scripted policy.

Every argument is described: ros2 launch bc_policy_node sim.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("sim")
