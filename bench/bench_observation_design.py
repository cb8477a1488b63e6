#!/usr/bin/env python3
"""Observation design: joint velocity in the observation causes causal confusion (copycat).

    python bench/bench_observation_design.py [--demos 50] [--epochs 60] [--eval 100]
                                             [--train-seeds 0,1] [--kinds chunk_mlp,mlp]
                                             [--cache /tmp/bcp_obs_design]

The shipped curved_reach contract observes joint positions, the goal and the end-effector
position; the variant adds `joint_vel` (sensor_msgs/JointState.velocity). The position servos
settle within one control tick, so the measured velocity is essentially the previous command's
step: a policy can predict the next step from "keep doing what I just did" and never learn to
use the goal (a copycat; de Haan et al. 2019, Wen et al. 2020). Same demonstrations (episode
seeds 0..N-1) observed through each contract, same models (width 128, depth 3; chunk_mlp K=20
and/or mlp K=1), same training seeds, 1 training thread; evaluated on held-out episode seeds
(1000..) with temporal ensembling (m=0.01). The measurement lives in
`bc_policy_node.experiments.exp_observation` (also `bc-policy experiments --only observation`,
with a figure); this script prints the table and writes bench/results/observation_design.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.experiments import common as C  # noqa: E402
from bc_policy_node.experiments import exp_observation as E  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demos", type=int, default=E.FULL["demos"])
    ap.add_argument("--epochs", type=int, default=E.FULL["epochs"])
    ap.add_argument("--eval", type=int, default=E.FULL["eval"])
    ap.add_argument("--train-seeds", default=",".join(map(str, E.FULL["train_seeds"])))
    ap.add_argument("--kinds", default=",".join(E.FULL["kinds"]), help="chunk_mlp (K=20) and/or mlp (K=1)")
    ap.add_argument("--cache", default="/tmp/bcp_obs_design", help="demos/models/evals cache")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "observation_design.json"))
    args = ap.parse_args(argv)
    cfg = {"demos": args.demos, "epochs": args.epochs, "eval": args.eval,
           "train_seeds": [int(s) for s in args.train_seeds.split(",") if s.strip()],
           "kinds": [k.strip() for k in args.kinds.split(",") if k.strip()]}
    t0 = time.time()
    R = E.measure(cfg, Path(args.cache))
    rows, results = [], {}
    for (kind, cname), r in R.items():
        n = r["numbers"]
        results[f"{kind} / {cname}"] = n
        rows.append([kind, cname, C.fmt_rate(n["success"]), " / ".join(f"{100 * p:.0f}" for p in n["success_per_train_seed"]),
                     " / ".join(f"{v:.4f}" for v in n["best_val_loss_per_train_seed"])])
    out = {"task": E.TASK, "robot": "planar3", **cfg, "eval_seed0": C.EVAL_SEED0,
           "execution": "temporal_ensembling m=0.01",
           "model": "width 128, depth 3 (residual + LayerNorm); chunk_mlp K=20, mlp K=1; 1 training thread",
           "results": results, "seconds": round(time.time() - t0, 1),
           "machine": {"python": platform.python_version(), "platform": platform.platform()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(C.to_jsonable(out), indent=1))
    print(C.md_table(["kind", "observation", "success (pooled, 95% Wilson)", "per training seed (%)",
                      "best val loss per seed"], rows))
    for kind in cfg["kinds"]:
        a, b = results.get(f"{kind} / {E.WITHOUT}"), results.get(f"{kind} / {E.WITH}")
        if a and b:
            print(f"{kind}: with joint_vel the mean best validation loss is {b['best_val_loss_mean']:.4f} vs "
                  f"{a['best_val_loss_mean']:.4f}, success {C.fmt_rate(b['success'])} vs {C.fmt_rate(a['success'])}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
