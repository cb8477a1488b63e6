"""DAgger's yardsticks: the expert's own rollouts at the evaluation seeds, and policy
evaluation against them (success, deviation from the expert over time, its growth with the
horizon). Cached per policy, seed list and disturbance in the round folders
(``eval.json`` + ``dev.npz``), so an interrupted experiment resumes without re-evaluating.

Used by the DAgger round loop (`pipeline.dagger`) and the
DAgger experiment. numpy + mujoco + onnxruntime only (no torch).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.contract import Contract
from ..core.sim.disturbance import Pushes
from ..core.sim.env import SimEnv, load_contract, make_env
from ..core.eval.metrics import growth_exponent, mean_ci, path_distance_matrix, time_deviation_matrix
from ..core.eval.rollout import RolloutResult, evaluate, expert_act_fn, rollout

EVAL_FILE, DEV_FILE = "eval.json", "dev.npz"


def _env(robot: str, task: str, contract: Contract, disturbance=None) -> SimEnv:
    return make_env(robot, task, control_rate_hz=contract.control_rate_hz, disturbance=disturbance)


def disturbance_key(disturbance) -> Optional[Dict[str, Any]]:
    """The JSON form of a disturbance spec (None when calm), for caches and configs."""
    p = Pushes.from_spec(disturbance)
    return None if p is None else p.to_dict()


@dataclass
class Reference:
    """The expert's own rollout at a seed: its ee path (T+1, d), length and status."""
    seed: int
    ee: np.ndarray
    steps: int
    status: str


def expert_references(robot: str, task: str, seeds: Iterable[int], cache: Optional[Path] = None,
                      contract: Optional[Contract] = None, disturbance=None) -> Dict[int, Reference]:
    """Expert rollouts at `seeds` (deviation baselines, the simulated human's path), cached
    as an npz when `cache` is given (deterministic: same seed and disturbance, same path).
    With a `disturbance` the expert is pushed at the same ticks as the policy it is compared to."""
    seeds = [int(s) for s in seeds]
    dkey = json.dumps(disturbance_key(disturbance))
    if cache is not None and Path(cache).is_file():
        z = np.load(cache, allow_pickle=False)
        same = str(z["disturbance"]) == dkey if "disturbance" in z else dkey == "null"
        if [int(s) for s in z["seeds"]] == seeds and same:
            bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
            return {s: Reference(s, z["ee"][a:b], int(n), str(st)) for s, a, b, n, st in
                    zip(seeds, bounds[:-1], bounds[1:], z["steps"], z["status"])}
    contract = contract or load_contract(robot, task)
    env = _env(robot, task, contract, disturbance)
    fn = expert_act_fn(env, contract)
    refs = {}
    for s in seeds:
        r = rollout(env, contract, fn, s)
        refs[s] = Reference(s, r.ee, r.steps, r.status)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        rs = [refs[s] for s in seeds]
        np.savez(cache, seeds=np.array(seeds), lengths=np.array([len(r.ee) for r in rs]),
                 ee=np.concatenate([r.ee for r in rs]), steps=np.array([r.steps for r in rs]),
                 status=np.array([r.status for r in rs]), disturbance=np.array(dkey))
    return refs


def deviation_matrix(results: Sequence[RolloutResult], references: Mapping[int, Reference],
                     length: int, kind: str = "time") -> np.ndarray:
    """(n, length) end-effector deviation from the expert's rollout at the same seed, per tick.

    kind="time": |ee(t) - ee_expert(t)|, both padded with their final position up to `length`
    (after success the arm holds at the goal; a timed-out policy is compared where it stopped),
    so every episode contributes at every t and the mean has no survivor bias. This counts
    being late as deviation (a policy on the expert's path but slower drifts away in time).
    kind="path": distance from ee(t) to the nearest point of the expert's whole path (time-free:
    only leaving the demonstrated path counts), padded the same way."""
    if kind not in ("time", "path"):
        raise ValueError(f"kind must be 'time' or 'path', got {kind!r}")
    paths, refs = [r.ee for r in results], [references[r.seed].ee for r in results]
    return (time_deviation_matrix if kind == "time" else path_distance_matrix)(paths, refs, length)


