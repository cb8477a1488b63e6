#!/usr/bin/env python3
"""Embedded MuJoCo world: physics rate, control-tick rate, expert cost and expert success.

    python bench/bench_sim.py [--seeds 500] [--recovery-seeds 200] [--steps 20000]

- raw `mj_step` rate per model (robot holding its home pose);
- `SimEnv.step` ticks/s (10 physics substeps + task update + messages), holding still, and
  with the scripted expert in the loop;
- expert cost per call: `act_obs` (decode an observation vector, one label) and `plan_obs`
  (a 20-step chunk);
- expert success over `--seeds` seeded episodes per task/variant, with Wilson 95% intervals,
  episode length and failure reasons;
- expert recovery: success after the arm is teleported off its path mid-episode.
Prints a table and writes bench/results/sim.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import mujoco
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.sim.env import ROBOTS, SimEnv, load_contract  # noqa: E402
from bc_policy_node.core.eval.metrics import success_summary  # noqa: E402
from bc_policy_node.core.sim.sim import ArmSim  # noqa: E402

CASES = [("planar3", "curved_reach", ""), ("planar3", "curved_reach", "short"),
         ("planar3", "bimodal", ""), ("planar3", "long_horizon", ""),
         ("planar3", "long_horizon", "short"), ("arm7", "curved_reach", ""),
         ("arm7", "curved_reach", "short"), ("arm7", "long_horizon", "")]


def bench_mj_step(robot: str, steps: int) -> dict:
    sim = ArmSim(ROBOTS[robot])
    sim.set_command(sim.home_q)
    m, d = sim.model, sim.data
    t = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(m, d)
    dt = time.perf_counter() - t
    return {"robot": robot, "steps_per_s": steps / dt, "realtime_factor": steps * m.opt.timestep / dt,
            "timestep_s": m.opt.timestep}


def bench_env(robot: str, task: str, ticks: int) -> dict:
    env = SimEnv(robot, task)
    expert = env.make_expert()
    contract = load_contract(robot, task)
    env.reset(0)
    hold = env.sim.qpos
    t = time.perf_counter()
    for i in range(ticks):
        if env.done:
            env.reset(i)
            hold = env.sim.qpos
        env.step(hold)
    hold_rate = ticks / (time.perf_counter() - t)
    msgs, n, t = env.reset(0), 0, time.perf_counter()
    while n < ticks:
        if env.done:
            msgs = env.reset(n)
        msgs = env.step(expert.act_messages(msgs))
        n += 1
    expert_rate = ticks / (time.perf_counter() - t)
    obs = ObservationAssembler(contract).assemble(env.reset(1))
    calls = 5000
    t = time.perf_counter()
    for _ in range(calls):
        expert.act_obs(obs, contract)
    act_us = (time.perf_counter() - t) / calls * 1e6
    t = time.perf_counter()
    for _ in range(calls // 20):
        expert.plan_obs(obs, contract)
    plan_us = (time.perf_counter() - t) / (calls // 20) * 1e6
    return {"robot": robot, "task": task, "substeps": env.substeps,
            "ticks_per_s_hold": hold_rate, "ticks_per_s_expert": expert_rate,
            "expert_act_obs_us": act_us, "expert_plan20_us": plan_us}


def bench_success(robot: str, task: str, variant: str, seeds: int) -> dict:
    env = SimEnv(robot, task)
    expert = env.make_expert()
    outcomes, lengths, failures = [], [], Counter()
    examples = []
    for seed in range(seeds):
        ts, _ = env.run_expert(seed, expert, variant)
        ok = ts.status == "success"
        outcomes.append(ok)
        lengths.append(ts.step)
        if not ok:
            failures[ts.status] += 1
            if len(examples) < 5:
                examples.append({"seed": seed, "status": ts.status, "reason": ts.reason})
    s = success_summary(outcomes)
    s.update(robot=robot, task=task, variant=variant, horizon=env.horizon,
             mean_ticks=float(np.mean(lengths)), max_ticks=int(np.max(lengths)),
             failures=dict(failures), failure_examples=examples)
    return s


def bench_recovery(robot: str, task: str, seeds: int, sigma: float = 0.3, extra: int = 150) -> dict:
    """Expert success after teleporting the arm off its path (N(0, sigma) rad per joint) at a
    random tick in [0, 80), with `extra` ticks added to the horizon: labels on unvisited states."""
    env = SimEnv(robot, task)
    expert = env.make_expert()
    rng = np.random.default_rng(0)
    outcomes, failures = [], Counter()
    for seed in range(seeds):
        msgs = env.reset(seed, horizon=env.horizon + extra)
        for _ in range(int(rng.integers(0, 80))):
            if env.done:
                break
            msgs = env.step(expert.act_messages(msgs))
        oc = env.task.obstacle_center()
        for _ in range(100):
            q = np.clip(env.sim.qpos + rng.normal(0.0, sigma, env.sim.n), env.sim.lower, env.sim.upper)
            if oc is None or np.linalg.norm(env.sim.fk(q)[:2] - oc) > env.task.obstacle[-1] + 0.03:
                break
        if not env.done:
            msgs = env.set_joint_state(q)
        while not env.done:
            msgs = env.step(expert.act_messages(msgs))
        ts = msgs["/task_state"]
        outcomes.append(ts.status == "success")
        if ts.status != "success":
            failures[ts.status] += 1
    s = success_summary(outcomes)
    s.update(robot=robot, task=task, sigma_rad=sigma, extra_ticks=extra, failures=dict(failures))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=500, help="episodes per task/variant")
    ap.add_argument("--recovery-seeds", type=int, default=200, help="perturbed episodes per task")
    ap.add_argument("--steps", type=int, default=20000, help="raw mj_step calls per model")
    ap.add_argument("--ticks", type=int, default=3000, help="SimEnv ticks per rate measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sim.json"))
    args = ap.parse_args()

    physics = [bench_mj_step(r, args.steps) for r in ROBOTS]
    envs = [bench_env(r, t, args.ticks) for r, t in
            [("planar3", "curved_reach"), ("planar3", "bimodal"), ("planar3", "long_horizon"),
             ("arm7", "curved_reach")]]
    success = [bench_success(r, t, v, args.seeds) for r, t, v in CASES]
    recovery = [bench_recovery(r, t, args.recovery_seeds) for r, t, v in CASES if not v]

    print(f"\n{'robot':8s} {'mj_step/s':>10s} {'x realtime':>10s}")
    for p in physics:
        print(f"{p['robot']:8s} {p['steps_per_s']:10.0f} {p['realtime_factor']:10.1f}")
    print(f"\n{'robot/task':22s} {'ticks/s hold':>12s} {'ticks/s expert':>14s} "
          f"{'act_obs us':>10s} {'plan20 us':>9s}")
    for e in envs:
        print(f"{e['robot'] + '/' + e['task']:22s} {e['ticks_per_s_hold']:12.0f} "
              f"{e['ticks_per_s_expert']:14.0f} {e['expert_act_obs_us']:10.1f} {e['expert_plan20_us']:9.0f}")
    print(f"\n{'robot/task[variant]':32s} {'n':>4s} {'success':>8s} {'95% Wilson':>16s} "
          f"{'ticks mean/max':>15s} {'horizon':>7s}  failures")
    for s in success:
        name = f"{s['robot']}/{s['task']}" + (f"[{s['variant']}]" if s["variant"] else "")
        print(f"{name:32s} {s['n']:4d} {s['rate']:8.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]  "
              f"{s['mean_ticks']:7.1f}/{s['max_ticks']:<4d} {s['horizon']:7d}  {s['failures'] or '-'}")
    print("\nrecovery from perturbed states (sigma 0.3 rad/joint, +150 ticks):")
    for s in recovery:
        print(f"{s['robot'] + '/' + s['task']:32s} {s['n']:4d} {s['rate']:8.3f} "
              f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]  {s['failures'] or '-'}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "sim", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "mujoco": mujoco.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args), "physics": physics, "env": envs, "expert_success": success,
        "expert_recovery": recovery}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
