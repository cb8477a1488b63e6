"""Training of a DAgger round: retrain from scratch on the aggregate, export, the ensemble.

Owns the training side of a round for both collectors: the model/training configs of a
retrain (`round_configs`, overrides of config/train/chunk_mlp.yaml), the retrain + export
(`retrain`, `export_policy`, `train_round`) and the robot-gated variant's ensemble with its
calibrated disagreement threshold (`train_ensemble`, `calibrate_threshold`, `ensemble_for`).
Torch is imported only inside these functions (via `bc_policy_node.learning`), so collection and
aggregation stay usable without it.

Retraining: FROM SCRATCH on the full aggregate every round, with a fixed optimizer-step
budget (not an epoch budget). Reasons: (1) DAgger's guarantee is for the policy trained on the
aggregate, and a from-scratch fit is a pure function of that aggregate (reproducible,
resumable, no dependence on the order rounds were run in); (2) normalization statistics are
part of the exported graph and change as the aggregate grows: a warm-started net would be
fitted under old statistics; (3) `learning.train` resumes only a run on identical data, so a
warm start would need a second training loop. The fixed step budget keeps the cost of a round
constant as the aggregate grows (it does mean fewer epochs over a larger aggregate; the
budget-matched BC baseline gets the same budget, so the comparison is fair).
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...core.control.runtime import OnnxPolicy
from ...core.dagger.gates import EnsembleDisagreement
from ...core.data.episodes import Dataset

DEFAULT_CONFIG = "chunk_mlp.yaml"   # every retrain starts from the package's default policy config


@lru_cache(maxsize=1)
def _default_configs():
    from ...graph import config_path
    from ...learning import load_configs

    return load_configs(config_path("train", DEFAULT_CONFIG))


def round_configs(model_cfg, train_cfg, seed: Optional[int] = None):
    """(ModelConfig, TrainConfig) a DAgger retrain uses: given ones as they are, dicts as
    overrides of config/train/chunk_mlp.yaml."""
    from ...learning import ModelConfig, TrainConfig

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
    from ...learning import train

    m, t = round_configs(model_cfg, train_cfg, seed)
    return train(dataset, m, t, run_dir, resume=True, progress=progress)


def export_policy(run_dir, onnx_path) -> Path:
    """ONNX export with metadata and the torch/onnxruntime parity check (skipped if present)."""
    from ...learning import export

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


def ensemble_for(d: Path, dataset: Dataset, policy: Path, size: int, model_cfg, train_cfg,
                 quantile: float, progress: bool) -> Tuple[List[Path], Dict[str, Any], np.ndarray]:
    """robot_gated: `size` members trained on `dataset` in `d/ensemble` (member 0 = `policy`),
    and the `quantile` threshold of their disagreement on its observations (cached in
    calibration.json). Returns (member ONNX paths, calibration, action scale)."""
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
