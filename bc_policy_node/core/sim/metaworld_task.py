"""Meta-World tasks as the package's robot: a generated contract (Cartesian velocity + gripper,
observations from standard messages) and an environment with `SimEnv`'s interface, so the
in-process evaluator, the data collection and DAgger run Meta-World tasks unchanged.

Owns the mapping between Meta-World and the contract world (numpy + mujoco; `metaworld` is
imported lazily by `metaworld_env`):

* robot ``sawyer``, task ``metaworld/<name>`` for every task of `metaworld_env.available_tasks()`
  (nothing listed here). `metaworld_contract(task)` builds the task's contract: control rate =
  1 / (frame_skip * timestep) (80 Hz), action = ``ee_velocity`` (vx, vy, vz in m/s on
  /servo_node/delta_twist_cmds, TwistStamped: what MoveIt Servo takes; bounded by Meta-World's
  own per-step displacement, workspace box = its mocap limits) + ``gripper`` (effort -1 open ..
  +1 closed on /gripper_controller/commands, a forward controller); observation = the end
  effector (PoseStamped position), the gripper opening (JointState), two object poses
  (PoseStamped; zeros where a task has one object) and the goal (TaskState.goal) - the current
  half of Meta-World's 39-dim observation; the previous-frame half is not in the contract.
* `MetaWorldSimEnv`: reset(seed) / step(command in contract units) -> messages with the field
  names of those ROS messages (`core.types` twins), done at success or at the horizon.
  Contract units <-> Meta-World's action: xyz displacement per step = v * dt = a * action_scale.
* `MetaWorldExpert`: Meta-World's scripted policy, as `act_obs` / `plan_obs` like the package's
  own experts. `act_obs` labels a contract observation: the scripted policies read only the
  current frame and the goal of Meta-World's observation (`native_observation` rebuilds it with
  the previous-frame half zeroed), so a label needs no simulator - the expert node can serve
  any observation. `plan_obs` rolls the expert K steps ahead on a copy of the simulation state
  (the observation alone does not say how the objects will move) and restores it.
* `ReplayExpert`: the same expert for a simulation that runs in another process (the expert
  node beside a lock-step bridge): plans on a local copy kept in step by replaying the
  executed commands, and only at the state whose observation is asked about.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..contract import Contract
from ..types import STATUS_RUNNING, STATUS_SUCCESS, STATUS_TIMEOUT, JointStateData, TaskStateData
from .metaworld_env import PREFIX, MetaWorldEnv, resolve_task

ROBOT = "sawyer"
EE_TOPIC = "/ee_pose"
GRIPPER_TOPIC = "/gripper/joint_states"
OBJECT_TOPICS = ("/objects/obj0/pose", "/objects/obj1/pose")
TASK_STATE_TOPIC = "/task_state"
TWIST_TOPIC = "/servo_node/delta_twist_cmds"
GRIPPER_COMMAND_TOPIC = "/gripper_controller/commands"
GRIPPER_JOINT = "gripper"
BASE_FRAME = "base"


def is_metaworld(task: str) -> bool:
    return str(task).startswith(PREFIX)


# ------------------------------------------------------------------------------ messages
@dataclass
class PoseData:
    """Mirror of geometry_msgs/Pose: position (x, y, z), orientation (x, y, z, w)."""
    position: np.ndarray
    orientation: np.ndarray


@dataclass
class PoseStampedData:
    """Mirror of geometry_msgs/PoseStamped (stamp in seconds instead of a Header)."""
    stamp: float
    frame_id: str
    pose: PoseData


@dataclass
class _Timing:
    dt: float
    action_scale: float
    mocap_low: Tuple[float, ...]
    mocap_high: Tuple[float, ...]
    horizon: int


@lru_cache(maxsize=64)
def _timing(task: str) -> _Timing:
    env = MetaWorldEnv(task)
    raw = env._env.unwrapped
    dt = float(raw.frame_skip * raw.model.opt.timestep)
    t = _Timing(dt, float(raw.action_scale), tuple(float(x) for x in raw.mocap_low),
                tuple(float(x) for x in raw.mocap_high), int(env.horizon))
    env.close()
    return t


def metaworld_contract(task: str, chunk_length: int = 10) -> Contract:
    """The contract of Meta-World task `task` ("pick-place-v3" or "metaworld/pick-place-v3")."""
    name = resolve_task(task)
    t = _timing(name)
    v_max = t.action_scale / t.dt              # m/s: Meta-World's largest displacement per step
    pose = "geometry_msgs/msg/PoseStamped"
    return Contract.from_dict({
        "contract_version": 1, "name": f"{ROBOT}_{name}", "robot": ROBOT, "task": PREFIX + name,
        "control_rate_hz": 1.0 / t.dt, "chunk_length": int(chunk_length), "stale_after_s": 5 * t.dt,
        "observation": [
            {"name": "ee_position", "topic": EE_TOPIC, "type": pose, "field": "pose.position", "size": 3},
            {"name": "gripper", "topic": GRIPPER_TOPIC, "type": "sensor_msgs/msg/JointState", "field": "position",
             "joints": [GRIPPER_JOINT]},
            {"name": "object0", "topic": OBJECT_TOPICS[0], "type": pose, "field": "pose", "size": 7},
            {"name": "object1", "topic": OBJECT_TOPICS[1], "type": pose, "field": "pose", "size": 7},
            {"name": "goal", "topic": TASK_STATE_TOPIC, "type": "bc_msgs/msg/TaskState", "field": "goal", "size": 3}],
        "action": {"parts": [
            {"kind": "ee_velocity", "topic": TWIST_TOPIC, "type": "geometry_msgs/msg/TwistStamped",
             "frame_id": BASE_FRAME, "names": ["vx", "vy", "vz"], "lower": -v_max, "upper": v_max,
             "max_step": 2 * v_max,          # no acceleration bound beyond Meta-World's own
             "workspace": {"ee_term": "ee_position", "lower": list(t.mocap_low), "upper": list(t.mocap_high)}},
            {"kind": "gripper", "topic": GRIPPER_COMMAND_TOPIC, "type": "std_msgs/msg/Float64MultiArray",
             "names": [GRIPPER_JOINT], "lower": -1.0, "upper": 1.0, "max_step": 2.0, "rest": -1.0}]},
    })


# ------------------------------------------------------------------------------ environment
class _Kinematics:
    """`env.sim` for the evaluator: qpos of the simulation (the arm and the objects)."""

    def __init__(self, env: "MetaWorldSimEnv"):
        self._env = env

    @property
    def qpos(self) -> np.ndarray:
        return np.array(self._env.mw._env.unwrapped.data.qpos, dtype=float)

    def ee_position(self) -> np.ndarray:
        return self._env.mw.ee_position()


class MetaWorldSimEnv:
    """A Meta-World task behind `SimEnv`'s interface (module docstring). Episodes end at the
    first success (status ``success``) or at the task's horizon (``timeout``)."""

    def __init__(self, robot: str = ROBOT, task: str = "metaworld/reach-v3", control_rate_hz: Optional[float] = None,
                 disturbance=None):
        if robot != ROBOT:
            raise ValueError(f"Meta-World tasks run on robot {ROBOT!r}, not {robot!r}")
        if disturbance is not None:
            raise ValueError("pushes (disturbance) are not implemented for Meta-World tasks")
        self.mw = MetaWorldEnv(task)
        self.task_name = self.mw.name
        self.contract = metaworld_contract(self.mw.task)
        if control_rate_hz is not None and abs(control_rate_hz - self.contract.control_rate_hz) > 1e-6:
            raise ValueError(f"{self.task_name} runs at {self.contract.control_rate_hz:g} Hz (Meta-World's step), "
                             f"not {control_rate_hz:g} Hz")
        t = _timing(self.mw.task)
        self.dt = t.dt
        self._to_native = np.array([t.dt / t.action_scale] * 3 + [1.0])   # contract units -> Meta-World action
        self.joint_names: Tuple[str, ...] = self.contract.action.joints
        self.sim = _Kinematics(self)
        self.pushes_applied: List[int] = []
        self.episode_id = 0
        self._last = [0.0, 0.0, 0.0, -1.0]      # stopped, gripper open (the contract's rest)
        self._seed = 0
        self._variant = ""

    # ------------------------------------------------------------------ state
    @property
    def horizon(self) -> int:
        return self.mw.horizon

    @property
    def step_count(self) -> int:
        return self.mw.steps

    @property
    def done(self) -> bool:
        return self.mw.succeeded or self.mw.done

    @property
    def last_command(self) -> np.ndarray:
        return np.array(self._last, dtype=float)

    @property
    def status(self) -> str:
        if self.mw.succeeded:
            return STATUS_SUCCESS
        return STATUS_TIMEOUT if self.mw.done else STATUS_RUNNING

    def messages(self) -> Dict[str, Any]:
        obs = self.mw.observation()
        stamp = self.mw.steps * self.dt
        out: Dict[str, Any] = {
            EE_TOPIC: PoseStampedData(stamp, BASE_FRAME, PoseData(obs[0:3].copy(), np.array([0.0, 0.0, 0.0, 1.0]))),
            GRIPPER_TOPIC: JointStateData(stamp, [GRIPPER_JOINT], obs[3:4].copy(), np.zeros(1)),
            TASK_STATE_TOPIC: self._task_state(obs, stamp)}
        for i, topic in enumerate(OBJECT_TOPICS):
            o = obs[4 + 7 * i: 11 + 7 * i]
            out[topic] = PoseStampedData(stamp, BASE_FRAME, PoseData(o[:3].copy(), o[3:].copy()))
        return out

    def _task_state(self, obs: np.ndarray, stamp: float) -> TaskStateData:
        st = self.status
        return TaskStateData(stamp=stamp, task=self.task_name, episode_id=self.episode_id, seed=self._seed,
                             variant=self._variant, goal=obs[36:39].copy(), obstacle=np.zeros(0),
                             waypoints=np.zeros(0), phase=0, num_phases=1, mode=-1, step=self.mw.steps, status=st,
                             success=self.mw.succeeded, done=self.done,
                             reason="" if st == STATUS_RUNNING else f"meta-world: {st}",
                             ee_position=obs[0:3].copy())

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int, variant: str = "", horizon: Optional[int] = None) -> Dict[str, Any]:
        if variant:
            raise ValueError(f"Meta-World tasks have no variants (got {variant!r}); the seed picks the positions")
        self.mw.reset(int(seed))
        self._seed, self._variant = int(seed), variant
        self.episode_id += 1
        self._last = [0.0, 0.0, 0.0, -1.0]
        return self.messages()

    def native_action(self, command) -> np.ndarray:
        """A command in contract units (vx, vy, vz m/s, gripper) -> Meta-World's action."""
        return np.asarray(command, dtype=float) * self._to_native

    def contract_action(self, native) -> np.ndarray:
        """Meta-World's action -> the command in contract units (clipped to [-1, 1] first)."""
        return np.clip(np.asarray(native, dtype=float), -1.0, 1.0) / self._to_native

    def step(self, action) -> Dict[str, Any]:
        a = np.asarray(action, dtype=float)
        if a.shape != (4,) or not np.all(np.isfinite(a)):
            raise ValueError(f"{self.task_name}: a command is 4 finite numbers (vx, vy, vz, gripper), got {a}")
        self.mw.step(self.native_action(a))
        self._last = a.tolist()
        return self.messages()

    def make_expert(self, **_ignored) -> "MetaWorldExpert":
        return MetaWorldExpert(self)

    def close(self) -> None:
        self.mw.close()


