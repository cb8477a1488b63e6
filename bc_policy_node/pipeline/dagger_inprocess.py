"""In-process DAgger: roll out the current policy in `SimEnv` with a gate, label with the
scripted expert, aggregate with everything collected before, retrain, export, evaluate.

Fast (no ROS, no bags): a round on long_horizon is ~10 s of rollouts + one training run.
The pieces are plain functions so the ROS loop (`bc-policy dagger` through the graph) can
reuse the aggregation / retraining / export / evaluation halves unchanged:

    demos  = expert_demos("planar3", "long_horizon", range(20))          # round 0 data
    ds     = aggregate([demos])                                          # -> core Dataset
    run    = retrain(ds, model_cfg, train_cfg, "runs/r0")                # from scratch
    onnx   = export_policy(run.run_dir, "runs/r0/policy.onnx")
    eps, s = collect_round("planar3", "long_horizon", "classic", onnx, seeds, round_index=1, beta=0.5)
    ds     = aggregate([demos, eps])                                     # all earlier data
    ...
    records = run_dagger("planar3", "long_horizon", "classic", rounds=5, out_dir="runs/dagger")

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

Torch is imported only by `retrain` / `export_policy` / `train_ensemble` (via
`bc_policy_node.learning`), so collection and aggregation are usable without it. The expert
references and the evaluation against them live in `dagger_eval`.

Retraining: FROM SCRATCH on the full aggregate every round, with a fixed optimizer-step
budget (not an epoch budget). Reasons: (1) DAgger's guarantee is for the policy trained on the
aggregate, and a from-scratch fit is a pure function of that aggregate (reproducible,
resumable, no dependence on the order rounds were run in); (2) normalization statistics are
part of the exported graph and change as the aggregate grows: a warm-started net would be
fitted under old statistics; (3) `learning.train` resumes only a run on identical data, so a
warm start would need a second training loop. The fixed step budget keeps the cost of a round
constant as the aggregate grows (it does mean fewer epochs over a larger aggregate; the
budget-matched BC baseline gets the same budget, so the comparison is fair).

Round folders (resumable: a finished round has ``record.json``; a partial one restarts from
what is on disk)::

    <round0_dir>/data  run/  policy.onnx  eval.json  dev.npz (time/path deviation)  [ensemble/member_<k>.onnx]
    <out_dir>/round_<i>/data (this round's new episodes only)  run/  policy.onnx  eval.json ...
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.contract import Contract
from ..core.dagger.arbiter import DaggerArbiter
from ..core.dagger.gates import GATE_BUDGET, EnsembleDisagreement, SimulatedHuman, beta_schedule
from ..core.dagger.params import VARIANTS, DaggerParams
from ..core.sim.env import SimEnv, load_contract
from ..core.data.episodes import Dataset, DatasetError, Episode
from ..core.control.controller import PolicyController, position_indices
from ..core.eval.rollout import RolloutResult, expert_act_fn, make_controller, policy_act_fn, rollout
from ..core.control.runtime import OnnxPolicy
from ..core.types import ACTOR_POLICY
from .dagger_eval import Reference, _env, cached_eval, disturbance_key, expert_references, say as _say

SOURCE_EXPERT = "expert"
RECORD_FILE = "record.json"

DEFAULT_CONFIG = "chunk_mlp.yaml"   # every retrain starts from the package's default policy config


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
        self._pos_idx = position_indices(contract)
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
        out = self.arbiter.resolve(turn, obs[self._pos_idx], label, "", policy_action)
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


# ============================================================================ aggregation
def aggregate(parts: Sequence[Sequence[Episode]], contract: Optional[Contract] = None) -> Dataset:
    """All earlier data in one `Dataset` (episodes keep their `labelled` masks and meta)."""
    eps = [e for part in parts for e in part]
    if not eps:
        raise DatasetError("nothing to aggregate")
    if contract is None:
        raise ValueError("aggregate needs the contract")
    return Dataset(contract, eps)


def labels_of(episodes: Iterable[Episode]) -> int:
    """Expert labels (labelled frames) in `episodes`: what the data cost."""
    return int(sum(int(e.labelled.sum()) for e in episodes))


def save_round_data(episodes: Sequence[Episode], contract: Contract, directory) -> Path:
    return Dataset(contract, episodes).save(directory)


def load_round_data(directory) -> List[Episode]:
    return Dataset.load(directory).episodes


# ============================================================================ train / export
@lru_cache(maxsize=1)
def _default_configs():
    from ..graph import config_path
    from ..learning import load_configs

    return load_configs(config_path("train", DEFAULT_CONFIG))


def round_configs(model_cfg, train_cfg, seed: Optional[int] = None):
    """(ModelConfig, TrainConfig) a DAgger retrain uses: given ones as they are, dicts as
    overrides of config/train/chunk_mlp.yaml."""
    from ..learning import ModelConfig, TrainConfig

    m0, t0 = _default_configs()
    m = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict({**m0.to_dict(), **(model_cfg or {})})
    if isinstance(train_cfg, TrainConfig):
        t = train_cfg
    else:
        t = TrainConfig.from_dict({**t0.to_dict(), **(train_cfg or {})})
    if seed is not None:
        t = TrainConfig.from_dict({**t.to_dict(), "seed": int(seed)})
    return m, t


def retrain(dataset: Dataset, model_cfg=None, train_cfg=None, run_dir="run", seed: Optional[int] = None,
            progress: bool = False):
    """Train a policy FROM SCRATCH on the aggregate (resumes an interrupted run on the same
    data). `model_cfg`/`train_cfg`: ModelConfig/TrainConfig or dicts over the default config
    (config/train/chunk_mlp.yaml); `seed` overrides the training seed. Returns `learning.RunResult`."""
    from ..learning import train

    m, t = round_configs(model_cfg, train_cfg, seed)
    return train(dataset, m, t, run_dir, resume=True, progress=progress)


def export_policy(run_dir, onnx_path) -> Path:
    """ONNX export with metadata and the torch/onnxruntime parity check (skipped if present)."""
    from ..learning import export

    onnx_path = Path(onnx_path)
    if onnx_path.is_file():
        return onnx_path
    return export(run_dir, onnx_path)


def train_round(dataset: Dataset, model_cfg, train_cfg, directory: Path, progress: bool,
                timing: Dict[str, float]) -> Path:
    """One round's retrain (from scratch) + export into `directory`; times both into `timing`."""
    t0 = time.perf_counter()
    run = retrain(dataset, model_cfg, train_cfg, directory / "run", progress=progress)
    timing["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    policy = export_policy(run.run_dir, directory / "policy.onnx")
    timing["export"] = time.perf_counter() - t0
    return policy


def train_ensemble(dataset: Dataset, size: int, directory, model_cfg=None, train_cfg=None,
                   first: Optional[Path] = None, seed0: int = 0, progress: bool = False) -> List[Path]:
    """`size` policies on the same data with training seeds seed0, seed0+1, ...; `first` (the
    round's policy, trained with seed0) is reused as member 0. Returns ONNX paths."""
    directory = Path(directory)
    paths = [] if first is None else [Path(first)]
    for k in range(len(paths), size):
        onnx = directory / f"member_{k}.onnx"
        if not onnx.is_file():
            run = retrain(dataset, model_cfg, train_cfg, directory / f"run_{k}", seed=seed0 + k, progress=progress)
            export_policy(run.run_dir, onnx)
        paths.append(onnx)
    return paths


def calibrate_threshold(ensemble: EnsembleDisagreement, obs: np.ndarray, quantile: float = 0.95,
                        max_rows: int = 3000, seed: int = 0) -> Dict[str, float]:
    """Disagreement threshold = `quantile` of the ensemble's disagreement on (a sample of) its
    own training observations: states scoring above it are rarer than 1 - quantile in the data
    the ensemble has seen (ThriftyDAgger calibrates its novelty threshold the same way)."""
    obs = np.asarray(obs, dtype=float)
    if len(obs) > max_rows:
        obs = obs[np.random.default_rng(seed).choice(len(obs), max_rows, replace=False)]
    scores = ensemble.score_chunks(ensemble.chunks(obs))
    return {"threshold": float(np.quantile(scores, quantile)), "quantile": float(quantile),
            "median": float(np.median(scores)), "max": float(scores.max()), "n": int(len(obs))}


# ============================================================================ the loop
@dataclass
class RoundRecord:
    round: int
    variant: str
    beta: Optional[float]
    episodes_new: int
    frames_new: int
    labels_new: int
    frames_total: int
    labels_total: int                      # cumulative expert labels incl. the initial demos
    success: Dict[str, Any]
    deviation: Dict[str, Any]
    final_distance: Dict[str, Any]
    statuses: Dict[str, int]
    collect: Dict[str, Any] = field(default_factory=dict)
    timing: Dict[str, float] = field(default_factory=dict)
    policy: str = ""
    deviation_mean_by_t: List[float] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    def row(self) -> str:
        s = self.success
        return (f"| {self.variant} | {self.round} | {'' if self.beta is None else f'{self.beta:.3g}'} | "
                f"{100 * s['rate']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}] | "
                f"{self.labels_new} | {self.labels_total} | {self.frames_total} | "
                f"{100 * self.deviation['mean']:.2f} |")


TABLE_HEADER = ("| variant | round | beta | success (95% CI) | new labels | labels (cum.) | frames (cum.) | "
                "mean dev. from expert (cm) |\n|---|---|---|---|---|---|---|---|")


def format_table(records: Sequence[RoundRecord]) -> str:
    return "\n".join([TABLE_HEADER] + [r.row() for r in records])


def _record_from(d: Dict[str, Any]) -> RoundRecord:
    return RoundRecord(**d)


def _round_zero(robot, task, contract, demo_seeds, model_cfg, train_cfg, d: Path, eval_seeds, refs,
                execution_mode, progress, disturbance=None, demo_disturbance=None) -> Tuple[List[Episode], Path, Dict[str, Any], np.ndarray, Dict[str, float]]:
    timing = {}
    t0 = time.perf_counter()
    if (d / "data" / "meta.json").is_file():
        demos = load_round_data(d / "data")
    else:
        demos = expert_demos(robot, task, demo_seeds, contract, disturbance=demo_disturbance)
        save_round_data(demos, contract, d / "data")
    timing["rollout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retrain(aggregate([demos], contract), model_cfg, train_cfg, d / "run", progress=progress)
    timing["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx = export_policy(run.run_dir, d / "policy.onnx")
    timing["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev, dev = cached_eval(onnx, robot, task, eval_seeds, refs, execution_mode, d, progress, "eval round 0",
                           disturbance)
    timing["eval"] = time.perf_counter() - t0
    return demos, onnx, ev, dev, timing


def _ensemble_for(d: Path, dataset: Dataset, policy: Path, size: int, model_cfg, train_cfg,
                  quantile: float, progress: bool) -> Tuple[List[Path], Dict[str, Any], np.ndarray]:
    t = round_configs(model_cfg, train_cfg)[1]
    paths = train_ensemble(dataset, size, d / "ensemble", model_cfg, train_cfg, first=policy,
                           seed0=t.seed, progress=progress)
    cal_file = d / "ensemble" / "calibration.json"
    scale = np.maximum(dataset.stats().act_std, 1e-3)
    if cal_file.is_file():
        cal = json.loads(cal_file.read_text())
    else:
        ens = EnsembleDisagreement([OnnxPolicy(p) for p in paths], scale=scale)
        obs = np.concatenate([e.obs for e in dataset.episodes])
        cal = calibrate_threshold(ens, obs, quantile)
        cal_file.write_text(json.dumps(cal))
    return paths, cal, scale


def run_dagger(robot: str = "planar3", task: str = "long_horizon", variant: str = "classic", rounds: int = 5,
               episodes_per_round: int = 10, initial_demos: int = 20, beta_kind: str = "exponential",
               beta0: float = 1.0, beta_decay: float = 0.5, model_cfg=None, train_cfg=None,
               out_dir="dagger_runs", eval_seeds: Sequence[int] = tuple(range(10_000, 10_100)),
               progress: bool = True, round0_dir=None, references_cache=None,
               ensemble_size: int = 3, threshold: Optional[float] = None, threshold_quantile: float = 0.95,
               query_budget: int = 150, release: float = 0.7, min_expert_ticks: int = 10,
               human: Optional[Mapping[str, Any]] = None, rollout_seed0: int = 100_000,
               execution_mode: str = "temporal_ensembling",
               chunk_labels: Optional[bool] = None, disturbance=None,
               demo_disturbance=None) -> List[RoundRecord]:
    """DAgger for `rounds` rounds after round 0 (BC on `initial_demos` expert demos, seeds
    0..initial_demos-1). Round i >= 1: roll the round i-1 policy on `episodes_per_round` seeds
    (rollout_seed0 + 1000 i + j) with the variant's gate, label, aggregate with ALL earlier
    data, retrain from scratch, export, evaluate on `eval_seeds`. beta_i =
    beta_schedule(i, beta_kind, beta0, beta_decay) (classic; i = 1 is the first DAgger round,
    so the default schedule is 0.5, 0.25, ...). Returns one `RoundRecord` per round (0..rounds);
    finished rounds found in `out_dir` are loaded, not recomputed. `round0_dir` lets several
    variants share round 0 (default `out_dir/round_00`). `chunk_labels`: label visited states
    with the expert's planned chunk (`collect_round`); None = on for a chunked policy (K > 1),
    every variant. Without them a labelled frame's chunk targets are the labels of the next K
    frames: for classic DAgger those lie along the learner's own drifting path, and a gated
    variant's expert segment (often shorter than K) leaves the rest of the chunk masked out
    (results/report.md, DAgger section). Round 0's demos are unchanged.

    disturbance: `core.sim.disturbance.Pushes` (or dict) applied to every DAgger rollout, to the
    evaluation and to the expert references (deployment conditions); `demo_disturbance` to the
    round-0 demonstrations (default calm: demonstrations recorded with care)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} not in {VARIANTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r0 = Path(round0_dir) if round0_dir is not None else out / "round_00"
    r0.mkdir(parents=True, exist_ok=True)
    contract = load_contract(robot, task)
    eval_seeds = [int(s) for s in eval_seeds]
    m_cfg, t_cfg = round_configs(model_cfg, train_cfg)
    if chunk_labels is None:
        chunk_labels = m_cfg.chunk_length > 1
    dist, demo_dist = disturbance_key(disturbance), disturbance_key(demo_disturbance)
    base = {"robot": robot, "task": task, "initial_demos": initial_demos, "model": m_cfg.to_dict(),
            "train": t_cfg.to_dict(), "eval_seeds": eval_seeds, "execution_mode": execution_mode,
            # only recorded when set, so folders made before the option stay valid
            **({"disturbance": dist} if dist else {}), **({"demo_disturbance": demo_dist} if demo_dist else {})}
    check_round_config(r0, base)
    check_round_config(out, {**base, "variant": variant, "episodes_per_round": episodes_per_round,
                        "beta": [beta_kind, beta0, beta_decay], "ensemble_size": ensemble_size,
                        "threshold": threshold, "threshold_quantile": threshold_quantile,
                        "query_budget": query_budget, "release": release, "min_expert_ticks": min_expert_ticks,
                        "human": dict(human or {}), "rollout_seed0": rollout_seed0,
                        # only recorded when on, so folders made before the option stay valid
                        **({"chunk_labels": m_cfg.chunk_length} if chunk_labels else {})})
    refs = expert_references(robot, task, eval_seeds,
                             Path(references_cache) if references_cache else r0 / "expert_eval.npz", contract,
                             disturbance)
    human_kw = dict(human or {})

    records: List[RoundRecord] = []
    # ------------------------------------------------------------------ round 0
    rec_file = r0 / RECORD_FILE
    demos, policy, ev, dev, timing = _round_zero(robot, task, contract, range(initial_demos), model_cfg,
                                                 train_cfg, r0, eval_seeds, refs, execution_mode, progress,
                                                 disturbance, demo_disturbance) \
        if not rec_file.is_file() else (load_round_data(r0 / "data"), r0 / "policy.onnx", None, None, None)
    if rec_file.is_file():
        rec0 = _record_from(json.loads(rec_file.read_text()))
    else:
        n = labels_of(demos)
        rec0 = RoundRecord(0, "bc", None, len(demos), sum(len(e) for e in demos), n, sum(len(e) for e in demos),
                           n, ev["success"], ev["deviation"], ev["final_distance"], ev["statuses"],
                           {}, timing, str(policy), ev["deviation_mean_by_t"])
        rec_file.write_text(json.dumps(asdict(rec0), default=float))
    rec0 = RoundRecord(**{**asdict(rec0), "variant": variant})
    records.append(rec0)
    _say(progress, f"[{task}/{variant}] round 0 (BC, {rec0.episodes_new} demos, {rec0.labels_total} labels): "
                   f"success {_fmt_rate(rec0.success)}")
    parts: List[List[Episode]] = [demos]
    cur_dir = r0
    for i in range(1, rounds + 1):
        d = out / f"round_{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        rec_file = d / RECORD_FILE
        if rec_file.is_file():
            rec = _record_from(json.loads(rec_file.read_text()))
            parts.append(load_round_data(d / "data"))
            records.append(rec)
            policy, cur_dir = Path(rec.policy), d
            _say(progress, f"[{task}/{variant}] round {i}: loaded ({_fmt_rate(rec.success)}, {rec.labels_total} labels)")
            continue
        timing: Dict[str, float] = {}
        beta = beta_schedule(i, beta_kind, beta0, beta_decay) if variant == "classic" else None
        seeds = [rollout_seed0 + 1000 * i + j for j in range(episodes_per_round)]
        extra: Dict[str, Any] = {}
        kw: Dict[str, Any] = {}
        prev = aggregate(parts, contract)
        if variant == "robot_gated":
            t0 = time.perf_counter()
            members, cal, scale = _ensemble_for(cur_dir, prev, policy, ensemble_size, model_cfg, train_cfg,
                                                threshold_quantile, progress)
            timing["ensemble_train"] = time.perf_counter() - t0
            thr = threshold if threshold is not None else cal["threshold"]
            extra["threshold"], extra["calibration"] = thr, cal
            kw = dict(ensemble=members, threshold=thr, action_scale=scale, query_budget=query_budget,
                      release=release, min_expert_ticks=min_expert_ticks)
        elif variant == "human_gated":
            kw = dict(references=expert_references(robot, task, seeds, d / "expert_paths.npz", contract,
                                                   disturbance),
                      human=human_kw)
        if (d / "data" / "meta.json").is_file():
            new = load_round_data(d / "data")
            stats = json.loads((d / "collect.json").read_text())
        else:
            new, stats = collect_round(robot, task, variant, policy, seeds, i, beta=beta if beta is not None else 0.0,
                                       execution_mode=execution_mode, contract=contract,
                                       chunk_labels=bool(chunk_labels), chunk_length=m_cfg.chunk_length,
                                       disturbance=disturbance, **kw)
            save_round_data(new, contract, d / "data")
            (d / "collect.json").write_text(json.dumps(stats))
        timing["rollout"], timing["label"] = stats["rollout_seconds"], stats["label_seconds"]
        parts.append(new)
        ds = aggregate(parts, contract)
        _say(progress, f"[{task}/{variant}] round {i}: {len(new)} rollouts"
                       f"{'' if beta is None else f' (beta {beta:.3g})'}, {stats['labels']} new labels "
                       f"(expert share {100 * stats['expert_share']:.0f}%, {stats['gate_reasons']}); "
                       f"aggregate {ds.num_frames} frames -> training")
        policy = train_round(ds, model_cfg, train_cfg, d, progress, timing)
        t0 = time.perf_counter()
        ev, _ = cached_eval(policy, robot, task, eval_seeds, refs, execution_mode, d, progress, f"eval round {i}",
                             disturbance)
        timing["eval"] = time.perf_counter() - t0
        labels_total = labels_of(ds.episodes)
        rec = RoundRecord(i, variant, beta, len(new), stats["frames"], stats["labels"], ds.num_frames,
                          labels_total, ev["success"], ev["deviation"], ev["final_distance"], ev["statuses"],
                          stats, timing, str(policy), ev["deviation_mean_by_t"], extra)
        rec_file.write_text(json.dumps(asdict(rec), default=float))
        records.append(rec)
        cur_dir = d
        _say(progress, f"[{task}/{variant}] round {i}: success {_fmt_rate(rec.success)}, labels {labels_total} "
                       f"(train {timing['train']:.0f} s, eval {timing['eval']:.0f} s)")
    _say(progress, format_table(records))
    return records


def check_round_config(d: Path, cfg: Dict[str, Any]) -> None:
    """Round folders are only reused for the settings that produced them."""
    f = d / "dagger_config.json"
    cfg = json.loads(json.dumps(cfg, default=str))
    if f.is_file():
        old = json.loads(f.read_text())
        if old != cfg:
            diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise ValueError(f"{d} holds DAgger rounds made with other settings ({diff}); "
                             f"use another out_dir or delete it")
    else:
        f.write_text(json.dumps(cfg, indent=1))


def _fmt_rate(s: Mapping[str, Any]) -> str:
    return f"{100 * s['rate']:.0f}% [{100 * s['ci_low']:.0f}, {100 * s['ci_high']:.0f}] (n={s['n']})"


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
    _say(progress, f"[{task}/bc] {len(demos)} demos ({rec['labels']} labels): success {_fmt_rate(rec['success'])}")
    return rec
