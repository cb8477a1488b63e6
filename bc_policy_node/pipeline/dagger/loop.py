"""The DAgger round loop, written once: round 0, then per round collect -> aggregate -> retrain
-> deploy -> evaluate, resumable from its folders.

Owns the order of a run and what is recorded per round (`RoundRecord`); the rollouts are a
`Collector`'s job: `inprocess.InProcessCollector` (SimEnv, the dagger node's arbiter in
process) or `ros.RosCollector` (the real ROS graph: bridge, policy, dagger, expert and
recorder nodes, datasets built from the recorded bags). Both get the same `RoundPlan`, their
episodes are aggregated, retrained, evaluated and recorded here, identically.

Round 0 = the initial policy: `initial_model`, else BC trained on the initial data
(`initial_dataset`, else `initial_demos` in-process expert demonstrations). Round i >= 1:

1. the variant's gate for the round: classic beta_i; robot_gated an ensemble trained on the
   aggregate so far with its calibrated threshold; human_gated the expert's paths at the
   round's seeds (what the simulated human compares against);
2. `collector.collect(plan)`: gated rollouts of the current policy, labelled by the expert ->
   the round's new episodes + statistics (saved in the round folder before anything else);
3. aggregate with ALL earlier data, retrain from scratch, export (`training`);
4. `collector.deploy(...)`: the ROS collector hot-swaps the model into the running policy node;
5. evaluate in process on `eval_seeds` (`dagger_eval.cached_eval`), record.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from ...core.contract import Contract
from ...core.control.runtime import OnnxPolicy
from ...core.data.episodes import Dataset, Episode
from ...core.sim.env import load_contract
from ..dagger_eval import cached_eval, expert_references, say
from .config import DaggerConfig
from .store import (RoundRecord, aggregate, check_round_config, fmt_rate, has_round_data, labels_of,
                    load_collected, load_record, load_round_data, save_collected, save_record,
                    save_round_data)
from .training import ensemble_for, round_configs, train_round


@dataclass(frozen=True)
class EnsembleGate:
    """robot_gated: the round's ensemble (ONNX paths, member 0 = the round's policy), its
    disagreement threshold and the action scale (std) the disagreement is measured in."""
    members: Tuple[Path, ...]
    threshold: float
    scale: np.ndarray


@dataclass(frozen=True)
class RoundPlan:
    """What a collector rolls out in round `index`."""
    index: int
    directory: Path
    policy: Path                        # the current policy (ONNX)
    seeds: Tuple[int, ...]
    beta: Optional[float]               # classic only
    chunk_labels: bool                  # label visited states with the expert's K-step plan
    chunk_length: int                   # K of the retrained model
    ensemble: Optional[EnsembleGate] = None
    references: Optional[Mapping[int, Any]] = None   # human_gated: the expert's paths at `seeds`


class Collector(Protocol):
    """Where the rollouts of a round happen (in process or through the ROS graph)."""
    name: str

    def identity(self) -> Dict[str, Any]:
        """The collector's own settings that the round folders depend on."""

    def collect(self, plan: RoundPlan) -> Tuple[List[Episode], Dict[str, Any]]:
        """The round's new labelled episodes and statistics (JSON-ready; ``timing`` optional)."""

    def deploy(self, round_index: int, policy: Path, extra: Dict[str, Any], timing: Dict[str, float]) -> None:
        """The round's retrained policy is exported (ROS: hot swap); record into extra/timing."""

    def close(self) -> None:
        ...


def model_id(path) -> str:
    return OnnxPolicy(path).model_id


def chunking(cfg: DaggerConfig) -> Tuple[Any, Any, int, bool]:
    """(ModelConfig, TrainConfig, K, chunk_labels) of a run's retrains."""
    m, t = round_configs(cfg.model_cfg, cfg.train_cfg)
    k = int(m.chunk_length)
    return m, t, k, (k > 1 if cfg.chunk_labels is None else bool(cfg.chunk_labels))


def run_identity(cfg: DaggerConfig, collector: Collector) -> Dict[str, Any]:
    """What the round folders of `cfg.out` depend on (``dagger_config.json``)."""
    m, t, k, chunk_labels = chunking(cfg)
    return cfg.run_identity(m, t, k if chunk_labels else 0, collector.identity())


