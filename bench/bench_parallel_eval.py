#!/usr/bin/env python3
"""The in-process evaluation of a shipped policy with 1 worker and with N Ray workers.

    python bench/bench_parallel_eval.py [--policy planar3_long_horizon] [--episodes 100] [--workers 2]

`core.eval.rollout.evaluate` (policy + expert rollouts, deviation) over the same seeds, serially
in this process and over `--workers` Ray processes (`core.eval.parallel`: a local instance on
127.0.0.1). Times: serial; Ray start-up; parallel with Ray already up ("warm", the best of
`--repeats`, as in an experiment that evaluates many policies in one session) and the first
parallel run plus start-up ("cold", what one `bc-policy eval --workers N` pays). Checks that every
per-episode array and the success statistics are identical, records the sockets Ray listens on
(all must be loopback), os.getloadavg() and the Ray version. Prints a table and writes
bench/results/parallel_eval.json. The machine's cores may be shared: the load average says how
busy it was.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.control.runtime import OnnxPolicy  # noqa: E402
from bc_policy_node.core.eval import parallel  # noqa: E402
from bc_policy_node.core.eval.rollout import CHUNKS_PER_WORKER, evaluate  # noqa: E402

ARRAYS = ("ee", "q", "obs", "actions", "actors")
STATS = ("success", "collision_rate", "statuses", "steps", "final_error", "deviation")
WAIT_S = 600.0


def differences(a, b):
    """What differs between two evaluate() results (empty: identical)."""
    out = []
    for kind in ("results", "experts"):
        ra, rb = a[kind], b[kind]
        if [r.seed for r in ra] != [r.seed for r in rb]:
            out.append(f"{kind}: seed order")
            continue
        for x, y in zip(ra, rb):
            if (x.status, x.steps) != (y.status, y.steps):
                out.append(f"{kind} seed {x.seed}: status/steps")
            out += [f"{kind} seed {x.seed}: {k}" for k in ARRAYS if not np.array_equal(getattr(x, k), getattr(y, k))]
    out += [k for k in STATS if a.get(k) != b.get(k)]
    if not np.array_equal(a["deviation_mean_by_t"], b["deviation_mean_by_t"], equal_nan=True):
        out.append("deviation_mean_by_t")
    return out


def tree_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process and its live descendants (Ray's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in parallel.ray_process_ids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                cols = f.read().rsplit(")", 1)[1].split()
            total += (int(cols[11]) + int(cols[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="planar3_long_horizon", help="models/policies/<name>.onnx")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (best kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parallel_eval.json")
    args = ap.parse_args(argv)

    import mujoco
    import ray

    model = ROOT / "models" / "policies" / f"{args.policy}.onnx"
    policy = OnnxPolicy(model)
    c = policy.contract
    seeds = list(range(args.seed, args.seed + args.episodes))
    load_before = os.getloadavg()

    cpu = {}

    def run(workers):
        c0, t0 = tree_cpu_s(), time.perf_counter()
        res = evaluate(str(model), c.robot, c.task, seeds, workers=workers, timeout=WAIT_S)
        t = time.perf_counter() - t0
        cpu.setdefault(workers, []).append((tree_cpu_s() - c0) / t)
        return res, t

    serial_times, serial = [], None
    for _ in range(args.repeats):
        serial, t = run(1)
        serial_times.append(t)

    t0 = time.perf_counter()
    with parallel.ray_session(args.workers):
        startup = time.perf_counter() - t0
        par, first = run(args.workers)
        par_times = [first]
        for _ in range(args.repeats - 1):
            par, t = run(args.workers)
            par_times.append(t)
        socks = parallel.sockets(parallel.ray_process_ids())
        listening = [{k: s[k] for k in ("proto", "ip", "port", "name")} for s in socks if s["state"] == "LISTEN"]
        off = parallel.off_loopback(socks)
    load_after = os.getloadavg()

    diffs = differences(serial, par)
    t1, tw = min(serial_times), min(par_times)
    cold = startup + first
    steps = sum(r.steps for r in serial["results"]) + sum(r.steps for r in serial["experts"])
    result = {
        "policy": model.name, "robot": c.robot, "task": c.task, "episodes": len(seeds),
        "seeds": [seeds[0], seeds[-1]], "with_expert": True, "sim_steps": steps,
        "workers": args.workers, "chunks": min(len(seeds), args.workers * CHUNKS_PER_WORKER),
        "repeats": args.repeats,
        "serial_s": serial_times, "parallel_s": par_times, "ray_startup_s": startup,
        # CPU seconds per wall second of this process tree while it ran: the cores it got
        "serial_cores_used": cpu[1], "parallel_cores_used": cpu[args.workers],
        "speedup_warm": t1 / tw, "speedup_cold": t1 / cold, "cold_s": cold,
        "identical": not diffs, "differences": diffs[:20],
        "success": serial["success"], "statuses": serial["statuses"],
        "ray_listening_sockets": listening, "ray_sockets_off_loopback": off,
        "loadavg_before": list(load_before), "loadavg_after": list(load_after),
        "ray_version": ray.__version__, "mujoco_version": mujoco.__version__, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "machine": platform.machine(),
    }
    rows = [("1 worker (in process)", t1, 1.0, max(cpu[1])),
            (f"{args.workers} workers, Ray up (warm)", tw, t1 / tw, max(cpu[args.workers])),
            (f"{args.workers} workers incl. Ray start-up (cold)", cold, t1 / cold, None)]
    print(f"{model.name}: {len(seeds)} seeds, policy + expert, {steps} sim steps; "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f} on {os.cpu_count()} cores; Ray {ray.__version__}")
    print(f"{'configuration':<40}{'wall s':>9}{'speed-up':>10}{'cores used':>12}")
    for name, t, s, u in rows:
        print(f"{name:<40}{t:>9.2f}{s:>9.2f}x" + ("" if u is None else f"{u:>12.2f}"))
    print(f"{'Ray start-up':<40}{startup:>9.2f}")
    print(f"results identical to the serial run: {not diffs}" + ("" if not diffs else f" ({diffs[:5]})"))
    print(f"Ray listening sockets: {len(listening)}, off loopback: {len(off)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0 if not diffs and not off else 1


if __name__ == "__main__":
    sys.exit(main())
