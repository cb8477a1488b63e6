"""Plain-Python twins of the ROS messages the pipeline exchanges (numpy only).

The in-process simulator produces these, the bridge converts them 1:1 into ROS messages
(same field names), and the contract's observation assembler reads fields by name from
either kind. One extraction path for recording, training and deployment means no
train/serve skew between the in-process evaluator and the ROS graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import List

import numpy as np

# Who produced the executed action of a frame (bc_msgs/FrameTag.actor uses the same codes).
ACTOR_EXPERT = 0
ACTOR_POLICY = 1
ACTOR_INTERVENTION = 2
ACTOR_NAMES = {ACTOR_EXPERT: "expert", ACTOR_POLICY: "policy", ACTOR_INTERVENTION: "intervention"}

# Episode status strings (bc_msgs/TaskState.status).
STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_COLLISION = "collision"
STATUS_TIMEOUT = "timeout"
STATUS_DIVERGED = "diverged"


@dataclass
class JointStateData:
    """Mirror of sensor_msgs/JointState (stamp in seconds instead of a Header)."""

    stamp: float
    name: List[str]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class TaskStateData:
    """Mirror of bc_msgs/TaskState (stamp in seconds instead of a Header).

    goal: the current target in task space (for multi-waypoint tasks: the active waypoint).
    obstacle: [x, y, (z,) radius] of the task's obstacle, empty when there is none.
    waypoints: all waypoints flattened row-major (n x dim), empty for single-goal tasks.
    mode: the expert's latent mode for multimodal tasks (-1 unknown/none, 0 / 1 sides).
    """

    stamp: float
    task: str
    episode_id: int
    seed: int
    variant: str
    goal: np.ndarray
    obstacle: np.ndarray
    waypoints: np.ndarray
    phase: int
    num_phases: int
    mode: int
    step: int
    status: str
    success: bool
    done: bool
    reason: str
    ee_position: np.ndarray


def json_default(o):
    """`json.dumps(default=...)` for the package's data: numpy scalars and arrays, paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, PurePath):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@dataclass
class ImageData:
    """Mirror of sensor_msgs/Image (stamp in seconds instead of a Header); `data` row-major bytes."""

    stamp: float
    height: int
    width: int
    encoding: str
    step: int
    data: bytes
    is_bigendian: int = 0


@dataclass
class CompressedImageData:
    """Mirror of sensor_msgs/CompressedImage: `format` ("jpeg", "png", "rgb8; jpeg compressed bgr8", ...)."""

    stamp: float
    format: str
    data: bytes