def initial_demos(cfg: DaggerConfig, contract: Contract) -> List[Episode]:
    """Round 0's data: the given dataset (its contract must be the task's), else the round-0
    folder's demonstrations, else `cfg.initial_demos` new expert demonstrations (saved there)."""
    from .inprocess import expert_demos

    if cfg.initial_dataset is not None:
        ds0 = Dataset.load(cfg.initial_dataset)
        if ds0.contract.fingerprint() != contract.fingerprint():
            raise ValueError(f"dataset {cfg.initial_dataset} was built on contract {ds0.contract.name!r}, not the "
                             f"shipped {contract.name!r}: " + "; ".join(ds0.contract.mismatches(contract)))
        return ds0.episodes
    d = cfg.round0
    if has_round_data(d):
        return load_round_data(d / "data")
    say(cfg.progress, f"[dagger {cfg.task}] {cfg.initial_demos} in-process expert demonstrations (round 0)")
    demos = expert_demos(cfg.robot, cfg.task, range(cfg.initial_demos), contract, disturbance=cfg.demo_disturbance)
    save_round_data(demos, contract, d / "data")
    return demos


def _round_zero(cfg: DaggerConfig, contract: Contract, refs) -> Tuple[List[Episode], Path, RoundRecord]:
    d = cfg.round0
    d.mkdir(parents=True, exist_ok=True)
    policy = Path(cfg.initial_model) if cfg.initial_model is not None else d / "policy.onnx"
    rec = load_record(d)
    timing: Dict[str, float] = {}
    t0 = time.perf_counter()
    demos = initial_demos(cfg, contract)
    timing["rollout"] = time.perf_counter() - t0
    if rec is not None and rec.policy == str(policy):
        return demos, policy, rec
    if cfg.initial_model is None:
        policy = train_round(aggregate([demos], contract), cfg.model_cfg, cfg.train_cfg, d, cfg.progress, timing)
    t0 = time.perf_counter()
    ev = cached_eval(policy, cfg.robot, cfg.task, cfg.eval_seeds, refs, cfg.execution_mode, d, cfg.progress,
                     "eval round 0", cfg.disturbance, cfg.eval_workers)[0]
    timing["eval"] = time.perf_counter() - t0
    n, frames = labels_of(demos), sum(len(e) for e in demos)
    rec = RoundRecord(0, "bc", None, len(demos), frames, n, frames, n, ev["success"], ev["deviation"],
                      ev["final_distance"], ev["statuses"], {}, timing, str(policy),
                      ev.get("deviation_mean_by_t", []), {"model_id": model_id(policy)})
    save_record(d, rec)
    return demos, policy, rec


def _gate(cfg: DaggerConfig, contract: Contract, parts, policy: Path, prev_dir: Path, d: Path,
          seeds: Sequence[int], extra: Dict[str, Any], timing: Dict[str, float]):
    """The round's gate inputs: (EnsembleGate or None, human references or None)."""
    if cfg.variant == "robot_gated":
        t0 = time.perf_counter()
        members, cal, scale = ensemble_for(prev_dir, aggregate(parts, contract), policy, cfg.ensemble_size,
                                           cfg.model_cfg, cfg.train_cfg, cfg.threshold_quantile, cfg.progress)
        timing["ensemble_train"] = time.perf_counter() - t0
        thr = float(cfg.threshold if cfg.threshold is not None else cal["threshold"])
        extra.update(threshold=thr, calibration=cal, ensemble=[str(m) for m in members])
        return EnsembleGate(tuple(members), thr, scale), None
    if cfg.variant == "human_gated":
        return None, expert_references(cfg.robot, cfg.task, seeds, d / "expert_paths.npz", contract, cfg.disturbance)
    return None, None


