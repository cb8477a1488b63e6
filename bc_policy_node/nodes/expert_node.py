"""`expert`: the scripted state-feedback expert on the graph (demonstrations and DAgger labels)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from bc_msgs.msg import TaskState
from bc_msgs.srv import QueryExpert

from ..core.contract import Contract, ContractError
from ..core.sim.env import contract_max_step, contract_path, robot_mjcf
from ..core.sim.experts import ScriptedExpert, make_expert
from ..core.sim.metaworld_task import is_metaworld
from ..core.sim.sim import ArmSim, SimError
from ..core.sync import StampSync
from . import qos
from .conversions import command_msg
from .fastlane import FastLane
from .metaworld_expert import MetaWorldDriver
from .common import ThrottledLog, run_node
from .params import declare_and_load, doc

MODES = ("lockstep", "free")
NODE_NAME = "expert"
PENDING = 64                 # lock-step: unmatched stamps kept per topic


@dataclass(frozen=True)
class ExpertParams:
    robot: str = doc("Robot (planar3 | arm7): kinematics model and contract name", "planar3")
    task: str = doc("Task whose expert labels ~/query (and drives until /task_state names another)",
                    "curved_reach")
    contract: str = doc("Contract YAML of ~/query's observation/action layout; "
                        "'' = config/contracts/<robot>_<task>.yaml", "")
    mjcf: str = doc("MJCF of the robot's kinematics; '' = the shipped model of `robot`", "")
    drive: bool = doc("true: command the arm from /joint_states + /task_state (demonstrations)", True)
    controller: str = doc("Commands go to /<controller>/commands (std_msgs/Float64MultiArray)",
                          "forward_position_controller")
    mode: str = doc("lockstep: one command per observation stamp once /joint_states and /task_state "
                    "both delivered it; free: a timer at the contract rate on the node clock "
                    "(set use_sim_time with a faster-than-real-time bridge)", "lockstep")
    replay_topic: str = doc("Meta-World: the bc_msgs/FrameTag topic whose executed commands the expert "
                            "replays on its copy of the simulation, for K-step plans (~/query "
                            "chunk_length > 1) at the states they visit", "/dagger/frame_tag")
    plan_max_batch: int = doc("~/query: largest count x chunk_length (expert evaluations, ~0.1 ms "
                              "each) one request may ask for", 50000)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"parameter mode must be one of {MODES}, got {self.mode!r}")
        if self.plan_max_batch < 1:
            raise ValueError(f"parameter plan_max_batch must be >= 1, got {self.plan_max_batch}")
        if not self.controller or "/" in self.controller.strip("/"):
            raise ValueError(f"parameter controller must be a plain name, got {self.controller!r}")


def _max_step(contract: Contract, joint_names) -> np.ndarray:
    step = dict(zip(contract.action.joints, contract.action.max_step))
    return np.array([step[j] for j in joint_names])


class ExpertNode(Node):
    """Scripted expert of core/sim/experts.py behind ROS interfaces.

    Publishes:
        ``/<controller>/commands`` std_msgs/Float64MultiArray (qos.COMMAND), when drive:=true:
        absolute joint position targets in the robot's joint order (= /joint_states.name of the
        sim bridge), the same topic a policy commands.
    Subscribes (drive:=true, qos.STATE):
        ``/joint_states`` sensor_msgs/JointState, ``/task_state`` bc_msgs/TaskState.
    Services:
        ``~/query`` bc_msgs/QueryExpert: labels for a batch of observations in the contract's
        layout (count x obs_dim, row-major) with optional latent modes (empty = -1 each) ->
        actions count x chunk_length x act_dim in the contract's action order;
        chunk_length 0 or 1 = one action (ScriptedExpert.act_obs), K > 1 = a K-step plan
        (plan_obs). Sizes, finiteness, modes and plan_max_batch are checked: a bad request
        gets success=false and a message saying what is wrong. A Meta-World task's K-step
        plans come from a replayed copy of the simulation (`nodes/metaworld_expert.py`).
    Parameters: see `ExpertParams` (robot, task, contract, mjcf, drive, controller, mode,
        replay_topic, plan_max_batch); defaults in config/expert.yaml.

    Driving: the expert follows the task named by /task_state (so a ~/reset that changes the
    bridge's task needs no restart); the per-tick step bound is that task's contract max_step.
    lockstep: one command per observation stamp once both topics delivered it, none once
    /task_state.done (it starts again with the next episode's first pair). free: a timer at
    the contract rate commands from the latest pair while the episode runs.
    """

    def __init__(self):
        super().__init__(NODE_NAME)
        self.params = p = declare_and_load(self, ExpertParams)
        self._lane: Optional[FastLane] = None
        if is_metaworld(p.task):       # Meta-World's scripted policy, on the task's generated contract
            self._metaworld = MetaWorldDriver(self, p)
            self.contract, self.query_expert = self._metaworld.contract, self._metaworld
            self.create_service(QueryExpert, "~/query", self._srv_query)
            self.queries = 0
            self.get_logger().info(f"Meta-World expert for {p.task}: ~/query on contract {self.contract.name}"
                                   + (f"; driving {self._metaworld.command_topic} ({p.mode})" if p.drive else ""))
            return
        self.mjcf = Path(p.mjcf) if p.mjcf else robot_mjcf(p.robot)
        cpath = Path(p.contract) if p.contract else contract_path(p.robot, p.task)
        self.contract = Contract.load(cpath)
        self._query_kin = ArmSim(self.mjcf)
        self.joint_names = tuple(self._query_kin.joint_names)
        self.contract.check_robot_joints(self.joint_names)
        if (self.contract.robot, self.contract.task) != (p.robot, p.task):
            self.get_logger().warn(f"contract {cpath} is for {self.contract.robot}/{self.contract.task}, "
                                   f"parameters say {p.robot}/{p.task}; ~/query uses the contract's layout "
                                   f"with the {p.task!r} expert")
        self.query_expert = make_expert(p.task, self._query_kin,
                                        max_step=_max_step(self.contract, self.joint_names),
                                        control_rate_hz=self.contract.control_rate_hz)
        self.create_service(QueryExpert, "~/query", self._srv_query)
        self.queries = 0
        self._obs_log = ThrottledLog(self.get_logger(), 5.0)   # per message: rclpy's throttle costs ~0.4 ms

        self._drive_experts: Dict[str, ScriptedExpert] = {}
        self._drive_kin: Optional[ArmSim] = None
        self.commands_sent = 0
        if p.drive:
            self._drive_kin = ArmSim(self.mjcf)
            self._lock = threading.Lock()
            self._sync = StampSync(("js", "ts"), PENDING)    # lock-step: (positions, TaskState) per stamp
            self._latest: Tuple[Optional[np.ndarray], Optional[TaskState]] = (None, None)
            self._latest_js: Optional[JointState] = None     # free mode
            self._idx_cache: Dict[Tuple[str, ...], Optional[np.ndarray]] = {}
            self._done_episode = -1
            self.command_topic = f"/{p.controller.strip('/')}/commands"
            self._cmd_pub = self.create_publisher(Float64MultiArray, self.command_topic, qos.COMMAND)
            self._lane = FastLane(self, "expert_observations", on_error=self._on_lane_error)
            self._lane.create_subscription(JointState, "/joint_states", self._on_joint_state, qos.STATE)
            self._lane.create_subscription(TaskState, "/task_state", self._on_task_state, qos.STATE)
            if p.mode == "free":
                self.create_timer(1.0 / self.contract.control_rate_hz, self._on_timer)
        self.get_logger().info(
            f"expert for {p.robot}/{p.task}: ~/query on contract {self.contract.name} "
            f"(obs {self.contract.obs_dim}, act {self.contract.act_dim})"
            + (f"; driving {self.command_topic} ({p.mode})" if p.drive else "; not driving"))

    def start(self) -> None:
        if self._lane is not None:
            self._lane.start()

    def shutdown(self, reason: str = "") -> None:
        if self._lane is not None:
            self._lane.stop()

    def _on_lane_error(self, e: BaseException) -> None:
        self.get_logger().error(f"observation handling failed: {type(e).__name__}: {e}",
                                throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ driving
    def _drive_expert(self, task: str) -> ScriptedExpert:
        ex = self._drive_experts.get(task)
        if ex is None:
            if task == self.params.task:
                max_step = _max_step(self.contract, self.joint_names)
            else:
                max_step = contract_max_step(self.params.robot, task, self.joint_names)
            ex = make_expert(task, self._drive_kin, max_step=max_step,
                             control_rate_hz=self.contract.control_rate_hz)
            self._drive_experts[task] = ex
        return ex

    def _positions(self, msg: JointState) -> Optional[np.ndarray]:
        names = tuple(msg.name)
        idx = self._idx_cache.get(names, False)
        if idx is False:
            idx = None
            if all(j in names for j in self.joint_names):
                idx = np.array([names.index(j) for j in self.joint_names])
            self._idx_cache[names] = idx
        pos = np.asarray(msg.position, dtype=float)
        if idx is None or len(pos) != len(names):
            self._obs_log.warning("names", f"/joint_states without the robot's joints {list(self.joint_names)} "
                                  f"(names {list(names)}, {len(pos)} positions): ignored")
            return None
        q = pos[idx]
        if not np.all(np.isfinite(q)):
            self._obs_log.warning("nonfinite", "/joint_states with NaN/inf positions: ignored")
            return None
        return q

    @staticmethod
    def _ns(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_joint_state(self, msg: JointState) -> None:
        if self.params.mode == "free":    # only the latest matters: decode it at the timer
            self._latest_js = msg
            return
        q = self._positions(msg)
        if q is None:
            return
        self._arrival("js", self._ns(msg), q)

    def _on_task_state(self, msg: TaskState) -> None:
        self._arrival("ts", self._ns(msg), msg)

    def _arrival(self, kind: str, key: int, value) -> None:
        with self._lock:
            if kind == "js":
                self._latest = (value, self._latest[1])
            else:
                self._latest = (self._latest[0], value)
            if self.params.mode != "lockstep":
                return
            pair = self._sync.add(kind, key, value)
            if pair is not None:
                (_, q), (_, ts) = pair
                self._command(q, ts)

    def _on_timer(self) -> None:
        js, ts = self._latest_js, self._latest[1]
        if js is None or ts is None:
            return
        q = self._positions(js)
        if q is not None:
            with self._lock:
                self._command(q, ts)

    def _command(self, q: np.ndarray, ts: TaskState) -> None:
        """Publish the expert's next target for state (q, ts), unless the episode is over."""
        if ts.done:
            if ts.episode_id != self._done_episode:
                self._done_episode = ts.episode_id
                self.get_logger().info(f"episode {ts.episode_id} (seed {ts.seed}) {ts.status} at tick "
                                       f"{ts.step}: {ts.reason}")
            return
        try:
            target = self._drive_expert(ts.task).act_task(q, None, ts)
        except (ValueError, KeyError) as e:
            self._obs_log.error("no_command", f"no command for task {ts.task!r}: {e}")
            return
        self._cmd_pub.publish(command_msg(target, self.joint_names))
        self.commands_sent += 1

    # ------------------------------------------------------------------ labels
    def _srv_query(self, req: QueryExpert.Request, resp: QueryExpert.Response):
        c = self.contract
        count, k = int(req.count), max(1, int(req.chunk_length))
        resp.action_dim, resp.chunk_length = c.act_dim, k
        obs = np.asarray(req.observations, dtype=float)
        modes = np.asarray(req.modes, dtype=int)
        err = ""
        if count * k > self.params.plan_max_batch:
            err = (f"count x chunk_length = {count} x {k} = {count * k} exceeds plan_max_batch "
                   f"{self.params.plan_max_batch}: split the batch")
        elif obs.size != count * c.obs_dim:
            err = (f"observations has {obs.size} values; count x obs_dim = {count} x {c.obs_dim} = "
                   f"{count * c.obs_dim} (contract {c.name}: "
                   f"{', '.join(f'{t.name}[{t.size}]' for t in c.observation)})")
        elif modes.size not in (0, count):
            err = f"modes has {modes.size} values: give none or one per observation ({count})"
        elif modes.size and not np.all((modes >= -1) & (modes <= 1)):
            err = f"modes must be -1 (expert decides), 0 or 1; got {sorted(set(modes.tolist()))}"
        elif not np.all(np.isfinite(obs)):
            rows = sorted(set((np.flatnonzero(~np.isfinite(obs)) // c.obs_dim).tolist()))
            err = f"observations contain NaN/inf (rows {rows[:10]}{'...' if len(rows) > 10 else ''})"
        if err:
            resp.success, resp.message = False, err
            self.get_logger().warn(f"~/query refused: {err}", throttle_duration_sec=2.0)
            return resp
        obs = obs.reshape(count, c.obs_dim)
        if not modes.size:
            modes = np.full(count, -1)
        out = np.empty((count, k, c.act_dim))
        try:
            for i in range(count):
                if k == 1:
                    out[i, 0] = self.query_expert.act_obs(obs[i], c, int(modes[i]))
                else:
                    out[i] = self.query_expert.plan_obs(obs[i], c, k, int(modes[i]))
        except (ValueError, ContractError) as e:
            resp.success, resp.message = False, f"expert failed at observation {i}: {e}"
            return resp
        self.queries += 1
        resp.actions = out.ravel().tolist()
        resp.success, resp.message = True, f"{count} x {k} labels"
        return resp


def main(args=None) -> int:
    return run_node(ExpertNode, NODE_NAME, (SimError, ContractError, ValueError), args, executor=_executor)


def _executor(node):
    # Meta-World: two threads, so the replay's callback group runs while a ~/query waits for it
    # (nodes/metaworld_expert.py); every other callback is in the default (mutually exclusive) group.
    if getattr(node, "_metaworld", None) is not None:
        return MultiThreadedExecutor(num_threads=2)
    return SingleThreadedExecutor()


if __name__ == "__main__":
    raise SystemExit(main())
