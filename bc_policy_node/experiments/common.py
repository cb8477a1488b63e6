"""Shared helpers of the experiments: in-process demos, cached training/export, evaluation,
teacher-forced errors, interval statistics, plotting style, markdown tables, result dicts.

Everything runs in-process (core.sim.env.SimEnv + core.eval.rollout + learning.train/export +
core.control.runtime.OnnxPolicy); nothing needs ROS. Demonstrations, trained policies and evaluations
are cached under a `cache` directory keyed by content hashes, so a re-run reuses them and a
changed setting retrains only what it changes.

Seeds: demonstrations use episode seeds ``DEMO_SEED0 + i`` (0, 1, ...); evaluations use
``EVAL_SEED0 + i`` (1000, 1001, ...), which no demonstration uses (`eval_seeds(n)`).

Typical use::

    from bc_policy_node.experiments import common as C
    ds = C.collect_demos("curved_reach", 50, cache)
    pol = C.train_cached(ds, C.small_model("mlp"), C.fast_train_config(), cache, tag="mlp")
    ev = C.eval_cached(pol, "curved_reach", C.eval_seeds(100), cache, execution_mode="temporal_ensembling")
    print(C.fmt_rate(ev.success_summary()))
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.contract import Contract
from ..core.sim.env import SimEnv, load_contract, make_env
from ..core.data.episodes import Dataset
from ..core.eval.metrics import mean_ci, success_summary, t_quantile, time_deviation_matrix
from ..core.eval.rollout import RolloutResult, expert_act_fn, make_controller, policy_act_fn, rollout
from ..core.eval.rollout import expert_rollouts as core_expert_rollouts
from ..core.control.runtime import OnnxPolicy
from ..core.types import STATUS_COLLISION

ROBOT = "planar3"
DEMO_SEED0 = 0
EVAL_SEED0 = 1000
COLORS = {"expert": "#222222", "policy": "#d62728", "tf": "#1f77b4", "a": "#1f77b4", "b": "#d62728",
          "c": "#2ca02c", "d": "#9467bd", "e": "#ff7f0e", "f": "#8c564b", "g": "#17becf"}
CYCLE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f", "#bcbd22", "#e377c2"]


# ----------------------------------------------------------------------------- small utils
def log(msg: str) -> None:
    """Progress line on stderr (the runner's console table stays on stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short sha1 of a JSON-able object (sorted keys); used for cache keys."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def eval_seeds(n: int, start: int = EVAL_SEED0) -> List[int]:
    """Held-out evaluation episode seeds (no demonstration uses them)."""
    return list(range(start, start + int(n)))


def to_jsonable(o: Any) -> Any:
    """Numpy scalars/arrays and Paths -> plain Python (for numbers.json)."""
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return to_jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


# ----------------------------------------------------------------------------- demonstrations
def collect_demos(task: str, n_episodes: int, cache: Optional[Path] = None, robot: str = ROBOT,
                  seed0: int = DEMO_SEED0, contract: Optional[Contract] = None,
                  variant: str = "", workers: int = 1) -> Dataset:
    """Scripted-expert demonstrations of `task` (seeds seed0 .. seed0+n-1) as a `Dataset`,
    observed through `contract` (default: the shipped one). Cached under cache/demos.
    ``workers > 1``: rolled out over Ray processes, the same episodes."""
    contract = contract or load_contract(robot, task)
    key = stable_hash([robot, task, n_episodes, seed0, variant, contract.fingerprint()])
    d = Path(cache) / "demos" / f"{task}{'_' + variant if variant else ''}_{n_episodes}_{key}" if cache else None
    if d is not None and (d / "meta.json").is_file():
        return Dataset.load(d)
    results = core_expert_rollouts(robot, task, range(seed0, seed0 + n_episodes), contract, workers=workers,
                                   variant=variant)
    eps = [r.episode(contract.dt, "sim_expert") for r in results]
    ds = Dataset(contract, eps)
    if d is not None:
        ds.save(d)
    return ds


_EXPERT_MEMO: Dict[Tuple, List[RolloutResult]] = {}


def expert_rollouts(task: str, seeds: Sequence[int], contract: Optional[Contract] = None,
                    robot: str = ROBOT, variant: str = "") -> List[RolloutResult]:
    """Scripted-expert rollouts on `seeds` (memoized in this process)."""
    contract = contract or load_contract(robot, task)
    key = (robot, task, variant, contract.fingerprint(), tuple(int(s) for s in seeds))
    if key not in _EXPERT_MEMO:
        _EXPERT_MEMO[key] = core_expert_rollouts(robot, task, seeds, contract, variant=variant)
    return _EXPERT_MEMO[key]


# ----------------------------------------------------------------------------- training
def small_model(kind: str = "chunk_mlp", **kw):
    """`ModelConfig` sized for this shared 2-core machine: width 128, depth 3 (override via kw)."""
    from ..learning import ModelConfig

    kw.setdefault("width", 128)
    kw.setdefault("depth", 3)
    return ModelConfig(kind=kind, **kw)


def fast_train_config(**kw):
    """`TrainConfig` for experiments: 1 thread, 60 epochs, no early stopping (best-val weights
    are still the ones exported), 10% validation episodes, seed 0 (override via kw)."""
    from ..learning import TrainConfig

    kw.setdefault("threads", 1)
    kw.setdefault("max_epochs", 60)
    kw.setdefault("patience", 0)
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("seed", 0)
    return TrainConfig(**kw)


@dataclass
class Trained:
    """A trained + exported policy: ``onnx`` path and ``info`` (configs, losses, timings)."""

    onnx: Path
    info: Dict[str, Any]

    @property
    def best_val_loss(self) -> Optional[float]:
        return self.info.get("best_val_loss")

    def policy(self) -> OnnxPolicy:
        return OnnxPolicy(self.onnx)


def train_cached(ds: Dataset, model_cfg, train_cfg, cache: Path, tag: str = "") -> Trained:
    """Train `model_cfg` on `ds` with `train_cfg` and export to ONNX, or reuse the cached result.

    Key: dataset content hash + both configs (the tag only names the folder; a cached model with
    the same key under another tag is reused). Layout: cache/models/<tag>_<key>/{run/, policy.onnx,
    info.json}. An interrupted run (no info.json) is discarded and retrained.
    """
    from ..learning import export, train

    key = stable_hash([ds.content_hash(), model_cfg.to_dict(), train_cfg.to_dict()])
    d = Path(cache) / "models" / f"{tag + '_' if tag else ''}{key}"
    onnx_path, info_path = d / "policy.onnx", d / "info.json"
    if onnx_path.is_file() and info_path.is_file():
        return Trained(onnx_path, json.loads(info_path.read_text()))
    for other in sorted(d.parent.glob(f"*{key}")):     # same content under another tag
        if (other / "policy.onnx").is_file() and (other / "info.json").is_file():
            return Trained(other / "policy.onnx", json.loads((other / "info.json").read_text()))
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.time()
    res = train(ds, model_cfg, train_cfg, d / "run", progress=False)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export(d / "run", onnx_path)
    finally:
        torch.set_num_threads(threads)
    # keep the cache small: the best weights + history stay, the resumable checkpoint goes
    (d / "run" / "checkpoint_last.pt").unlink(missing_ok=True)
    info = {"tag": tag, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "data_hash": ds.content_hash(), "num_frames": ds.num_frames, "num_episodes": len(ds),
            "best_val_loss": res.best_val_loss, "best_epoch": res.best_epoch, "epochs": res.epochs,
            "final_train_loss": res.final_train_loss, "train_seconds": res.train_seconds,
            "wall_seconds": time.time() - t0, "num_parameters": res.num_parameters,
            "val_loss_by_epoch": [h.get("val_loss") for h in res.history],
            "train_loss_by_epoch": [h.get("train_loss") for h in res.history]}
    info_path.write_text(json.dumps(to_jsonable(info), indent=1))
    log(f"trained {tag or model_cfg.kind} in {info['wall_seconds']:.0f}s "
        f"(val {res.best_val_loss if res.best_val_loss is not None else float('nan'):.4f})")
    return Trained(onnx_path, info)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Closed-loop evaluation of one policy + execution setting over many seeds.

    Per episode: ``status``, ``steps``, ``final_error`` (m), ``ee`` path (T+1, d), ``start``/``goal``/
    ``obstacle`` of the task, ``act_err`` (T,) |policy action - expert label| at the states the
    policy visited (rad, only with ``label=True``), ``exec_stats`` (executor counters).
    """

    seeds: List[int]
    status: List[str]
    steps: List[int]
    final_error: List[float]
    ee: List[np.ndarray]
    goal: List[np.ndarray]
    obstacle: List[np.ndarray]
    act_err: Optional[List[np.ndarray]] = None
    exec_stats: List[Dict[str, int]] = field(default_factory=list)
    setting: Dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> np.ndarray:
        return np.array([s == "success" for s in self.status])

    def success_summary(self) -> Dict[str, Any]:
        return success_summary(self.success)

    def rate_of(self, status: str) -> Dict[str, Any]:
        return success_summary([s == status for s in self.status])

    def collision_summary(self) -> Dict[str, Any]:
        return self.rate_of(STATUS_COLLISION)

    def statuses(self) -> Dict[str, int]:
        return {s: self.status.count(s) for s in sorted(set(self.status))}

    def deviation(self, experts: Sequence[RolloutResult], horizon: Optional[int] = None) -> np.ndarray:
        """(n, T) ee distance to the expert's path of the same seed at each tick (m); both paths
        are held at their last position after their episode ended (the arm holds)."""
        return time_deviation_matrix(self.ee, [e.ee for e in experts], horizon)

    def exec_total(self, key: str) -> int:
        return int(sum(s.get(key, 0) for s in self.exec_stats))


def nan_pad(rows: Sequence[np.ndarray], T: Optional[int] = None) -> np.ndarray:
    """Stack 1-D arrays of different length into (n, T) with NaN past each one's end."""
    T = T or max((len(r) for r in rows), default=0)
    out = np.full((len(rows), T), np.nan)
    for i, r in enumerate(rows):
        out[i, :min(len(r), T)] = np.asarray(r, dtype=float)[:T]
    return out


def evaluate_policy(policy: Union[OnnxPolicy, str, Path, Trained], task: str, seeds: Sequence[int],
                    execution_mode: str = "temporal_ensembling", mode_select: str = "argmax",
                    label: bool = False, robot: str = ROBOT, variant: str = "",
                    **exec_params) -> EvalResult:
    """Closed-loop rollouts of `policy` on `seeds` with the node's executor + safety filter
    (`core.control.controller.PolicyController`). `label=True` also queries the expert at every visited state
    and records |policy action - expert label| per tick. The controller's RNG (mode_select="sample")
    is reseeded with each episode seed."""
    if isinstance(policy, Trained):
        policy = policy.onnx
    pol = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
    contract = pol.contract
    env = make_env(robot, task, control_rate_hz=contract.control_rate_hz, cameras=contract.images)
    runner = make_controller(pol, contract, execution_mode, mode_select=mode_select, **exec_params)
    act = policy_act_fn(runner, contract.dt)
    label_fn = None
    if label:   # the expert reads the state (for a camera contract: the shipped state contract)
        expert_fn = expert_act_fn(SimEnv(robot, task, control_rate_hz=contract.control_rate_hz), contract)

        def label_fn(obs, msgs):
            return expert_fn(obs, 0, msgs)
    out = EvalResult([], [], [], [], [], [], [], [] if label else None, [],
                     {"task": task, "execution_mode": execution_mode, "mode_select": mode_select,
                      "exec_params": runner.params.executor_kwargs(), "model_id": pol.model_id, "variant": variant})
    for s in seeds:
        runner.reset(seed=int(s))
        r = rollout(env, contract, act, int(s), variant=variant, label_fn=label_fn, keep_images=False)
        out.seeds.append(int(s))
        out.status.append(r.status)
        out.steps.append(int(r.steps))
        out.final_error.append(float(r.meta["final_error"]))
        out.ee.append(r.ee.astype(np.float32))
        out.goal.append(np.asarray(env.task.goal, dtype=float).copy())
        out.obstacle.append(np.asarray(env.task.obstacle, dtype=float).copy())
        out.exec_stats.append(runner.executor.stats())
        if label:
            out.act_err.append(np.linalg.norm(r.actions - r.labels, axis=1).astype(np.float32))
    return out


def eval_cached(policy: Union[Trained, str, Path], task: str, seeds: Sequence[int],
                cache: Optional[Path] = None, execution_mode: str = "temporal_ensembling",
                mode_select: str = "argmax", label: bool = False, robot: str = ROBOT,
                variant: str = "", **exec_params) -> EvalResult:
    """`evaluate_policy`, cached under cache/evals by (model_id, task, seeds, setting)."""
    path = policy.onnx if isinstance(policy, Trained) else Path(policy)
    pol = OnnxPolicy(path)
    key = stable_hash([pol.model_id, robot, task, variant, list(map(int, seeds)), execution_mode,
                       mode_select, label, exec_params])
    f = Path(cache) / "evals" / f"{key}.pkl" if cache else None
    if f is not None and f.is_file():
        with f.open("rb") as fh:
            return pickle.load(fh)
    ev = evaluate_policy(pol, task, seeds, execution_mode, mode_select, label, robot, variant, **exec_params)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(ev, fh)
        tmp.replace(f)
    return ev


def teacher_forced(policy: Union[OnnxPolicy, Trained, str, Path], experts: Sequence[RolloutResult],
                   robot: str = ROBOT) -> Dict[str, np.ndarray]:
    """The policy on the expert's own states (no closed loop): for every tick of every expert
    rollout, |policy's first action - expert's action| (rad; the policy's action passed through
    the safety filter's limit + max_step clamp like in closed loop; ``act_err_raw`` without it)
    and the distance between the ee
    positions the two targets lead to (m; the servos reach a target within one tick, so this is
    the one-step ee error). For chunk policies also the RMS error of the whole chunk against the
    expert's next K actions (within the episode). Returns (n, T) NaN-padded arrays
    ``act_err``, ``ee_err``, ``chunk_err``."""
    if isinstance(policy, Trained):
        policy = policy.onnx
    pol = policy if isinstance(policy, OnnxPolicy) else OnnxPolicy(policy)
    contract = pol.contract
    env = SimEnv(robot, contract.task, control_rate_hz=contract.control_rate_hz)
    sim = env.sim
    jidx = [list(sim.joint_names).index(j) for j in contract.action.joints]
    base_q = sim.home_q.copy()
    lo, hi = np.asarray(contract.action.lower), np.asarray(contract.action.upper)
    step = np.asarray(contract.action.max_step)
    q_sl = contract.obs_slice("joint_pos")
    q_order = [list(contract.observation[[t.name for t in contract.observation].index("joint_pos")].joints
                    or contract.action.joints).index(j) for j in contract.action.joints]
    act_err, raw_err, ee_err, chunk_err = [], [], [], []
    for e in experts:
        chunks = pol.predict_chunk(e.obs)                     # (T, K, A)
        a_raw, a_ex = chunks[:, 0], e.actions
        # what the safety filter would have sent: within limits and max_step of the previous
        # command (the expert's previous action; the measured position at tick 0)
        ref = np.vstack([e.obs[:1, q_sl][:, q_order], a_ex[:-1]])
        a_pi = np.clip(np.clip(a_raw, lo, hi), ref - step, ref + step)
        act_err.append(np.linalg.norm(a_pi - a_ex, axis=1))
        raw_err.append(np.linalg.norm(a_raw - a_ex, axis=1))
        ee = []
        for p, x in zip(a_pi, a_ex):
            qp, qx = base_q.copy(), base_q.copy()
            qp[jidx], qx[jidx] = p, x
            ee.append(np.linalg.norm(sim.fk(qp)[:sim.task_dim] - sim.fk(qx)[:sim.task_dim]))
        ee_err.append(np.array(ee))
        K, T = chunks.shape[1], len(a_ex)
        idx = np.arange(T)[:, None] + np.arange(K)[None, :]
        valid = idx < T
        tgt = a_ex[np.minimum(idx, T - 1)]
        se = ((chunks - tgt) ** 2).sum(-1) * valid
        chunk_err.append(np.sqrt(se.sum(1) / valid.sum(1)))
    return {"act_err": nan_pad(act_err), "act_err_raw": nan_pad(raw_err), "ee_err": nan_pad(ee_err),
            "chunk_err": nan_pad(chunk_err)}


# ----------------------------------------------------------------------------- bimodal helpers
def passing_side(ee: np.ndarray, goal: np.ndarray, obstacle: np.ndarray) -> int:
    """Which side of the obstacle a path passed, in the bimodal expert's frame: +1 = left of the
    obstacle->goal direction (the expert's mode 0), -1 = right (mode 1), 0 = never got past the
    obstacle (the along-track coordinate never reached the obstacle's)."""
    o = np.asarray(obstacle[:2], dtype=float)
    u = np.asarray(goal[:2], dtype=float) - o
    u /= max(np.linalg.norm(u), 1e-9)
    n = np.array([-u[1], u[0]])
    rel = np.asarray(ee[:, :2], dtype=float) - o
    a, b = rel @ u, rel @ n
    past = np.flatnonzero(a >= 0.0)
    if len(past) == 0:
        return 0
    return 1 if b[past[0]] > 0 else -1


def side_counts(ev: EvalResult) -> Dict[str, int]:
    """{mode0, mode1, none}: episodes that passed left (+1) / right (-1) / never passed."""
    sides = [passing_side(e, g, o) for e, g, o in zip(ev.ee, ev.goal, ev.obstacle)]
    return {"mode0": sides.count(1), "mode1": sides.count(-1), "none": sides.count(0)}


# ----------------------------------------------------------------------------- statistics
def rate(outcomes: Iterable[bool]) -> Dict[str, Any]:
    """Success-style summary with a 95% Wilson interval (`core.eval.metrics.success_summary`)."""
    return success_summary(list(outcomes))


def fmt_rate(s: Dict[str, Any], digits: int = 0) -> str:
    """'41% [32, 51]' from a success_summary dict."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(100 * s['rate'])}% [{f.format(100 * s['ci_low'])}, {f.format(100 * s['ci_high'])}]"


def fmt_mean(m: Dict[str, Any], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """'12.3 ± 1.1 mm'-style from a mean_ci dict (± = half-width of the 95% interval)."""
    if m["n"] < 2 or not math.isfinite(m["ci_high"]):
        return f"{m['mean'] * scale:.{digits}f}{unit}"
    half = 0.5 * (m["ci_high"] - m["ci_low"]) * scale
    return f"{m['mean'] * scale:.{digits}f} ± {half:.{digits}f}{unit}"


def ci(values: Iterable[float]) -> Dict[str, Any]:
    """Mean with a 95% Student-t interval (`core.eval.metrics.mean_ci`), NaNs dropped."""
    x = np.asarray(list(values), dtype=float)
    return mean_ci(x[np.isfinite(x)])


def band(mat: np.ndarray, min_n: int = 10) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and 95% t interval of an (n, T) matrix (NaN = missing); columns with
    fewer than `min_n` values are NaN. Returns (mean, lo, hi, count)."""
    mat = np.asarray(mat, dtype=float)
    cnt = np.sum(np.isfinite(mat), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(mat, axis=0)
            sd = np.nanstd(mat, axis=0, ddof=1)
        crit_of = {int(c): t_quantile(0.975, int(c) - 1) for c in np.unique(cnt) if c >= 2}
        crit = np.array([crit_of.get(int(c), np.nan) for c in cnt])
        half = crit * sd / np.sqrt(cnt)
    bad = cnt < min_n
    mean, lo, hi = mean.copy(), mean - half, mean + half
    mean[bad] = lo[bad] = hi[bad] = np.nan
    return mean, lo, hi, cnt


def interval_over_seeds(values: Sequence[float]) -> Dict[str, Any]:
    """Interval over training seeds (t-based; needs >= 2 values)."""
    return mean_ci(np.asarray(values, dtype=float))


def pooled_rate(evals: Sequence[EvalResult], status: str = "success") -> Dict[str, Any]:
    """Rate of `status` pooled over several evaluations (e.g. training seeds) with a Wilson
    interval over all their episodes."""
    return success_summary([s == status for ev in evals for s in ev.status])


def paired_diff(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> Dict[str, Any]:
    """Difference of two success rates measured on the *same* episodes (same seeds, same model):
    rate(a) - rate(b) with a Wald interval for paired proportions (uses the discordant pairs).
    Returns {n, diff, ci_low, ci_high, a_only, b_only}."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = int(a.size)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n == 0:
        return {"n": 0, "diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "a_only": 0, "b_only": 0}
    d = (a_only - b_only) / n
    se = math.sqrt(max(a_only + b_only - (a_only - b_only) ** 2 / n, 0.0)) / n
    from ..core.eval.metrics import normal_quantile
    z = normal_quantile(0.5 + confidence / 2.0)
    return {"n": n, "diff": d, "ci_low": d - z * se, "ci_high": d + z * se, "a_only": a_only, "b_only": b_only}


def fmt_diff(p: Dict[str, Any]) -> str:
    """'-8 pts [-12, -4]' from a paired_diff dict."""
    return f"{100 * p['diff']:+.0f} pts [{100 * p['ci_low']:+.0f}, {100 * p['ci_high']:+.0f}]"


# ----------------------------------------------------------------------------- tables
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plotting
def plt():
    """matplotlib.pyplot with the Agg backend and the experiments' style."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as _plt

    _plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10,
                          "axes.labelsize": 9, "legend.fontsize": 8, "axes.grid": True, "grid.alpha": 0.3,
                          "axes.spines.top": False, "axes.spines.right": False,
                          "axes.prop_cycle": matplotlib.cycler(color=CYCLE)})
    return _plt


def plot_band(ax, mat: np.ndarray, label: str, color: Optional[str] = None, scale: float = 1.0,
              t: Optional[np.ndarray] = None, min_n: int = 10, ls: str = "-") -> None:
    """Mean line + shaded 95% interval of an (n, T) matrix against tick index (or `t`)."""
    mean, lo, hi, _ = band(mat, min_n)
    x = np.arange(len(mean)) if t is None else t
    line, = ax.plot(x, mean * scale, label=label, color=color, lw=1.6, ls=ls)
    ax.fill_between(x, lo * scale, hi * scale, color=line.get_color(), alpha=0.22, lw=0)


def plot_scene(ax, goal=None, obstacle=None, start=None) -> None:
    """Goal star, start dot and obstacle disc on a 2-D task-space axis."""
    import matplotlib.patches as mp

    if obstacle is not None and len(obstacle) >= 3:
        ax.add_patch(mp.Circle(obstacle[:2], obstacle[-1], color="0.55", alpha=0.6, lw=0, zorder=1))
    if goal is not None:
        ax.plot(goal[0], goal[1], marker="*", ms=10, color="goldenrod", mec="k", mew=0.5, zorder=5, ls="")
    if start is not None:
        ax.plot(start[0], start[1], marker="o", ms=5, color="k", zorder=5, ls="")


def savefig(fig, path: Path, quantize: bool = True) -> str:
    """Save (tight) and close; returns the path as str. PNGs are re-encoded with a 256-colour
    palette (about 3x smaller, visually the same for line plots) to keep committed results small."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as _plt
    _plt.close(fig)
    if quantize and path.suffix.lower() == ".png":
        try:
            from PIL import Image

            with Image.open(path) as im:
                q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                               dither=Image.Dither.NONE)
            q.save(path, optimize=True)
        except Exception:  # noqa: BLE001 - keep the full-colour file if Pillow is missing or old
            pass
    return str(path)


# ----------------------------------------------------------------------------- results
def experiment_result(name: str, title: str, out_dir: Path, figures: Sequence[str],
                      captions: Dict[str, str], table_md: str, numbers: Dict[str, Any],
                      headline: str) -> Dict[str, Any]:
    """The dict every experiment's `run()` returns (see experiments/__init__.py); also writes
    out_dir/numbers.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = to_jsonable(numbers)
    (out_dir / "numbers.json").write_text(json.dumps(numbers, indent=1))
    return {"name": name, "title": title, "figures": [str(f) for f in figures],
            "captions": {str(k): v for k, v in captions.items()}, "table_md": table_md,
            "numbers": numbers, "headline": headline}


def task_scene(task: str, seed: int, robot: str = ROBOT, variant: str = "") -> Dict[str, np.ndarray]:
    """Start ee, goal, obstacle and waypoints of episode `seed` (for drawing paths)."""
    env = SimEnv(robot, task)
    msgs = env.reset(int(seed), variant)
    ts = msgs["/task_state"]
    return {"start": np.asarray(ts.ee_position, dtype=float), "goal": np.asarray(ts.goal, dtype=float),
            "obstacle": np.asarray(env.task.obstacle, dtype=float),
            "waypoints": np.asarray(env.task.waypoints, dtype=float),
            "base": np.asarray(env.sim.base_position[:2], dtype=float)}