def run_rounds(cfg: DaggerConfig, collector: Collector,
               on_round: Optional[Callable[[RoundRecord], None]] = None) -> List[RoundRecord]:
    """The whole run (module docstring). Returns one `RoundRecord` per round (0..rounds);
    finished rounds found on disk are loaded, not recomputed; a folder made with other settings
    is refused (ValueError) before anything is started or written in it."""
    m_cfg, t_cfg, k, chunk_labels = chunking(cfg)
    check_round_config(cfg.out, run_identity(cfg, collector))
    check_round_config(cfg.round0, cfg.round0_identity(m_cfg, t_cfg))
    contract = load_contract(cfg.robot, cfg.task)
    cache = Path(cfg.references_cache) if cfg.references_cache else cfg.round0 / "expert_eval.npz"
    refs = (expert_references(cfg.robot, cfg.task, cfg.eval_seeds, cache, contract, cfg.disturbance)
            if cfg.eval_seeds else {})
    tag = f"[{collector.name} {cfg.task}/{cfg.variant}]"

    demos, policy, rec0 = _round_zero(cfg, contract, refs)
    records = [RoundRecord(**{**asdict(rec0), "variant": cfg.variant})]
    say(cfg.progress, f"{tag} round 0 (initial policy, {rec0.episodes_new} episodes, {rec0.labels_total} labels): "
                      f"success {fmt_rate(rec0.success)}")
    parts: List[List[Episode]] = [demos]
    prev_dir = cfg.round0
    try:
        for i in range(1, cfg.rounds + 1):
            d = cfg.round_dir(i)
            d.mkdir(parents=True, exist_ok=True)
            rec = load_record(d)
            if rec is not None:
                parts.append(load_round_data(d / "data"))
                records.append(rec)
                policy, prev_dir = Path(rec.policy), d
                say(cfg.progress, f"{tag} round {i}: done earlier ({fmt_rate(rec.success)}, {rec.labels_total} labels)")
                continue
            timing: Dict[str, float] = {}
            extra: Dict[str, Any] = {}
            beta, seeds = cfg.beta(i), cfg.rollout_seeds(i)
            ensemble, references = _gate(cfg, contract, parts, policy, prev_dir, d, seeds, extra, timing)
            if has_round_data(d):
                new, stats = load_collected(d)
            else:
                plan = RoundPlan(i, d, Path(policy), tuple(seeds), beta, chunk_labels, k, ensemble, references)
                new, stats = collector.collect(plan)
                save_collected(d, new, contract, stats)
            timing.update(stats.get("timing", {}))
            parts.append(new)
            ds = aggregate(parts, contract)
            labels_new = labels_of(new)
            say(cfg.progress, f"{tag} round {i}: {len(new)} rollouts{'' if beta is None else f' (beta {beta:.3g})'}, "
                              f"{labels_new} new labels (expert acted {100 * stats.get('expert_share', 0.0):.0f}%, "
                              f"{stats.get('gate_reasons', {})}); aggregate {ds.num_frames} frames -> training")
            policy = train_round(ds, cfg.model_cfg, cfg.train_cfg, d, cfg.progress, timing)
            extra["model_id"] = model_id(policy)
            collector.deploy(i, policy, extra, timing)
            t0 = time.perf_counter()
            ev = cached_eval(policy, cfg.robot, cfg.task, cfg.eval_seeds, refs, cfg.execution_mode, d, cfg.progress,
                             f"eval round {i}", cfg.disturbance, cfg.eval_workers)[0]
            timing["eval"] = time.perf_counter() - t0
            rec = RoundRecord(i, cfg.variant, beta, len(new), sum(len(e) for e in new), labels_new, ds.num_frames,
                              labels_of(ds.episodes), ev["success"], ev["deviation"], ev["final_distance"],
                              ev["statuses"], stats, timing, str(policy), ev.get("deviation_mean_by_t", []), extra)
            save_record(d, rec)
            records.append(rec)
            prev_dir = d
            say(cfg.progress, f"{tag} round {i}: success {fmt_rate(rec.success)}, labels {rec.labels_total} "
                              f"(rollouts {timing.get('rollout', 0):.0f} s, train {timing['train']:.0f} s, "
                              f"eval {timing['eval']:.0f} s)")
            if on_round is not None:
                on_round(rec)
    finally:
        collector.close()
    return records
