"""In-process closed-loop rollouts and evaluation (core sim + onnxruntime; no ROS, no torch).

The fast path for experiments and DAgger: the same contract assembler and control engine
(`core.control.controller.PolicyController`) as the policy node, stepping `SimEnv` directly.
Many seeds in seconds.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import Contract, ObservationAssembler
from ..sim.env import SimEnv, make_env
from ..data.episodes import Episode
from .metrics import path_deviation, success_summary, mean_ci
from ..control.controller import PolicyController
from ..control.params import PolicyParams
from ..control.runtime import OnnxPolicy
from ..types import ACTOR_POLICY, STATUS_COLLISION

def make_controller(policy: OnnxPolicy, contract: Optional[Contract] = None,
                    execution_mode: str = "temporal_ensembling", mode_select: str = "argmax",
                    seed: int = 0, reset_jump_rad: Optional[float] = None, **exec_params) -> PolicyController:
    """The policy node's engine (`core.control.controller.PolicyController`) with the node's
    defaults, from the experiments' executor keywords (`PolicyParams.for_execution`)."""
    params = PolicyParams.for_execution(execution_mode, mode_select, seed, reset_jump_rad, **exec_params)
    return PolicyController(contract or policy.contract, policy, params)


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
    images: Optional[Dict[str, np.ndarray]] = None   # {camera: uint8 (T, h, w, 3)} the actor saw (keep_images)

    @property
    def success(self) -> bool:
        return self.status == "success"

    def episode(self, dt: float, source: str) -> Episode:
        """As a training episode: expert labels where present (DAgger), else executed actions."""
        act = self.labels if self.labels is not None else self.actions
        return Episode(self.obs, act, np.arange(len(self.obs)) * dt,
                       {"seed": self.seed, "source": source, "success": self.success, "status": self.status,
                        **self.meta}, images=self.images)


ActFn = Callable[[np.ndarray, int, Dict[str, Any]], np.ndarray]

# For a contract with cameras, `rollout` hands the act/decide function the decoded frames of the
# tick as msgs[IMAGES] ({camera term: uint8 (h, w, 3)}, `ObservationAssembler.images()`).
IMAGES = "__images__"


DecideFn = Callable[[np.ndarray, int, Dict[str, Any], Optional[np.ndarray]], Tuple[np.ndarray, int]]


def rollout(env: SimEnv, contract: Contract, act_fn: Optional[ActFn], seed: int, variant: str = "",
            label_fn: Optional[Callable[[np.ndarray, Dict[str, Any]], np.ndarray]] = None,
            decide_fn: Optional[DecideFn] = None, max_steps: Optional[int] = None,
            keep_images: bool = True) -> RolloutResult:
    """One episode. `act_fn(obs, t, msgs)` is the policy; optional `label_fn(obs, msgs)` labels
    every visited state (DAgger); `decide_fn(obs, t, msgs, label) -> (command, ACTOR_*)`, when
    given, replaces `act_fn` with an arbiter that chooses who acts (`pipeline.dagger.inprocess`).
    A contract with cameras needs an env that renders them (`make_env(cameras=...)`); the frames
    are kept in the result (demonstrations) unless `keep_images` is False (evaluation)."""
    assembler = ObservationAssembler(contract)
    msgs = env.reset(seed, variant)
    jidx = [list(env.joint_names).index(j) for j in contract.action.joints]
    ee, q, obs_l, act_l, actors, labels = [], [], [], [], [], []
    frames: Dict[str, List[np.ndarray]] = {t.name: [] for t in contract.images}
    t = 0
    limit = max_steps or env.horizon
    while not env.done and t < limit:
        obs = assembler.assemble(msgs, stamp=float(t))
        if frames:
            msgs = dict(msgs)
            msgs[IMAGES] = imgs = assembler.images()
            if keep_images:
                for name, img in imgs.items():
                    frames[name].append(img)
        ts = msgs["/task_state"]
        ee.append(np.asarray(ts.ee_position, dtype=float))
        q.append(env.sim.qpos)
        label = label_fn(obs, msgs) if label_fn is not None else None
        if decide_fn is not None:
            a, actor = decide_fn(obs, t, msgs, label)
        elif act_fn is not None:
            a, actor = act_fn(obs, t, msgs), ACTOR_POLICY
        else:
            raise ValueError("rollout needs act_fn or decide_fn")
        actors.append(actor)
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
                         images=({n: np.array(f, dtype=np.uint8).reshape((t,) + contract.image_term(n).shape)
                                  for n, f in frames.items()} if frames and keep_images else None),
                         meta={"mode": int(ts.mode), "task": env.task_name, "phase": int(ts.phase),
                               "pushes": list(env.pushes_applied),
                               "goal": np.asarray(ts.goal, dtype=float).copy(),
                               "obstacle": np.asarray(ts.obstacle, dtype=float).copy(),
                               "final_error": float(np.linalg.norm(np.asarray(ts.ee_position) - np.asarray(ts.goal)))})


