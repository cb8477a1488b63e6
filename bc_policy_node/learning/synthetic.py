"""Small synthetic demonstration datasets for tests and benchmarks (numpy only, no simulator).

A 3-joint arm moves from a random start configuration to a goal configuration under a
smooth saturating proportional expert, ``q[t+1] = q[t] + max_step * tanh(gain * (q_goal - q[t]) / max_step)``,
so the expert is a function of the observation and chunks are learnable from it. With
``multimodal=True`` every episode starts at the same configuration and the expert sends joint
3 to +0.8 or -0.8 at random (the goal observation does not say which): a unimodal regressor
averages the two solutions at the start, a GMM separates them.
The observation is ``[joint_pos (3), goal (2)]`` and ``act[t]`` is the next joint target.
`synthetic_camera_dataset` hides the goal from the state: the observation is the joint positions
and a small camera frame in which the goal is a bright square (so only an image policy can reach).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.contract import Contract
from ..core.data.episodes import Dataset, Episode

JOINTS = ("j1", "j2", "j3")


def synthetic_contract(chunk_length: int = 20, rate_hz: float = 50.0) -> Contract:
    """A planar3 reach contract: obs = joint positions (3) + 2-D goal, act = 3 joint targets."""
    return Contract.from_dict({
        "contract_version": 1, "name": "synthetic_reach", "robot": "planar3", "task": "synthetic_reach",
        "control_rate_hz": rate_hz, "chunk_length": chunk_length,
        "observation": [
            {"name": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
             "field": "position", "joints": list(JOINTS)},
            {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState", "field": "goal", "size": 2}],
        "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
                   "type": "std_msgs/msg/Float64MultiArray", "joints": list(JOINTS),
                   "lower": [-3.0, -2.6, -2.6], "upper": [3.0, 2.6, 2.6], "max_step": [0.08, 0.08, 0.08]},
    })


def synthetic_camera_contract(chunk_length: int = 20, rate_hz: float = 50.0, height: int = 24,
                               width: int = 32) -> Contract:
    """`synthetic_contract` without the goal term, plus a raw rgb8 camera ``cam`` of height x width."""
    d = synthetic_contract(chunk_length, rate_hz).to_dict()
    d["name"] = "synthetic_reach_camera"
    d["observation"] = [t for t in d["observation"] if t["name"] != "goal"] + [
        {"name": "cam", "kind": "image", "topic": "/camera/cam/image_raw", "type": "sensor_msgs/msg/Image",
         "encoding": "rgb8", "height": height, "width": width}]
    return Contract.from_dict(d)


def goal_frame(goal: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (h, w, 3): dark background, a 4x4 white square centred at the goal (x, y in [-1, 1])."""
    img = np.full((height, width, 3), 30, dtype=np.uint8)
    r = int(round((goal[1] + 1) / 2 * (height - 4)))
    c = int(round((goal[0] + 1) / 2 * (width - 4)))
    img[r:r + 4, c:c + 4] = 255
    return img


def synthetic_episode(rng: np.random.Generator, length: int, rate_hz: float = 50.0,
                      multimodal: bool = False, gain: float = 0.08, max_step: float = 0.05) -> Episode:
    """One demonstration of ``length`` frames."""
    goal = rng.uniform(-1.0, 1.0, size=2)
    if multimodal:
        q = np.zeros(3)
        q_goal = np.array([goal[0], goal[1], 0.8 if rng.random() < 0.5 else -0.8])
    else:
        q = rng.uniform(-0.8, 0.8, size=3)
        q_goal = np.array([goal[0], goal[1], 0.5 * (goal[0] - goal[1])])
    qs = np.empty((length + 1, 3))
    qs[0] = q
    for i in range(length):
        qs[i + 1] = qs[i] + max_step * np.tanh(gain * (q_goal - qs[i]) / max_step)
    obs = np.concatenate([qs[:-1], np.repeat(goal[None], length, axis=0)], axis=1)
    return Episode(obs=obs, act=qs[1:], t=np.arange(length) / rate_hz,
                   meta={"source": "synthetic", "multimodal": multimodal, "success": True})


def synthetic_dataset(num_episodes: int = 50, length: int = 200, seed: int = 0,
                      multimodal: bool = False, lengths: Optional[list] = None,
                      chunk_length: int = 20) -> Dataset:
    """``num_episodes`` demonstrations of ``length`` frames (or the given per-episode ``lengths``)."""
    rng = np.random.default_rng(seed)
    lengths = list(lengths) if lengths is not None else [length] * num_episodes
    eps = []
    for i, n in enumerate(lengths):
        ep = synthetic_episode(rng, n, multimodal=multimodal)
        ep.meta["episode_id"] = i
        eps.append(ep)
    return Dataset(synthetic_contract(chunk_length), eps)


def synthetic_camera_dataset(num_episodes: int = 20, length: int = 40, seed: int = 0,
                             chunk_length: int = 20, height: int = 24, width: int = 32) -> Dataset:
    """`synthetic_dataset`'s demonstrations seen through `synthetic_camera_contract`: the goal is
    only in the frames (`goal_frame`, one per step), the state is the joint positions."""
    contract = synthetic_camera_contract(chunk_length, height=height, width=width)
    eps = []
    for ep in synthetic_dataset(num_episodes, length, seed, chunk_length=chunk_length).episodes:
        frames = np.repeat(goal_frame(ep.obs[0, 3:5], height, width)[None], len(ep), axis=0)
        eps.append(Episode(obs=ep.obs[:, :3], act=ep.act, t=ep.t, meta=ep.meta, images={"cam": frames}))
    return Dataset(contract, eps)
