#!/usr/bin/env python3
"""Meta-World tasks through core/sim/metaworld_env.py: step rate and scripted-expert success.

    python bench/bench_metaworld_env.py [--tasks mt10|all|reach-v3,push-v3] [--seeds 10] [--steps 1500]

Needs `metaworld` (pip install metaworld==3.1.1, which pins mujoco==3.3.0). Per task:
- `MetaWorldEnv.step` steps/s with the scripted expert in the loop (`--steps` steps, resetting at
  the horizon, not stopping at success), and the split: env.step us / expert us per step;
- `get_state` + `set_state` us (one chunk label = one copy, K expert steps, one restore);
- expert success over seeds 0..`--seeds`-1 (an episode succeeds when any step reports
  `info["success"]`, within metaworld's 500-step horizon), Wilson 95% interval, steps to success;
- the same expert on the same seeds through the package (robot sawyer, task metaworld/<name>:
  the generated contract, `core.eval.rollout` with the safety filter and workspace box, what
  the bridge and the experiments run): success, and the seeds where it differs from the raw env.
  `--tasks all` runs every discovered task: nothing in the package lists tasks.
Prints a table and writes bench/results/metaworld_env.json (versions, os.getloadavg()).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.eval.metrics import success_summary  # noqa: E402
from bc_policy_node.core.eval.rollout import expert_rollouts  # noqa: E402
from bc_policy_node.core.sim.metaworld_env import MetaWorldEnv, available_tasks  # noqa: E402

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def bench_rate(env: MetaWorldEnv, steps: int) -> dict:
    expert = env.expert()
    obs = env.reset(0)
    t_env = t_exp = 0.0
    episode_seed = 0
    for _ in range(steps):
        if env.done:
            episode_seed += 1
            obs = env.reset(episode_seed)
        t0 = time.perf_counter()
        a = expert(obs)
        t1 = time.perf_counter()
        obs, _, _ = env.step(a)
        t2 = time.perf_counter()
        t_exp += t1 - t0
        t_env += t2 - t1
    # state copies, 200 of each from a mid-episode state
    env.reset(1)
    for _ in range(50):
        env.step(expert(env.observation()))
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        s = env.get_state()
    t1 = time.perf_counter()
    for _ in range(n):
        env.set_state(s)
    t2 = time.perf_counter()
    return {"steps": steps, "steps_per_s_with_expert": steps / (t_env + t_exp),
            "steps_per_s_env_only": steps / t_env, "env_step_us": 1e6 * t_env / steps,
            "expert_us": 1e6 * t_exp / steps, "get_state_us": 1e6 * (t1 - t0) / n,
            "set_state_us": 1e6 * (t2 - t1) / n}


def bench_success(env: MetaWorldEnv, seeds: int) -> dict:
    outcomes, to_success, failed = [], [], []
    t0 = time.perf_counter()
    for seed in range(seeds):
        r = env.rollout_expert(seed)
        outcomes.append(r["success"])
        if r["success"]:
            to_success.append(r["steps"])
        else:
            failed.append(seed)
    s = success_summary(outcomes)
    s.update(horizon=env.horizon, failed_seeds=failed,
             mean_steps_to_success=float(np.mean(to_success)) if to_success else None,
             max_steps_to_success=int(np.max(to_success)) if to_success else None,
             wall_s=time.perf_counter() - t0)
    return s


def bench_engine(task: str, seeds: int, raw_failed) -> dict:
    """The expert through the package's contract and rollout engine on the same seeds."""
    t0 = time.perf_counter()
    res = expert_rollouts("sawyer", f"metaworld/{task}", range(seeds))
    s = success_summary([r.success for r in res])
    failed = [seed for seed, r in zip(range(seeds), res) if not r.success]
    s.update(failed_seeds=failed, differs_at=sorted(set(failed) ^ set(raw_failed)),
             wall_s=time.perf_counter() - t0)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="mt10", help="mt10, all, or comma-separated task names")
    ap.add_argument("--seeds", type=int, default=10, help="expert episodes per task (seeds 0..n-1)")
    ap.add_argument("--steps", type=int, default=1500, help="env steps per rate measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "metaworld_env.json"))
    args = ap.parse_args()

    tasks = {"mt10": MT10, "all": available_tasks()}.get(args.tasks, None) or args.tasks.split(",")
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows = []
    for task in tasks:
        t0 = time.perf_counter()
        env = MetaWorldEnv(task)
        ctor_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        env.reset(0)
        reset_ms = 1e3 * (time.perf_counter() - t0)
        row = {"task": task, "construct_s": ctor_s, "reset_ms": reset_ms}
        row.update(bench_rate(env, args.steps))
        row["expert_success"] = bench_success(env, args.seeds)
        row["engine_success"] = bench_engine(task, args.seeds, row["expert_success"]["failed_seeds"])
        rows.append(row)
        s, e = row["expert_success"], row["engine_success"]
        print(f"{task:30s} {s['successes']:2d}/{s['n']:<2d} engine {e['successes']:2d}/{e['n']:<2d} "
              f"steps/s {row['steps_per_s_with_expert']:6.0f}", flush=True)
    load_after = os.getloadavg()

    print(f"\n{'task':30s} {'success':>8s} {'95% Wilson':>14s} {'engine':>7s} {'to success':>10s} {'steps/s':>8s} "
          f"{'env us':>7s} {'expert us':>9s} {'get us':>7s} {'set us':>7s} {'reset ms':>8s}  failed seeds")
    for r in rows:
        s, e = r["expert_success"], r["engine_success"]
        mean = f"{s['mean_steps_to_success']:.0f}" if s["mean_steps_to_success"] is not None else "-"
        print(f"{r['task']:30s} {s['successes']:4d}/{s['n']:<3d} [{s['ci_low']:.2f}, {s['ci_high']:.2f}] "
              f"{e['successes']:3d}/{e['n']:<3d} {mean:>10s} {r['steps_per_s_with_expert']:8.0f} "
              f"{r['env_step_us']:7.0f} {r['expert_us']:9.1f} {r['get_state_us']:7.1f} {r['set_state_us']:7.1f} "
              f"{r['reset_ms']:8.1f}  {s['failed_seeds'] or '-'}"
              + (f"  engine differs at seeds {e['differs_at']}" if e["differs_at"] else ""))
    for key, what in (("expert_success", "expert episodes (raw env)"), ("engine_success", "through the engine")):
        total, n = sum(r[key]["successes"] for r in rows), sum(r[key]["n"] for r in rows)
        print(f"all {len(rows)} tasks: {total}/{n} {what} succeeded")
    print(f"loadavg {load_before} -> {load_after}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "metaworld_env", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_before": list(load_before),
                    "loadavg_after": list(load_after)},
        "versions": {d: _version(d) for d in ("metaworld", "mujoco", "gymnasium", "numpy")},
        "args": vars(args), "available_tasks": len(available_tasks()),
        "wall_s": time.perf_counter() - t_start, "tasks": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