def expert_act_fn(env: SimEnv, contract: Contract, expert=None,
                  expert_contract: Optional[Contract] = None) -> ActFn:
    """The scripted expert as an act_fn (labels at any state, from the observation only + mode).

    The expert reads the observation of `expert_contract` (default `contract`; for a contract
    with cameras, or one whose state terms hide what the expert needs (`reads`, e.g. the goal):
    the robot/task's shipped state contract), built from the same messages: a privileged teacher
    for a policy that must find the goal in the image, or cannot see it at all."""
    expert = expert or env.make_expert()
    reads = getattr(expert, "reads", lambda c: True)
    own = expert_contract or (_state_contract(env) if contract.images or not reads(contract) else contract)
    if own is contract:
        def act(obs, t, msgs):
            return expert.act_obs(obs, contract, mode=int(msgs["/task_state"].mode))
        return act
    assembler = ObservationAssembler(own)

    def act_privileged(obs, t, msgs):
        state = assembler.assemble({k: v for k, v in msgs.items() if k in own.observation_topics()})
        return expert.act_obs(state, own, mode=int(msgs["/task_state"].mode))
    return act_privileged


def _state_contract(env) -> Contract:
    from ..sim.env import load_contract

    return load_contract(env.robot, env.task_name)


def policy_act_fn(controller: PolicyController, dt: float) -> ActFn:
    """`controller` ticking once per sim step; the observation of tick t is stamped t * dt
    (always fresh: in process nothing is late)."""
    nan = np.full(controller.contract.act_dim, np.nan)

    def act(obs, t, msgs):
        cmd = controller.step(obs, t * dt, images=msgs.get(IMAGES) if msgs else None).command
        return nan.copy() if cmd is None else cmd   # None: no measured position in obs
    return act


def evaluate(policy, robot: str, task: str, seeds: Sequence[int], execution_mode: str = "temporal_ensembling",
             mode_select: str = "argmax", with_expert: bool = True, progress=None, disturbance=None,
             workers: int = 1, address: Optional[str] = None, timeout: Optional[float] = None,
             **exec_params) -> Dict:
    """Success rate (Wilson interval), final error, path deviation from the expert over time,
    collisions and per-episode results for an ONNX policy over `seeds`; `disturbance`
    (`core.sim.disturbance.Pushes`) pushes policy and expert alike.

    ``workers > 1`` splits `seeds` into contiguous chunks evaluated as Ray tasks over that many
    processes (`core.eval.parallel`; a local loopback-only instance, or the cluster at
    `address`), each with its own env and ONNX session (1 thread); the episodes are merged in
    seed order, so the result equals the serial one (every episode is reset from its seed).
    `progress` then wraps the finished chunks instead of the seeds; `timeout` (s) bounds each
    wait for the next chunk (`TimeoutError`)."""
    policy = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
    policy.check_contract(policy.contract)  # self-consistency; robot contract checked by the node
    job = dict(robot=robot, task=task, execution_mode=execution_mode, mode_select=mode_select,
               with_expert=with_expert, disturbance=disturbance, exec_params=exec_params)
    if int(workers) <= 1:
        results, experts = _rollouts(policy, seeds=list(seeds), progress=progress, **job)
    else:
        from .parallel import chunks, parallel_map

        jobs = [dict(job, policy=str(policy.path), seeds=c)
                for c in chunks(list(seeds), int(workers) * CHUNKS_PER_WORKER)]
        parts = parallel_map(_rollouts_job, jobs, workers=int(workers), address=address, progress=progress,
                             timeout=timeout)
        results = [r for rs, _ in parts for r in rs]
        experts = [e for _, es in parts for e in es]
    return summarize(results, experts)


