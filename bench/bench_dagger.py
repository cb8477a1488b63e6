#!/usr/bin/env python3
"""Wall time of one in-process DAgger round, split into rollout / label / train / export / eval.

    python bench/bench_dagger.py [--task curved_reach] [--rounds 2] [--episodes 10] [--demos 20]
                                 [--eval 50] [--steps 800] [--variants classic,robot_gated,human_gated]

Runs `pipeline.dagger.inprocess.run_dagger` for each variant in a fresh temporary directory
(round 0 shared) and reports, per round: rollout seconds (policy + sim, expert queries
excluded), label seconds (expert queries), ensemble training (robot-gated: the extra members
of the previous round's ensemble), training, ONNX export, evaluation; plus frames, labels and
training throughput. The machine may be shared: the load average before and after is recorded.
Prints a table and writes bench/results/dagger.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.pipeline.dagger.config import DaggerConfig  # noqa: E402
from bc_policy_node.pipeline.dagger.inprocess import run_dagger  # noqa: E402

PHASES = ("rollout", "label", "ensemble_train", "train", "export", "eval")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="curved_reach")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=10, help="DAgger rollouts per round")
    ap.add_argument("--demos", type=int, default=20, help="initial expert demos (round 0)")
    ap.add_argument("--eval", type=int, default=50, help="evaluation seeds")
    ap.add_argument("--steps", type=int, default=800, help="optimizer steps per training run")
    ap.add_argument("--variants", default="classic,robot_gated,human_gated")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dagger.json"))
    args = ap.parse_args()

    load0 = os.getloadavg()
    rows, t_all = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-dagger-") as tmp:
        for v in args.variants.split(","):
            t0 = time.perf_counter()
            recs = run_dagger(DaggerConfig("planar3", args.task, v, rounds=args.rounds, episodes_per_round=args.episodes,
                                           initial_demos=args.demos, train_cfg={"max_steps": args.steps},
                                           out_dir=str(Path(tmp) / v), round0_dir=str(Path(tmp) / "r0"),
                                           eval_seeds=range(10_000, 10_000 + args.eval), progress=False,
                                           query_budget=60 if args.task == "curved_reach" else 150))
            for r in recs:
                if r.round == 0 and rows and rows[0]["round"] == 0:
                    continue  # round 0 is shared: timed once
                t = {p: float(r.timing.get(p, 0.0)) for p in PHASES}
                rows.append({"variant": "bc" if r.round == 0 else v, "round": r.round,
                             "frames_new": r.frames_new, "labels_new": r.labels_new,
                             "frames_total": r.frames_total, "seconds": t, "total": sum(t.values()),
                             "success": r.success["rate"]})
            print(f"{v}: {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"task": args.task, "rounds": args.rounds, "episodes_per_round": args.episodes, "demos": args.demos,
           "eval_seeds": args.eval, "train_steps": args.steps, "threads": 1, "rows": rows,
           "wall_seconds": time.perf_counter() - t_all,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "loadavg_before": load0, "loadavg_after": os.getloadavg()}}
    hdr = f"{'variant':<12} {'rnd':>3} {'frames':>7} {'labels':>7} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'total':>7}"
    print(hdr)
    for r in rows:
        print(f"{r['variant']:<12} {r['round']:>3} {r['frames_new']:>7} {r['labels_new']:>7} "
              + " ".join(f"{r['seconds'][p]:>8.1f}s" for p in PHASES) + f" {r['total']:>6.1f}s")
    print(f"load average before {load0[0]:.1f}, after {out['machine']['loadavg_after'][0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
