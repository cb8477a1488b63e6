"""`DaggerConfig`: every setting of a DAgger run, for the in-process and the ROS collectors alike.

Owns the settings (one frozen dataclass instead of ~28 keyword arguments), their validation,
the per-round schedule (`beta`, `rollout_seeds`) and the identity of a run folder
(`round0_identity` / `run_identity`: a folder is only resumed with the settings that made it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ...core.dagger.gates import beta_schedule
from ...core.dagger.params import VARIANTS
from ..dagger_eval import disturbance_key

EVAL_SEEDS = tuple(range(10_000, 10_100))


@dataclass(frozen=True)
class DaggerConfig:
    """One DAgger run: round 0 = BC on `initial_demos` expert demos (seeds 0..n-1; or the given
    `initial_dataset` / `initial_model`), then `rounds` rounds of `episodes_per_round` gated
    rollouts at seeds ``rollout_seed0 + 1000 i + j``, aggregation, retraining from scratch and
    evaluation on `eval_seeds`.

    classic: beta_i = `core.dagger.gates.beta_schedule(i, beta_kind, beta0, beta_decay)` (i = 1 is
    the first DAgger round: 0.5, 0.25, ... by default). robot_gated: an ensemble of
    `ensemble_size` trained on the aggregate, its disagreement threshold = `threshold` or the
    `threshold_quantile` of its disagreement on its own training observations; `query_budget`,
    `release`, `min_expert_ticks` as `core.dagger.params.DaggerParams`. human_gated: a
    `SimulatedHuman` with the `human` keyword arguments.

    chunk_labels: label visited states with the expert's planned K-chunk (K = the model's
    chunk_length); None = on for a chunked policy (K > 1). Without them a labelled frame's chunk
    targets are the labels of the next K frames: for classic DAgger those lie along the
    learner's own drifting path, and a gated variant's expert segment (often shorter than K)
    leaves the rest of the chunk masked out (results/report.md, DAgger section).

    disturbance: `core.sim.disturbance.Pushes` (or dict) during the rollouts, the evaluation and
    the expert references (deployment conditions); `demo_disturbance` for the round-0
    demonstrations (default calm: demonstrations recorded with care).

    out_dir holds ``round_<i>/``; `round0_dir` lets several variants share round 0 (default
    ``out_dir/round_00``); `references_cache` the expert's evaluation paths (default in round 0).
    """
    robot: str = "planar3"
    task: str = "long_horizon"
    variant: str = "classic"
    rounds: int = 5
    episodes_per_round: int = 10
    initial_demos: int = 20
    initial_dataset: Optional[str] = None
    initial_model: Optional[str] = None
    beta_kind: str = "exponential"
    beta0: float = 1.0
    beta_decay: float = 0.5
    model_cfg: Any = None
    train_cfg: Any = None
    execution_mode: str = "temporal_ensembling"
    eval_seeds: Sequence[int] = EVAL_SEEDS
    rollout_seed0: int = 100_000
    ensemble_size: int = 3
    threshold: Optional[float] = None
    threshold_quantile: float = 0.95
    query_budget: int = 150
    release: float = 0.7
    min_expert_ticks: int = 10
    human: Mapping[str, Any] = field(default_factory=dict)
    chunk_labels: Optional[bool] = None
    disturbance: Any = None
    demo_disturbance: Any = None
    out_dir: str = "dagger_runs"
    round0_dir: Optional[str] = None
    references_cache: Optional[str] = None
    eval_workers: int = 1                 # > 1: evaluations fanned out over local Ray processes
    progress: bool = True

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r} not in {VARIANTS}")
        if self.rounds < 0 or self.episodes_per_round < 1:
            raise ValueError(f"rounds must be >= 0 and episodes_per_round >= 1 "
                             f"(got {self.rounds}, {self.episodes_per_round})")
        object.__setattr__(self, "eval_seeds", tuple(int(s) for s in self.eval_seeds))
        object.__setattr__(self, "human", dict(self.human or {}))

    def replace(self, **changes) -> "DaggerConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ schedule
    def beta(self, round_index: int) -> Optional[float]:
        """The classic variant's expert probability in round i >= 1 (None for the gated ones)."""
        if self.variant != "classic":
            return None
        return beta_schedule(round_index, self.beta_kind, self.beta0, self.beta_decay)

    def rollout_seeds(self, round_index: int) -> List[int]:
        return [self.rollout_seed0 + 1000 * round_index + j for j in range(self.episodes_per_round)]

    # ------------------------------------------------------------------ folders
    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def round0(self) -> Path:
        return Path(self.round0_dir) if self.round0_dir is not None else self.out / "round_00"

    def round_dir(self, round_index: int) -> Path:
        return self.round0 if round_index == 0 else self.out / f"round_{round_index:02d}"

    def round0_identity(self, model, train) -> Dict[str, Any]:
        """What round 0 depends on (`model` / `train`: the resolved configs)."""
        dist, demo = disturbance_key(self.disturbance), disturbance_key(self.demo_disturbance)
        out = {"robot": self.robot, "task": self.task, "initial_demos": self.initial_demos,
               "model": model.to_dict(), "train": train.to_dict(), "eval_seeds": list(self.eval_seeds),
               "execution_mode": self.execution_mode,
               # only recorded when set, so folders made before the option stay valid
               **({"disturbance": dist} if dist else {}), **({"demo_disturbance": demo} if demo else {})}
        if self.initial_dataset is not None or self.initial_model is not None:
            out.update(initial_dataset=str(self.initial_dataset), initial_model=str(self.initial_model))
        return out

    def run_identity(self, model, train, chunk_length: int, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """What the rounds of `out_dir` depend on; `extra`: a collector's own settings."""
        return {**self.round0_identity(model, train), "variant": self.variant,
                "episodes_per_round": self.episodes_per_round,
                "beta": [self.beta_kind, self.beta0, self.beta_decay], "ensemble_size": self.ensemble_size,
                "threshold": self.threshold, "threshold_quantile": self.threshold_quantile,
                "query_budget": self.query_budget, "release": self.release,
                "min_expert_ticks": self.min_expert_ticks, "human": dict(self.human),
                "rollout_seed0": self.rollout_seed0,
                # only recorded when on, so folders made before the option stay valid
                **({"chunk_labels": chunk_length} if chunk_length else {}), **dict(extra or {})}
