#!/usr/bin/env python3
"""Wall time to train the default chunked MLP on 50 curved-reach demos to >= 90% in-process success.

    source env.sh && python bench/bench_train_to_success.py [--seeds 0 1 2 3 4] [--epochs 10 20 40 60]
                                                            [--eval 200] [--no-baseline]

The default policy is config/train/chunk_mlp.yaml (K=40, relative action frame, 60 epochs).
For each training seed and each epoch budget the policy is trained from scratch with
``max_epochs`` = budget (so its cosine schedule completes), exported to ONNX, and evaluated
closed loop in-process (`core.eval.rollout`, temporal ensembling as in the policy node) on held-out
episode seeds that no demonstration uses. Wall time = train + export, 1 torch thread.
The budget the YAML ships with is the last one. Baseline rows: the previous default
(K=20, absolute targets) at the shipped budget, same seeds.

Reports per budget: median wall seconds, success pooled over all seeds x episodes (95% Wilson)
and per seed, and the time to >= 90%: the smallest budget whose pooled success is >= 90%.
Prints a table, writes bench/results/train_to_success.json and a PNG next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.experiments import common as C  # noqa: E402
from bc_policy_node.learning import load_configs  # noqa: E402

TASK = "curved_reach"
TARGET = 0.90


def run_one(ds, model_cfg, train_cfg, seeds, work: Path, tag: str) -> dict:
    tr = C.train_cached(ds, model_cfg, train_cfg, work, tag=tag)
    ev = C.evaluate_policy(tr, TASK, seeds)
    ok = [s == "success" for s in ev.status]
    return {"epochs": train_cfg.max_epochs, "seed": train_cfg.seed, "wall_s": tr.info["wall_seconds"],
            "train_s": tr.info["train_seconds"], "best_val_loss": tr.best_val_loss,
            "success": float(np.mean(ok)), "outcomes": ok}


def summarize(rows) -> dict:
    pooled = C.rate([o for r in rows for o in r["outcomes"]])
    return {"wall_s_median": float(np.median([r["wall_s"] for r in rows])),
            "wall_s_max": float(np.max([r["wall_s"] for r in rows])),
            "success": pooled, "per_seed": [r["success"] for r in rows]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    ap.add_argument("--epochs", type=int, nargs="+", default=None,
                    help="epoch budgets (default: 10 20 40 and the YAML's max_epochs)")
    ap.add_argument("--eval", type=int, default=200, help="held-out evaluation episodes per model")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "train" / "chunk_mlp.yaml")
    ap.add_argument("--no-baseline", action="store_true", help="skip the K=20 absolute-target rows")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_to_success.json")
    args = ap.parse_args(argv)
    from tqdm.auto import tqdm

    model_cfg, train_cfg = load_configs(args.config)
    budgets = sorted(set(args.epochs or [10, 20, 40, train_cfg.max_epochs]))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    ds = C.collect_demos(TASK, args.demos)
    print(f"{args.demos} {TASK} expert demos ({ds.num_frames} frames) in {time.perf_counter() - t0:.1f} s; "
          f"default policy {args.config.name}: {model_cfg.kind} K={model_cfg.chunk_length} "
          f"width {model_cfg.width} depth {model_cfg.depth}, action_frame {model_cfg.action_frame}, "
          f"{train_cfg.threads} thread(s)")
    seeds = C.eval_seeds(args.eval)
    jobs = [("default", replace(train_cfg, max_epochs=e, seed=s), model_cfg) for e in budgets for s in args.seeds]
    base_cfg = replace(model_cfg, chunk_length=20, action_frame="absolute")
    if not args.no_baseline:
        jobs += [("K20_absolute", replace(train_cfg, seed=s), base_cfg) for s in args.seeds]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bcp-t2s-") as tmp:
        for name, tcfg, mcfg in tqdm(jobs, desc="train + evaluate", unit="model", dynamic_ncols=True):
            r = run_one(ds, mcfg, tcfg, seeds, Path(tmp), f"{name}_e{tcfg.max_epochs}_s{tcfg.seed}")
            rows.setdefault((name, tcfg.max_epochs), []).append(r)

    table = {f"{n} {e} epochs": {"variant": n, "epochs": e, **summarize(rs)} for (n, e), rs in rows.items()}
    reached = [t for t in table.values() if t["variant"] == "default" and t["success"]["rate"] >= TARGET]
    first = min(reached, key=lambda t: t["epochs"]) if reached else None
    per_seed_first = {}
    for s in args.seeds:
        hits = [r for (n, e), rs in sorted(rows.items()) if n == "default" for r in rs
                if r["seed"] == s and r["success"] >= TARGET]
        per_seed_first[s] = min((r["epochs"] for r in hits), default=None)

    print(f"\n| model | epochs | train+export wall s (median / max) | success pooled ({len(args.seeds)} seeds x "
          f"{args.eval} eps, Wilson 95%) | per training seed (%) |")
    print("|---|---|---|---|---|")
    for key, t in table.items():
        print(f"| {t['variant']} | {t['epochs']} | {t['wall_s_median']:.1f} / {t['wall_s_max']:.1f} | "
              f"{C.fmt_rate(t['success'])} | {' / '.join(f'{100 * p:.0f}' for p in t['per_seed'])} |")
    if first:
        print(f"\ntime to >= {TARGET:.0%} pooled success: {first['wall_s_median']:.1f} s median "
              f"({first['epochs']} epochs; slowest seed {first['wall_s_max']:.1f} s); target <= 60 s on 2 cores")
    else:
        print(f"\nno budget reached {TARGET:.0%} pooled success")
    print(f"first budget reaching {TARGET:.0%} per training seed: {per_seed_first}")
    print(f"load average before/after: {load0[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")

    png = args.out.with_suffix(".png")
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for variant, color in (("default", "C0"), ("K20_absolute", "C3")):
        ts = sorted((t for t in table.values() if t["variant"] == variant), key=lambda t: t["epochs"])
        if not ts:
            continue
        x = [t["wall_s_median"] for t in ts]
        y = np.array([[t["success"]["rate"], t["success"]["ci_low"], t["success"]["ci_high"]] for t in ts]) * 100
        label = (f"default (K={model_cfg.chunk_length}, {model_cfg.action_frame})"
                 if variant == "default" else "K=20, absolute (previous default)")
        ax.errorbar(x, y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]], marker="o", color=color,
                    capsize=3, label=label)
        for t, xi, yi in zip(ts, x, y[:, 0]):
            ax.annotate(f"{t['epochs']} ep", (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.axhline(100 * TARGET, color="gray", ls="--", lw=1)
    ax.set_xlabel("train + export wall time, median over training seeds (s, 1 thread)")
    ax.set_ylabel(f"success on {args.eval} held-out episodes (%)")
    ax.set_title(f"{TASK}: {args.demos} demos, {len(args.seeds)} training seeds")
    ax.legend(loc="lower right", fontsize=8)
    C.savefig(fig, png)

    result = {"task": TASK, "demos": args.demos, "frames": ds.num_frames, "eval_episodes": args.eval,
              "training_seeds": args.seeds, "config": str(args.config.resolve()).replace(str(ROOT) + "/", ""),
              "model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "target": TARGET,
              "table": table, "time_to_target_s": first["wall_s_median"] if first else None,
              "time_to_target_epochs": first["epochs"] if first else None,
              "first_budget_reaching_target_per_seed": per_seed_first,
              "runs": {f"{n} {e}": [{k: v for k, v in r.items() if k != "outcomes"} for r in rs]
                       for (n, e), rs in rows.items()},
              "loadavg_1min_before_after": [load0[0], os.getloadavg()[0]], "cpus": os.cpu_count(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(C.to_jsonable(result), indent=1) + "\n")
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