CHUNKS_PER_WORKER = 4   # chunks of seeds per worker process: balances episodes of unequal length


def expert_rollouts(robot: str, task: str, seeds: Sequence[int], contract: Optional[Contract] = None,
                    disturbance=None, workers: int = 1, address: Optional[str] = None,
                    variant: str = "") -> List[RolloutResult]:
    """The scripted expert's rollouts at `seeds` (demonstrations, references), in seed order;
    ``workers > 1`` fans contiguous seed chunks out over Ray processes like `evaluate` (every
    episode is reset from its seed: the same results as a serial run)."""
    job = dict(robot=robot, task=task, contract=None if contract is None else contract.to_dict(),
               disturbance=disturbance, variant=variant)
    seeds = [int(s) for s in seeds]
    if int(workers) <= 1:
        return _expert_job(dict(job, seeds=seeds))
    from .parallel import chunks, parallel_map

    parts = parallel_map(_expert_job, [dict(job, seeds=c) for c in chunks(seeds, int(workers) * CHUNKS_PER_WORKER)],
                         workers=int(workers), address=address)
    return [r for part in parts for r in part]


def _expert_job(job: Dict[str, Any]) -> List[RolloutResult]:
    from ..sim.env import load_contract

    c = Contract.from_dict(job["contract"]) if job["contract"] else load_contract(job["robot"], job["task"])
    env = make_env(job["robot"], job["task"], control_rate_hz=c.control_rate_hz, disturbance=job["disturbance"],
                   cameras=c.images)
    fn = expert_act_fn(env, c)
    return [rollout(env, c, fn, s, variant=job["variant"]) for s in job["seeds"]]


def _rollouts(policy: OnnxPolicy, robot: str, task: str, seeds: Sequence[int], execution_mode: str,
              mode_select: str, with_expert: bool, disturbance, exec_params: Dict[str, Any],
              progress=None) -> Tuple[List[RolloutResult], List[RolloutResult]]:
    """The policy's (and the expert's) rollouts at `seeds`, one env each, in seed order."""
    contract = policy.contract
    env = make_env(robot, task, control_rate_hz=contract.control_rate_hz, disturbance=disturbance,
                   cameras=contract.images)
    controller = make_controller(policy, contract, execution_mode, mode_select=mode_select, **exec_params)
    act = policy_act_fn(controller, contract.dt)
    expert_env = (make_env(robot, task, control_rate_hz=contract.control_rate_hz, disturbance=disturbance)
                  if with_expert else None)
    # the reference expert needs no camera: it reads the robot/task's state contract
    expert_contract = _state_contract(expert_env) if with_expert and contract.images else contract
    expert_fn = expert_act_fn(expert_env, expert_contract) if with_expert else None
    results: List[RolloutResult] = []
    experts: List[RolloutResult] = []
    it = progress(seeds) if progress else seeds
    for s in it:
        controller.reset(seed=s)
        results.append(rollout(env, contract, act, s, keep_images=False))
        if with_expert:
            experts.append(rollout(expert_env, expert_contract, expert_fn, s))
    return results, experts


def _rollouts_job(job: Dict[str, Any]) -> Tuple[List[RolloutResult], List[RolloutResult]]:
    """A worker's chunk of `evaluate` (module level: Ray pickles it by reference): its own
    ONNX session (one intra-op thread) and envs."""
    job = dict(job)
    return _rollouts(OnnxPolicy(job.pop("policy"), threads=1), **job)


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
