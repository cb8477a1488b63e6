"""`bc-policy eval`: evaluate an ONNX policy in-process over many seeds (no ROS, no torch);
``--workers N`` fans the seeds out over N Ray worker processes (core/eval/parallel.py: a local,
loopback-only instance unless ``--address`` names a cluster), with the serial results."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.sim.disturbance import Pushes
from ..core.eval.rollout import RolloutResult, evaluate
from ..core.control.runtime import OnnxPolicy


def plot_rollouts(results: Sequence[RolloutResult], experts: Sequence[RolloutResult], path, title: str,
                  max_episodes: int = 12) -> Optional[Path]:
    """2-D end-effector paths (policy solid, expert dashed), goals and obstacles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results or results[0].ee.shape[1] != 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 6))
    colors = plt.cm.tab10.colors
    for i, r in enumerate(results[:max_episodes]):
        c = colors[i % len(colors)]
        ax.plot(r.ee[:, 0], r.ee[:, 1], "-", color=c, lw=1.4, label="policy" if i == 0 else None)
        if i < len(experts):
            e = experts[i]
            ax.plot(e.ee[:, 0], e.ee[:, 1], "--", color=c, lw=1.0, alpha=0.7, label="expert" if i == 0 else None)
        ax.plot(*r.ee[0], "o", color=c, ms=4)
        ax.plot(*r.ee[-1], "x" if not r.success else "*", color=c, ms=8)
        goal = r.meta.get("goal")
        if goal is not None and len(goal) == 2:
            ax.plot(*goal, "o", mfc="none", mec=c, ms=10, label="goal" if i == 0 else None)
        obst = r.meta.get("obstacle")
        if obst is not None and len(obst) >= 3:
            ax.add_patch(plt.Circle(obst[:2], obst[-1], color="0.4", alpha=0.35))
    ax.plot([0], [0], "ks", ms=8, label="base")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_dict(res: Dict) -> Dict:
    """The JSON-able part of core.eval.rollout.evaluate's result."""
    return {k: v for k, v in res.items() if k not in ("results", "experts")}


def format_summary(name: str, res: Dict, seconds: float, workers: int = 1) -> str:
    s = res["success"]
    lines = [f"{'policy':<22}{name}",
             f"{'success':<22}{s['successes']}/{s['n']} = {s['rate']:.1%}  (95% CI {s['ci_low']:.1%} - {s['ci_high']:.1%})",
             f"{'collisions':<22}{res['collision_rate']['rate']:.1%}",
             f"{'outcomes':<22}" + ", ".join(f"{k} {v}" for k, v in res["statuses"].items()),
             f"{'final error':<22}{res['final_error']['mean'] * 100:.1f} cm (mean)"]
    if "deviation" in res:
        lines.append(f"{'deviation from expert':<22}{res['deviation']['mean'] * 100:.1f} cm (mean over time)")
    lines.append(f"{'wall time':<22}{seconds:.1f} s" + (f" ({workers} workers)" if workers > 1 else ""))
    return "\n".join(lines)


def main(args) -> int:
    from tqdm.auto import tqdm

    policy = OnnxPolicy(args.model)
    c = policy.contract
    seeds = range(args.seed, args.seed + args.episodes)
    exec_params = {"m": args.m} if args.execution_mode in ("temporal_ensembling", "mode_consistent") else {}
    workers, address = int(getattr(args, "workers", 1) or 1), getattr(args, "address", None)
    if address and workers <= 1:
        raise SystemExit("bc-policy eval: --address needs --workers N (N > 1 tasks in flight on that cluster)")
    t0 = time.time()
    pushes = Pushes.from_cli(args)
    unit = "ep" if workers <= 1 else "chunk"
    res = evaluate(policy, c.robot, c.task, seeds, execution_mode=args.execution_mode,
                   progress=lambda it: tqdm(it, desc=f"eval {c.task}", unit=unit), disturbance=pushes,
                   workers=workers, address=address, **exec_params)
    secs = time.time() - t0
    print(format_summary(f"{Path(args.model).name} ({policy.model_id}, {policy.kind} K={policy.chunk_length}, "
                         f"{args.execution_mode}{'' if pushes is None else f', pushes {pushes.magnitude:g} rad'})",
                         res, secs, workers))
    if args.plot:
        p = plot_rollouts(res["results"], res["experts"], args.plot,
                          f"{c.task}: policy vs expert, success {res['success']['rate']:.0%}")
        print(f"{'plot':<22}{p}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary_dict(res), indent=1, default=float))
        print(f"{'metrics':<22}{args.json}")
    return 0
