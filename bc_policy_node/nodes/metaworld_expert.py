"""The expert node's Meta-World side: Meta-World's scripted policy behind the same ~/query and
the same driving rules, on the task's generated contract (`core.sim.metaworld_task`).

Labels need only the contract observation (the scripted policies read the current frame and
the goal; `metaworld_task.native_observation`), so ~/query answers any observation. K-step
plans (chunk_length > 1) need the simulation state: `metaworld_task.ReplayExpert` keeps a copy
of the task's simulation in step with the lock-step bridge by replaying each episode from its
seed (/task_state) with the commands the robot executed (``replay_topic``, the dagger node's
bc_msgs/FrameTag), and plans there, only for the observation of the copy's current state
(any other gets success=false with the reason). The replay's subscriptions have their own
callback group, so on the node's two executor threads a query that overtook the FrameTag
leading to its state waits for it (at most REPLAY_WAIT_PERIODS control periods) instead of
being refused.

Driving (drive:=true): the contract's observation topics (PoseStamped ee and objects, the
gripper's JointState, /task_state), paired per stamp with `core.sync.StampSync` in lock-step
(one command per observation stamp once every topic delivered it, none once
/task_state.done), or the latest values at the contract rate in free mode; the command is
the contract's two parts (TwistStamped + the gripper's Float64MultiArray), as a policy sends.
"""
from __future__ import annotations

import threading

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import QoSProfile, ReliabilityPolicy

from bc_msgs.msg import FrameTag, TaskState

from ..core.contract import ContractError, ObservationAssembler
from ..core.sim.metaworld_task import ROBOT, MetaWorldSimEnv, ReplayExpert
from ..core.sync import StampSync
from . import qos
from .common import ThrottledLog, message_class
from .policy_io import PartsOut

PENDING = 64
REPLAY_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)   # every executed command
REPLAY_WAIT_PERIODS = 5.0     # a K-step query waits this long for the FrameTag leading to its state


class MetaWorldDriver:
    """Sets up a Meta-World expert on `node` (an ExpertNode): its contract, ~/query expert and,
    with drive:=true, the observation intake and the command output (module docstring)."""

    def __init__(self, node, params):
        if params.robot != ROBOT:
            raise ValueError(f"Meta-World tasks run on robot {ROBOT!r}, not {params.robot!r}")
        self.node, self.params = node, params
        self.env = MetaWorldSimEnv(ROBOT, params.task)
        self.contract = c = self.env.contract
        self.expert = ReplayExpert(self.env)
        self.commands_sent = 0
        self._log = ThrottledLog(node.get_logger(), 5.0)
        self._lock = threading.Lock()
        self._done_episode = -1
        replay = MutuallyExclusiveCallbackGroup()          # beside ~/query (default group)
        node.create_subscription(TaskState, "/task_state", self._replay_episode, qos.STATE, callback_group=replay)
        node.create_subscription(FrameTag, params.replay_topic, self._replay_command, REPLAY_QOS,
                                 callback_group=replay)
        if not params.drive:
            return
        self._assembler = ObservationAssembler(c)
        self._sync = StampSync(list(c.observation_topics()), PENDING)
        self._latest: dict = {}
        self.out = PartsOut(node, c)
        for topic, type_name in c.observation_topics().items():
            node.create_subscription(message_class(type_name), topic, self._callback(topic), qos.STATE)
        if params.mode == "free":
            node.create_timer(c.dt, self._on_timer)

    def _replay_episode(self, ts: TaskState) -> None:
        if ts.episode_id != self.expert.episode:
            self.expert.begin(ts.episode_id, ts.seed, ts.step, ts.task)

    def _replay_command(self, tag: FrameTag) -> None:
        if len(tag.executed_action) == self.contract.act_dim:
            self.expert.apply(tag.episode_id, tag.step, np.asarray(tag.executed_action, dtype=float))

    # ~/query's expert (ReplayExpert is thread-safe: the replay runs on the other executor thread)
    def act_obs(self, obs, contract, mode: int = -1) -> np.ndarray:
        return self.expert.act_obs(obs, contract, mode)

    def plan_obs(self, obs, contract, K=None, mode: int = -1) -> np.ndarray:
        return self.expert.plan_obs(obs, contract, K, mode, wait_s=REPLAY_WAIT_PERIODS * self.contract.dt)

    @property
    def command_topic(self) -> str:
        return self.out.topic

    def _callback(self, topic: str):
        def cb(msg) -> None:
            with self._lock:
                self._latest[topic] = msg
                if self.params.mode != "lockstep":
                    return
                key = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                pair = self._sync.add(topic, key, msg)
                if pair is not None:
                    self._command(dict(pair))
        return cb

    def _on_timer(self) -> None:
        with self._lock:
            if len(self._latest) == len(self.contract.observation_topics()):
                self._command(dict(self._latest))

    def _command(self, msgs) -> None:
        ts = msgs["/task_state"]
        if ts.done:
            if ts.episode_id != self._done_episode:
                self._done_episode = ts.episode_id
                self.node.get_logger().info(f"episode {ts.episode_id} (seed {ts.seed}) {ts.status} at tick "
                                            f"{ts.step}: {ts.reason}")
            return
        try:
            obs = self._assembler.assemble(msgs)
            cmd = self.expert.act_obs(obs, self.contract)
        except (ContractError, ValueError) as e:
            self._log.warning("no_command", f"no command at step {ts.step}: {e}")
            return
        self.out.publish(cmd)
        self.commands_sent += 1

