"""In-process closed-loop rollouts and evaluation (core sim + onnxruntime; no ROS, no torch).

The fast path for experiments and DAgger: the same contract assembler, chunk executors and
safety filter as the policy node, stepping `SimEnv` directly. Many seeds in seconds.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..contract import Contract, ObservationAssembler
from ..control.ensemble import NoChunkError, make_executor
from ..sim.env import SimEnv
from ..data.episodes import Episode
from .metrics import path_deviation, success_summary, mean_ci
from ..control.runtime import OnnxPolicy
from ..control.safety import SafetyFilter
from ..types import ACTOR_EXPERT, ACTOR_POLICY, STATUS_COLLISION

# Measured position this far (rad) from the last command on some joint: start a new plan there
# (the policy node's reset_jump_rad default; tracking lag in the sim stays below ~0.06 rad,
# also in DAgger with the expert driving, so it only fires when something else moved the arm).
RESET_JUMP_RAD = 0.5
EXEC_DEFAULTS = {"temporal_ensembling": {"m": 0.01}, "mode_consistent": {"m": 0.01, "threshold": 0.15},
                 "receding_horizon": {}, "latency_aware": {}}


class PolicyRunner:
    """An ONNX policy + chunk executor + safety filter: observation in, safe command out.

    The policy node runs the same pieces tick by tick; this is their in-process twin
    (`nodes.policy_loop.ControlLoop`; in lock-step through the bridge the node commands the
    same actions, test/ros/test_policy_parity.py). Like the node it

    * starts a new plan at the measured position when `reset` is called (the node: when the
      episode id changes) and when the measured position is more than `reset_jump_rad` from
      the last command on some joint (something else moved the arm; 0 = off; the node's
      parameter of the same name, same default) — counted in `jump_resets`;
    * holds the last command (the measured position before the first one) when the policy
      outputs NaN/inf, instead of using the rest of the plan.
    """

    def __init__(self, policy: OnnxPolicy, contract: Optional[Contract] = None,
                 execution_mode: str = "temporal_ensembling", mode_select: str = "argmax",
                 seed: int = 0, reset_jump_rad: float = RESET_JUMP_RAD, **exec_params):
        self.policy = policy
        self.contract = contract or policy.contract
        self.mode = execution_mode
        params = dict(EXEC_DEFAULTS.get(execution_mode, {}))
        params.update(exec_params)
        self.exec_params = params
        self.mode_select = mode_select
        self.rng = np.random.default_rng(seed)
        self.executor = make_executor(execution_mode, **params)
        self.safety = SafetyFilter(self.contract)
        self.reset_jump_rad = float(reset_jump_rad)
        self.jump_resets = 0
        self.last_chunk: Optional[np.ndarray] = None
        self._last_cmd: Optional[np.ndarray] = None
        self._nan = np.full(self.contract.act_dim, np.nan)

    def reset(self, seed: Optional[int] = None) -> None:
        self.executor.reset()
        self.safety.reset()
        self.last_chunk = None
        self._last_cmd = None
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def chunk(self, obs: np.ndarray) -> np.ndarray:
        return self.policy.predict_chunk(obs, mode_select=self.mode_select, rng=self.rng)[0]

    def act(self, obs: np.ndarray, t: int, current_position: np.ndarray) -> np.ndarray:
        last = self._last_cmd
        if (self.reset_jump_rad > 0 and last is not None
                and np.max(np.abs(np.asarray(current_position, dtype=float) - last)) > self.reset_jump_rad):
            self.executor.reset()
            self.safety.reset()
            self.jump_resets += 1
        proposed = None
        if self.executor.needs_query(t):
            chunk = self.chunk(obs)
            if np.isfinite(chunk).all():
                self.last_chunk = chunk
                self.executor.add(chunk, t)
            else:
                proposed = self._nan            # rejected: the safety filter holds
        if proposed is None:
            try:
                proposed = self.executor.action(t)
            except NoChunkError:                # NaN before any chunk: stay where we are
                proposed = self._nan
        cmd, _ = self.safety.filter(proposed, now=0.0, obs_stamp=0.0, current_position=current_position)
        if cmd is None:
            return proposed
        self._last_cmd = cmd
        return cmd.copy()


@dataclass
class RolloutResult:
    seed: int
    status: str
    steps: int
    ee: np.ndarray                 # (T+1, d) end-effector positions
    q: np.ndarray                  # (T+1, n)
    obs: np.ndarray                # (T, obs_dim) observations the actor saw
    actions: np.ndarray            # (T, act_dim) executed commands
    actors: np.ndarray             # (T,) ACTOR_* codes
    labels: Optional[np.ndarray] = None   # (T, act_dim) expert labels when queried
    meta: Dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == "success"

    def episode(self, dt: float, source: str) -> Episode:
        """As a training episode: expert labels where present (DAgger), else executed actions."""
        act = self.labels if self.labels is not None else self.actions
        return Episode(self.obs, act, np.arange(len(self.obs)) * dt,
                       {"seed": self.seed, "source": source, "success": self.success, "status": self.status,
                        **self.meta})


ActFn = Callable[[np.ndarray, int, Dict[str, object]], np.ndarray]


def rollout(env: SimEnv, contract: Contract, act_fn: ActFn, seed: int, variant: str = "",
            label_fn: Optional[Callable[[np.ndarray, Dict[str, object]], np.ndarray]] = None,
            expert_acts: Optional[Callable[[int, np.ndarray], bool]] = None,
            expert_fn: Optional[ActFn] = None, max_steps: Optional[int] = None) -> RolloutResult:
    """One episode. `act_fn(obs, t, msgs)` is the policy; optional `label_fn(obs, msgs)` labels
    every visited state (DAgger); `expert_acts(t, obs)` -> True hands tick t to `expert_fn`."""
    assembler = ObservationAssembler(contract)
    msgs = env.reset(seed, variant)
    jidx = [list(env.joint_names).index(j) for j in contract.action.joints]
    ee, q, obs_l, act_l, actors, labels = [], [], [], [], [], []
    t = 0
    limit = max_steps or env.horizon
    while not env.done and t < limit:
        obs = assembler.assemble(msgs, stamp=float(t))
        ts = msgs["/task_state"]
        ee.append(np.asarray(ts.ee_position, dtype=float))
        q.append(env.sim.qpos)
        label = label_fn(obs, msgs) if label_fn is not None else None
        if expert_acts is not None and expert_acts(t, obs):
            a = label if label is not None and expert_fn is None else expert_fn(obs, t, msgs)
            actors.append(ACTOR_EXPERT)
        else:
            a = act_fn(obs, t, msgs)
            actors.append(ACTOR_POLICY)
        obs_l.append(obs)
        act_l.append(a)
        if label is not None:
            labels.append(label)
        full = env.last_command
        full[jidx] = a
        msgs = env.step(full)
        t += 1
    ts = msgs["/task_state"]
    ee.append(np.asarray(ts.ee_position, dtype=float))
    q.append(env.sim.qpos)
    return RolloutResult(seed=seed, status=ts.status if env.done else "timeout", steps=t,
                         ee=np.array(ee), q=np.array(q), obs=np.array(obs_l).reshape(t, contract.obs_dim),
                         actions=np.array(act_l).reshape(t, contract.act_dim), actors=np.array(actors, int),
                         labels=np.array(labels) if label_fn is not None else None,
                         meta={"mode": int(ts.mode), "task": env.task_name, "phase": int(ts.phase),
                               "pushes": list(env.pushes_applied),
                               "goal": np.asarray(ts.goal, dtype=float).copy(),
                               "obstacle": np.asarray(ts.obstacle, dtype=float).copy(),
                               "final_error": float(np.linalg.norm(np.asarray(ts.ee_position) - np.asarray(ts.goal)))})


def expert_act_fn(env: SimEnv, contract: Contract, expert=None) -> ActFn:
    """The scripted expert as an act_fn (labels at any state, from the observation only + mode)."""
    expert = expert or env.make_expert()

    def act(obs, t, msgs):
        return expert.act_obs(obs, contract, mode=int(msgs["/task_state"].mode))
    return act


def policy_act_fn(runner: PolicyRunner, env: SimEnv, contract: Contract) -> ActFn:
    jidx = [list(env.joint_names).index(j) for j in contract.action.joints]

    def act(obs, t, msgs):
        return runner.act(obs, t, env.sim.qpos[jidx])
    return act


def evaluate(policy, robot: str, task: str, seeds: Sequence[int], execution_mode: str = "temporal_ensembling",
             mode_select: str = "argmax", with_expert: bool = True, progress=None, disturbance=None,
             **exec_params) -> Dict:
    """Success rate (Wilson interval), final error, path deviation from the expert over time,
    collisions and per-episode results for an ONNX policy over `seeds`; `disturbance`
    (`core.sim.disturbance.Pushes`) pushes policy and expert alike."""
    policy = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
    env = SimEnv(robot, task, control_rate_hz=policy.contract.control_rate_hz, disturbance=disturbance)
    contract = policy.contract
    policy.check_contract(contract)  # self-consistency; robot contract checked by the node
    runner = PolicyRunner(policy, contract, execution_mode, mode_select=mode_select, **exec_params)
    expert_env = (SimEnv(robot, task, control_rate_hz=contract.control_rate_hz, disturbance=disturbance)
                  if with_expert else None)
    expert_fn = expert_act_fn(expert_env, contract) if with_expert else None
    results: List[RolloutResult] = []
    experts: List[RolloutResult] = []
    it = progress(seeds) if progress else seeds
    for s in it:
        runner.reset(seed=s)
        results.append(rollout(env, contract, policy_act_fn(runner, env, contract), s))
        if with_expert:
            experts.append(rollout(expert_env, contract, expert_fn, s))
    return summarize(results, experts)


def deviation_curve(results: Sequence[RolloutResult], experts: Sequence[RolloutResult]) -> np.ndarray:
    """(n_episodes, T_max) ee deviation from the expert at each tick (NaN past an episode's end)."""
    T = max(len(r.ee) for r in results)
    out = np.full((len(results), T), np.nan)
    for i, (r, e) in enumerate(zip(results, experts)):
        _, d = path_deviation(r.ee, e.ee)
        out[i, :len(d)] = d
    return out


def summarize(results: Sequence[RolloutResult], experts: Sequence[RolloutResult] = ()) -> Dict:
    out = {"success": success_summary([r.success for r in results]),
           "collision_rate": success_summary([r.status == STATUS_COLLISION for r in results]),
           "statuses": {s: int(sum(r.status == s for r in results)) for s in sorted({r.status for r in results})},
           "steps": mean_ci([r.steps for r in results]),
           "final_error": mean_ci([r.meta["final_error"] for r in results])}
    if experts:
        dev = deviation_curve(results, experts)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # ticks no episode reached
            out["deviation_mean_by_t"] = np.nanmean(dev, axis=0).tolist()
        out["deviation"] = mean_ci(np.nanmean(dev, axis=1))
    out["results"] = list(results)
    out["experts"] = list(experts)
    return out
