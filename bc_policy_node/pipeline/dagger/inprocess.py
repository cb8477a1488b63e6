"""DAgger in process: gated rollouts in `SimEnv` with the dagger node's arbiter, labelled by the
scripted expert; fast (no ROS, no bags): a round on long_horizon is ~10 s of rollouts + one
training run.

Owns the in-process `Collector` of the round loop (`InProcessCollector`, `run_dagger`), the
expert's own data (`expert_demos`, `expert_frames`), one gated episode (`DaggerController`:
`core.dagger.arbiter.DaggerArbiter` as hooks of `core.eval.rollout.rollout`), a round's rollouts
(`collect_round`) and the budget-matched BC baseline (`bc_same_budget`)::

    demos  = expert_demos("planar3", "long_horizon", range(20))          # round 0 data
    eps, s = collect_round("planar3", "long_horizon", "classic", "r0/policy.onnx", seeds, round_index=1, beta=0.5)
    records = run_dagger(DaggerConfig(task="long_horizon", variant="classic", rounds=5, out_dir="runs/dagger"))

Variants (`collect_round`):
- ``classic`` (Ross et al. 2011): per tick the expert acts with probability beta_i
  (`core.dagger.gates.BetaGate`), the expert's label is recorded at EVERY visited state;
- ``robot_gated`` (EnsembleDAgger / ThriftyDAgger style): an ensemble of N policies trained
  with different seeds on the same aggregate; when their disagreement
  (`core.dagger.gates.EnsembleDisagreement`, in units of the data's action std) exceeds a threshold
  calibrated on the training observations, the expert takes over (`UncertaintyGate`,
  hysteresis, per-episode query budget). Only expert-acted ticks are labelled;
- ``human_gated`` (HG-DAgger): a simulated human (`core.dagger.gates.SimulatedHuman`) watches the
  end effector against the expert's path for that seed and takes over on deviation > X or a
  stall; only intervention segments are labelled.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...core.contract import Contract
from ...core.control.controller import ActionReference, PolicyController
from ...core.control.runtime import OnnxPolicy
from ...core.dagger.arbiter import DaggerArbiter
from ...core.dagger.gates import GATE_BUDGET, EnsembleDisagreement, SimulatedHuman
from ...core.dagger.params import DaggerParams
from ...core.data.episodes import Episode
from ...core.eval.rollout import RolloutResult, expert_act_fn, make_controller, policy_act_fn, rollout
from ...core.sim.env import SimEnv, load_contract
from ...core.types import ACTOR_POLICY
from ..dagger_eval import Reference, _env, cached_eval, disturbance_key, expert_references, say
from .config import DaggerConfig
from .loop import RoundPlan, run_rounds
from .store import RECORD_FILE, RoundRecord, aggregate, fmt_rate, labels_of, load_round_data, save_round_data
from .training import export_policy, retrain

SOURCE_EXPERT = "expert"


# ============================================================================ expert data
def expert_demos(robot: str, task: str, seeds: Iterable[int], contract: Optional[Contract] = None,
                 round_index: int = 0, disturbance=None) -> List[Episode]:
    """Scripted-expert demonstrations (every frame labelled, source ``expert``); calm unless
    a `disturbance` is given (then the expert's recoveries are in the demonstrations)."""
    contract = contract or load_contract(robot, task)
    env = _env(robot, task, contract, disturbance)
    fn = expert_act_fn(env, contract)
    dt = 1.0 / contract.control_rate_hz
    out = []
    for s in seeds:
        ep = rollout(env, contract, fn, int(s)).episode(dt, SOURCE_EXPERT)
        ep.meta.update(round=round_index, variant="demo", labels=len(ep))
        out.append(ep)
    return out


def expert_frames(robot: str, task: str, n_frames: int, seed0: int = 0,
                  contract: Optional[Contract] = None, disturbance=None) -> List[Episode]:
    """Whole expert demonstrations from seeds seed0, seed0+1, ... until >= n_frames frames
    (the budget-matched BC baseline: same number of expert labels, as demonstrations only)."""
    contract = contract or load_contract(robot, task)
    env = _env(robot, task, contract, disturbance)
    fn = expert_act_fn(env, contract)
    dt = 1.0 / contract.control_rate_hz
    out, total, s = [], 0, int(seed0)
    while total < n_frames:
        ep = rollout(env, contract, fn, s).episode(dt, SOURCE_EXPERT)
        ep.meta.update(round=0, variant="demo", labels=len(ep))
        out.append(ep)
        total += len(ep)
        s += 1
    return out


# ============================================================================ gated rollouts
class DaggerController:
    """One DAgger episode in process: the arbiter of the dagger node
    (`core.dagger.arbiter.DaggerArbiter`, same `DaggerParams`) as hooks for `core.eval.rollout.rollout`.

    The policy controller is stepped on EVERY tick (also while the expert acts), exactly like the
    policy node keeps running while the dagger node switches the command stream: its chunk
    executor stays consistent and hand-backs are smooth. `expert_acts(t, obs)` lets the gate
    decide (human_gated: a `SimulatedHuman` watching the end effector holds the intervention
    switch); the expert is asked only when it acts (classic: `label_fn` labels every state),
    and every executed command goes through the arbiter's safety filter (a hand-over moves a
    joint by at most max_step per tick, as on the robot). `labels` / `labelled` record the
    expert's label per tick.
    """

    def __init__(self, params: DaggerParams, env: SimEnv, contract: Contract, runner: PolicyController,
                 label_fn, *, ensemble: Optional[EnsembleDisagreement] = None,
                 human: Optional[SimulatedHuman] = None):
        self.variant, self.env, self.contract, self.runner = params.variant, env, contract, runner
        self.arbiter = DaggerArbiter(contract, params, ensemble)
        self.human, self.label_fn = human, label_fn
        self._policy_fn = policy_act_fn(runner, contract.dt)
        self._reference = ActionReference(contract)
        self.reasons: List[str] = []
        self.uncertainty: List[float] = []
        self.labels: List[Optional[np.ndarray]] = []

    def reset(self, seed: int) -> None:
        self.runner.reset(seed=seed)
        self.arbiter.begin_episode(seed, seed)
        if self.human is not None:
            self.human.reset()
        self.reasons, self.uncertainty, self.labels = [], [], []

    def decide(self, obs: np.ndarray, t: int, msgs, label: Optional[np.ndarray]) -> Tuple[np.ndarray, int]:
        """`core.eval.rollout.rollout`'s decide_fn: (executed command, actor) for tick t."""
        policy_action = self._policy_fn(obs, t, None)
        intervention = False
        if self.human is not None:
            intervention = self.human.observe(self.env.sim.ee_position()[:self.env.task.dim])
        turn = self.arbiter.gate(obs, t, intervention)
        if label is None and turn.expert_acts:
            label = self.label_fn(obs, msgs, t)
        out = self.arbiter.resolve(turn, self._reference(obs), label, "", policy_action)
        reason = out.reason
        if self.human is not None and turn.expert_acts:
            reason = self.human.reason       # deviation / stall: why the human took over
        self.reasons.append(reason if turn.expert_acts or out.reason == GATE_BUDGET else "")
        self.uncertainty.append(out.uncertainty)
        self.labels.append(out.expert_action)
        return out.command, out.actor


def tag_episode(result: RolloutResult, variant: str, round_index: int, dt: float,
                beta: Optional[float] = None, reasons: Sequence[str] = (),
                uncertainty: Sequence[float] = (), chunk_labels: Optional[np.ndarray] = None,
                labels: Optional[Sequence[Optional[np.ndarray]]] = None) -> Episode:
    """A DAgger rollout as a training episode with its `labelled` mask.

    classic: act = the expert's label at every visited state, all frames labelled.
    gated: act = the expert's label (`labels`, per tick) where the expert acted, labelled only
    there; the policy's own frames carry no label and are excluded from the
    loss (and from the normalization statistics of the actions).
    chunk_labels: optional (T, K, act_dim) expert plans from each visited state (rows of
    unlabelled frames are ignored); stored as `Episode.chunk_labels`, they replace the
    consecutive-frame chunk targets in training.
    """
    if variant == "classic":
        if result.labels is None:
            raise ValueError("classic DAgger needs labels at every visited state (label_fn)")
        act, labelled = result.labels, np.ones(result.steps, dtype=bool)
    else:
        labelled = result.actors != ACTOR_POLICY
        act = result.actions.copy()
        if labels is not None:          # the expert's label, not the step-clamped executed command
            for t in np.flatnonzero(labelled):
                act[t] = labels[t]
    expert_ticks = int((result.actors != ACTOR_POLICY).sum())
    counts: Dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    meta = {"seed": result.seed, "source": f"dagger_{variant}", "round": int(round_index), "variant": variant,
            "success": result.success, "status": result.status, **result.meta,
            "labels": int(labelled.sum()), "expert_ticks": expert_ticks,
            "expert_share": expert_ticks / max(result.steps, 1), "gate_reasons": counts}
    if beta is not None:
        meta["beta"] = float(beta)
    if chunk_labels is not None:
        meta["chunk_labels"] = int(np.asarray(chunk_labels).shape[1])
    if len(uncertainty):
        u = np.asarray(uncertainty, dtype=float)
        meta["uncertainty"] = {"mean": float(u.mean()), "max": float(u.max())}
    return Episode(result.obs, act, np.arange(result.steps) * dt, meta, labelled, chunk_labels)


def collect_round(robot: str, task: str, variant: str, policy, seeds: Iterable[int], round_index: int,
                  beta: float = 0.5, ensemble: Sequence = (), threshold: Optional[float] = None,
                  action_scale=None, query_budget: int = 150, release: float = 0.7,
                  min_expert_ticks: int = 10, references: Optional[Mapping[int, Reference]] = None,
                  human: Optional[Mapping[str, Any]] = None, execution_mode: str = "temporal_ensembling",
                  contract: Optional[Contract] = None, chunk_labels: bool = False,
                  chunk_length: Optional[int] = None, disturbance=None) -> Tuple[List[Episode], Dict[str, Any]]:
    """One round of DAgger data: roll the current `policy` (ONNX path or OnnxPolicy) at each
    seed with the variant's gate and label with the expert. Returns (tagged episodes, stats).

    classic: `beta`; robot_gated: `ensemble` (>= 2 ONNX policies, the first may be `policy`),
    `threshold` (disagreement in action-std units), `action_scale` (action std), `query_budget`
    (expert ticks per episode), `release`, `min_expert_ticks`; human_gated: `references`
    (expert rollouts at those seeds; computed if None) and `human` (SimulatedHuman kwargs).

    chunk_labels: label each labelled visited state with the expert's PLANNED chunk from it,
    `ScriptedExpert.plan_obs(obs, contract, chunk_length, mode)` (K = `chunk_length`, default
    the contract's), stored as `Episode.chunk_labels`; act[t] stays its first action (= act_obs).
    Without it a frame's chunk target k >= 1 is the label at the state the mixture visited k
    ticks later (the learner's own path). plan_obs rolls the goal of the current observation
    only (no waypoint switch inside the chunk).

    disturbance: `core.sim.disturbance.Pushes` (or dict) applied to these rollouts (the simulated
    human's reference paths, if computed here, get the same pushes).
    """
    policy = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
    contract = contract or policy.contract
    env = _env(robot, task, contract, disturbance)
    expert = env.make_expert()
    mode_of = lambda msgs: int(msgs["/task_state"].mode)  # noqa: E731
    label_timer = [0.0, 0]

    K = int(chunk_length or contract.chunk_length)
    plans: Dict[int, np.ndarray] = {}    # tick -> (K, act_dim) plan of the current episode

    def expert_label(obs, msgs, t=None):
        t0 = time.perf_counter()
        if chunk_labels:
            plan = expert.plan_obs(obs, contract, K, mode=mode_of(msgs))
            plans[len(plans) if t is None else int(t)] = plan
            a = plan[0].copy()
        else:
            a = expert.act_obs(obs, contract, mode=mode_of(msgs))
        label_timer[0] += time.perf_counter() - t0
        label_timer[1] += 1
        return a

    seeds = [int(s) for s in seeds]
    runner = make_controller(policy, contract, execution_mode)
    ens = None
    if variant == "robot_gated":
        members = [m if isinstance(m, OnnxPolicy) else OnnxPolicy(m) for m in ensemble]
        if threshold is None:
            raise ValueError("robot_gated needs a disagreement threshold (see calibrate_threshold)")
        ens = EnsembleDisagreement(members, scale=action_scale)
    params = DaggerParams.in_process(variant, beta=beta, uncertainty_threshold=threshold or 1.0,
                                     query_budget=query_budget, release=release, min_expert_ticks=min_expert_ticks)
    if variant == "human_gated" and references is None:
        references = expert_references(robot, task, seeds, contract=contract, disturbance=disturbance)
    dt = 1.0 / contract.control_rate_hz
    episodes, results = [], []
    t_start = time.perf_counter()
    for s in seeds:
        ctl = DaggerController(params, env, contract, runner, expert_label, ensemble=ens,
                               human=(SimulatedHuman(references[s].ee, **dict(human or {}))
                                      if variant == "human_gated" else None))
        ctl.reset(s)
        plans.clear()
        r = rollout(env, contract, None, s, label_fn=expert_label if variant == "classic" else None,
                    decide_fn=ctl.decide)
        results.append(r)
        cl = None
        if chunk_labels:
            # unlabelled (policy) ticks of the gated variants: the executed action held (finite, never in the loss)
            cl = np.repeat(r.actions[:, None, :], K, axis=1)
            for t, plan in plans.items():
                cl[t] = plan
        episodes.append(tag_episode(r, variant, round_index, dt, beta if variant == "classic" else None,
                                    ctl.reasons, ctl.uncertainty, cl, ctl.labels))
    total = time.perf_counter() - t_start
    labels = sum(int(e.labelled.sum()) for e in episodes)
    frames = sum(len(e) for e in episodes)
    reasons: Dict[str, int] = {}
    for e in episodes:
        for k, v in e.meta["gate_reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    stats = {"episodes": len(episodes), "frames": frames, "labels": labels,
             "expert_share": float(np.mean([e.meta["expert_share"] for e in episodes])),
             "rollout_success": float(np.mean([r.success for r in results])),
             "gate_reasons": reasons, "label_seconds": label_timer[0], "label_queries": label_timer[1],
             "rollout_seconds": total - label_timer[0]}
    return episodes, stats


# ============================================================================ the collector
class InProcessCollector:
    """`loop.Collector` in process: `collect_round` with the run's settings."""
    name = "in-process"

    def __init__(self, cfg: DaggerConfig):
        self.cfg = cfg
        self.contract = load_contract(cfg.robot, cfg.task)

    def identity(self) -> Dict[str, Any]:
        return {}

    def collect(self, plan: RoundPlan) -> Tuple[List[Episode], Dict[str, Any]]:
        c = self.cfg
        gate: Dict[str, Any] = {}
        if plan.ensemble is not None:
            gate = dict(ensemble=list(plan.ensemble.members), threshold=plan.ensemble.threshold,
                        action_scale=plan.ensemble.scale)
        new, stats = collect_round(c.robot, c.task, c.variant, plan.policy, plan.seeds, plan.index,
                                   beta=plan.beta if plan.beta is not None else 0.0, query_budget=c.query_budget,
                                   release=c.release, min_expert_ticks=c.min_expert_ticks,
                                   references=plan.references, human=c.human, execution_mode=c.execution_mode,
                                   contract=self.contract, chunk_labels=plan.chunk_labels,
                                   chunk_length=plan.chunk_length, disturbance=c.disturbance, **gate)
        stats["timing"] = {"rollout": stats["rollout_seconds"], "label": stats["label_seconds"]}
        return new, stats

    def deploy(self, round_index: int, policy: Path, extra: Dict[str, Any], timing: Dict[str, float]) -> None:
        pass   # the next round loads the exported file

    def close(self) -> None:
        pass


def run_dagger(cfg: DaggerConfig) -> List[RoundRecord]:
    """DAgger in process (`loop.run_rounds` with `InProcessCollector`); prints the table."""
    from .store import format_table

    records = run_rounds(cfg, InProcessCollector(cfg))
    say(cfg.progress, format_table(records))
    return records


# ============================================================================ the BC baseline
def bc_same_budget(robot: str, task: str, labels: int, out_dir, model_cfg=None, train_cfg=None,
                   eval_seeds: Sequence[int] = tuple(range(10_000, 10_100)), references=None,
                   execution_mode: str = "temporal_ensembling", progress: bool = True,
                   disturbance=None, demo_disturbance=None) -> Dict[str, Any]:
    """Plain BC on the same number of expert labels, as demonstrations only (whole episodes
    from seeds 0, 1, ... until >= `labels` frames; the first ones are round 0's demos),
    recorded under `demo_disturbance` and evaluated under `disturbance` (as `run_dagger`)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    rec_file = d / RECORD_FILE
    key = {"labels_target": int(labels), "demo_disturbance": disturbance_key(demo_disturbance),
           "disturbance": disturbance_key(disturbance)}
    if rec_file.is_file():
        rec = json.loads(rec_file.read_text())
        if all(rec.get(k) == v for k, v in key.items()):
            return rec
    contract = load_contract(robot, task)
    eval_seeds = [int(s) for s in eval_seeds]
    refs = references if references is not None else expert_references(robot, task, eval_seeds, contract=contract,
                                                                        disturbance=disturbance)
    timing = {}
    t0 = time.perf_counter()
    if (d / "data" / "meta.json").is_file():
        demos = load_round_data(d / "data")
    else:
        demos = expert_frames(robot, task, labels, 0, contract, disturbance=demo_disturbance)
        save_round_data(demos, contract, d / "data")
    timing["rollout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retrain(aggregate([demos], contract), model_cfg, train_cfg, d / "run", progress=progress)
    timing["train"] = time.perf_counter() - t0
    onnx = export_policy(run.run_dir, d / "policy.onnx")
    t0 = time.perf_counter()
    ev, _ = cached_eval(onnx, robot, task, eval_seeds, refs, execution_mode, d, progress,
                         f"eval BC {labels} labels", disturbance)
    timing["eval"] = time.perf_counter() - t0
    rec = {**key, "labels": labels_of(demos), "episodes": len(demos),
           "success": ev["success"], "deviation": ev["deviation"], "final_distance": ev["final_distance"],
           "statuses": ev["statuses"], "timing": timing, "policy": str(onnx),
           "deviation_mean_by_t": ev["deviation_mean_by_t"]}
    rec_file.write_text(json.dumps(rec, default=float))
    say(progress, f"[{task}/bc] {len(demos)} demos ({rec['labels']} labels): success {fmt_rate(rec['success'])}")
    return rec
