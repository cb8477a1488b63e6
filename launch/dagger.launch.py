"""Expert-query node between a running policy and the robot: the policy's commands are remapped to
the dagger node, which lets the expert (or a human via ~/intervention) act by the chosen gate and
tags every frame on /dagger/frame_tag. Start the robot (or sim.launch.py with drive:=false and
mode:=lockstep) and record.launch.py alongside.

Every argument is described: ros2 launch bc_policy_node dagger.launch.py --show-args
"""
from bc_policy_node.launch_helpers import generate


def generate_launch_description():
    return generate("dagger")