def native_observation(obs, contract: Contract) -> np.ndarray:
    """Meta-World's 39-dim observation from a contract observation of `metaworld_contract`:
    [ee, gripper, object0, object1] + 18 zeros (the previous frame, which no scripted policy
    reads) + goal."""
    obs = np.asarray(obs, dtype=float)
    sl = contract.slices()
    cur = np.concatenate([obs[sl[n]] for n in ("ee_position", "gripper", "object0", "object1")])
    return np.concatenate([cur, np.zeros(18), obs[sl["goal"]]])


class MetaWorldExpert:
    """Meta-World's scripted policy for the env's task, with the package's expert interface
    (labels in contract units; see the module docstring for what it reads)."""

    def __init__(self, env: MetaWorldSimEnv):
        self.env = env
        self._policy = env.mw.expert()

    def act_obs(self, obs, contract: Contract, mode: int = -1) -> np.ndarray:
        return self.env.contract_action(self._policy(native_observation(obs, contract)))

    def plan_obs(self, obs, contract: Contract, K: Optional[int] = None, mode: int = -1) -> np.ndarray:
        """(K, 4): the expert's next K commands from the current state, on a copy of it."""
        K = contract.chunk_length if K is None else int(K)
        mw = self.env.mw
        saved = mw.get_state()
        out = np.zeros((K, 4))
        try:
            for k in range(K):
                a = self._policy(mw.observation())
                out[k] = self.env.contract_action(a)
                if k + 1 < K and not mw.done:
                    mw.step(np.clip(a, -1.0, 1.0))
                elif k + 1 < K:
                    out[k + 1:] = out[k]
                    break
        finally:
            mw.set_state(saved)
        return out