def evaluate_policy(policy_path, robot: str, task: str, seeds: Sequence[int],
                    references: Mapping[int, Reference], execution_mode: str = "temporal_ensembling",
                    progress: Optional[Callable] = None,
                    disturbance=None, workers: int = 1) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """core.eval.rollout.evaluate over `seeds` (no expert re-rollouts: `references` are cached,
    made with the same `disturbance`; ``workers > 1``: over that many local Ray processes, same
    results). Returns (JSON-ready summary, {"time": (n, L),
    "path": (n, L)} deviation matrices, L = longest episode + 1, see `deviation_matrix`)."""
    ev = evaluate(str(policy_path), robot, task, list(seeds), execution_mode=execution_mode,
                  with_expert=False, progress=progress, disturbance=disturbance, workers=workers)
    results = ev.pop("results")
    ev.pop("experts", None)
    env_len = max(max(len(r.ee) for r in results), max(len(references[s].ee) for s in seeds))
    devs = {k: deviation_matrix(results, references, env_len, k) for k in ("time", "path")}
    ev["deviation"] = mean_ci(devs["time"].mean(axis=1))
    ev["path_deviation"] = mean_ci(devs["path"].mean(axis=1))
    ev["deviation_mean_by_t"] = devs["time"].mean(axis=0).tolist()
    ev["final_distance"] = mean_ci([r.meta["final_error"] for r in results])
    ev["failed_final_distance"] = [float(r.meta["final_error"]) for r in results if not r.success]
    ev["seeds"] = [int(s) for s in seeds]
    ev["success_by_seed"] = [bool(r.success) for r in results]
    ev["disturbance"] = disturbance_key(disturbance)
    return ev, devs


def deviation_growth(dev: np.ndarray, horizons: Sequence[int], n_boot: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> Dict[str, Any]:
    """Growth of the CUMULATIVE deviation from the expert with the horizon T:
    C(T) = sum_{t < T} d(t) (Ross et al.'s total cost: O(T^2 eps) for BC, O(T eps) for DAgger).

    `growth_exponent` fits log C = alpha log T + c on every (episode, T) pair; its t-interval
    treats the pairs as independent, which they are not (one episode gives all its T), so the
    reported CI is a percentile bootstrap over EPISODES of the exponent of the mean curve
    (the OLS interval is kept as ``ols_ci`` for reference)."""
    dev = np.asarray(dev, dtype=float)
    H = np.array([h for h in horizons if 1 <= h <= dev.shape[1]], dtype=int)
    cum = np.cumsum(dev, axis=1)[:, H - 1]                    # (n, len(H))
    fit = growth_exponent(np.tile(H, len(cum)), cum.reshape(-1), confidence)
    mean_fit = growth_exponent(H, cum.mean(axis=0), confidence)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, len(cum), len(cum))
        m = cum[idx].mean(axis=0)
        if np.all(m > 0):
            boots.append(growth_exponent(H, m)["exponent"])
    lo, hi = (np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2]) if boots else (math.nan, math.nan))
    return {"exponent": mean_fit["exponent"], "ci_low": float(lo), "ci_high": float(hi),
            "r2": mean_fit["r2"], "prefactor": mean_fit["prefactor"],
            "pooled_exponent": fit["exponent"], "ols_ci": [fit["ci_low"], fit["ci_high"]],
            "horizons": H.tolist(), "cumulative_mean": cum.mean(axis=0).tolist(), "n_episodes": int(len(cum)),
            "n_boot": len(boots), "confidence": confidence}


def say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def progress_bar(progress: bool, desc: str):
    """A tqdm wrapper for an iterable of episodes (None when `progress` is off)."""
    if not progress:
        return None
    from tqdm.auto import tqdm
    return lambda it: tqdm(it, desc=desc, unit="ep", leave=False, dynamic_ncols=True)


def cached_eval(onnx, robot, task, seeds, refs, execution_mode, d: Path, progress, desc, disturbance=None,
                workers: int = 1):
    """Evaluation of `onnx` stored in `d` (eval.json + dev.npz), recomputed if missing or stale
    (`workers > 1`: fanned out over Ray, identical results)."""
    if (d / EVAL_FILE).is_file() and (d / DEV_FILE).is_file():
        ev = json.loads((d / EVAL_FILE).read_text())
        z = np.load(d / DEV_FILE)
        if (ev.get("seeds") == [int(s) for s in seeds] and ev.get("policy") == str(onnx) and "path" in z
                and ev.get("disturbance") == disturbance_key(disturbance)):
            return ev, {"time": z["time"], "path": z["path"]}
    ev, devs = evaluate_policy(onnx, robot, task, seeds, refs, execution_mode, progress_bar(progress, desc), disturbance,
                               workers=workers)
    ev["policy"] = str(onnx)
    (d / EVAL_FILE).write_text(json.dumps(ev, default=float))
    np.savez_compressed(d / DEV_FILE, **{k: v.astype(np.float32) for k, v in devs.items()})
    return ev, devs


def deviations_of(policy_dir, robot: str, task: str, seeds: Sequence[int], references: Mapping[int, Reference],
                  execution_mode: str = "temporal_ensembling", progress: bool = False,
                  disturbance=None) -> Dict[str, np.ndarray]:
    """The deviation matrices of the policy in a round (or BC) folder (re-evaluated if needed)."""
    d = Path(policy_dir)
    return cached_eval(d / "policy.onnx", robot, task, seeds, references, execution_mode, d, progress,
                        f"eval {d.name}", disturbance)[1]