class ReplayExpert:
    """The expert of a Meta-World task whose simulation runs elsewhere (a lock-step bridge).

    Labels (`act_obs`) read only the observation. K-step plans need the simulation state, which
    an observation does not carry (object velocities, contacts, the previous frame), so this
    keeps its own copy of the simulation in step with the remote one by replay: each episode
    is reset with its seed (`begin`) and stepped with each command the robot executed
    (`apply`); the same seed and commands give the same state bit for bit. `plan_obs` plans on
    the copy (`MetaWorldExpert.plan_obs`) only when the copy's contract observation is exactly
    the one asked about; otherwise (a command missed or out of order, the expert joined
    mid-episode, a free-running bridge) it raises ValueError with the reason: never a plan from
    another state.

    Thread-safe: the commands arrive on one thread (a topic) and the plan requests on another (a
    service), and a request may overtake the command that leads to its state; `plan_obs(...,
    wait_s)` then waits up to `wait_s` for the copy to reach the observation asked about.
    """

    def __init__(self, env: MetaWorldSimEnv):
        from ..contract import ObservationAssembler

        self.env, self.contract = env, env.contract
        self._expert = MetaWorldExpert(env)
        self._assembler = ObservationAssembler(env.contract)
        self.episode: Optional[int] = None
        self.replayed = 0
        self._obs: Optional[np.ndarray] = None
        self._why = "no episode has started since the expert came up"
        self._changed = threading.Condition()

    def act_obs(self, obs, contract: Contract, mode: int = -1) -> np.ndarray:
        return self._expert.act_obs(obs, contract, mode)

    def begin(self, episode_id: int, seed: int, step: int = 0, task: str = "") -> None:
        """Episode `episode_id` (seed `seed`) starts (or was first seen at `step`)."""
        with self._changed:
            self._begin(episode_id, seed, step, task)
            self._changed.notify_all()

    def _begin(self, episode_id: int, seed: int, step: int, task: str) -> None:
        self.episode = int(episode_id)
        if task and task != self.env.task_name:
            self._obs, self._why = None, f"the robot runs {task}, this expert {self.env.task_name}"
        elif step != 0:
            self._obs, self._why = None, (f"joined episode {episode_id} at step {step}: the replay starts "
                                          f"with the next episode")
        else:
            self._obs, self._why = self._observe(self.env.reset(int(seed))), ""

    def apply(self, episode_id: int, step: int, command) -> None:
        """The robot executed `command` at `step` of `episode_id`: step the copy."""
        with self._changed:
            self._apply(episode_id, step, command)
            self._changed.notify_all()

    def _apply(self, episode_id: int, step: int, command) -> None:
        if int(episode_id) != self.episode or self._why or self.env.done:
            return
        if int(step) != self.env.step_count:
            self._obs, self._why = None, (f"the command of step {step} came with the copy at step "
                                          f"{self.env.step_count} (one was missed): no plans until the next episode")
            return
        try:
            self._obs = self._observe(self.env.step(command))
        except ValueError as e:
            self._obs, self._why = None, f"the command of step {step} could not be replayed: {e}"
            return
        self.replayed += 1

    def plan_obs(self, obs, contract: Contract, K: Optional[int] = None, mode: int = -1,
                 wait_s: float = 0.0) -> np.ndarray:
        """The expert's K-step plan from the copy's state, which must be `obs` (within `wait_s`)."""
        obs = np.asarray(obs, dtype=float)
        deadline = time.monotonic() + max(0.0, float(wait_s))
        with self._changed:
            while True:
                try:
                    self._check(obs)
                    return self._expert.plan_obs(obs, contract, K, mode)
                except ValueError:
                    left = deadline - time.monotonic()
                    if left <= 0.0:
                        raise
                    self._changed.wait(left)

    def _check(self, obs: np.ndarray) -> None:
        if self._why or self._obs is None:
            raise ValueError(f"no simulation state for a K-step plan: {self._why}")
        if obs.shape != self._obs.shape or not np.array_equal(obs, self._obs):
            raise ValueError(f"the observation is not the replayed state (episode {self.episode}, step "
                             f"{self.env.step_count}): K-step plans are made at the states of the lock-step "
                             f"DAgger graph, whose executed commands (bc_msgs/FrameTag) the expert replays")

    def _observe(self, msgs: Dict[str, Any]) -> np.ndarray:
        return self._assembler.assemble(msgs, stamp=self.env.step_count * self.env.dt)
