#!/usr/bin/env python3
"""Where the policy node's free-run tick spends its time, at 1 kHz over real DDS.

    source env.sh && python bench/profile_policy_tick.py [--rate 1000] [--duration 10]

The policy node (bc_policy_node.nodes.policy_node.PolicyNode, the bench's MLP chunk policy and
contract, the same parameters as bench_policy_node.py) runs in this process with its own
executor and control thread, exactly as its main() does; the robot is bench_policy_node.py
``--role robot`` in its own process. After the warm-up the phases of a tick are wrapped, on
the node's instances only (no source change, nothing when this script does not run), with
time.perf_counter_ns timers:

    tick = swap check + poll [take + observe(assemble update)] + vector + oldest_stamp
           + step [needs_query + predict + ensemble add + ensemble action + safety filter + rest]
           + command publish + chunk publish (no subscriber: count check) + stats record + rest

plus the tick's thread CPU time (time.thread_time_ns): wall minus CPU is time the control
thread was runnable but not running (GIL held by the executor thread, or the core taken by
another process). Each wrapper costs ~0.3 us (measured and printed). Prints a table and writes
bench/results/policy_tick_profile.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"   # hard rule: DDS stays on this machine
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(101, 199)))
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import bench_policy_node as bpn  # noqa: E402

ns = time.perf_counter_ns


def wrap(obj, name: str, rec: list) -> None:
    """Replace obj.name (an instance attribute from now on) by a timed call appending ns to rec."""
    f = getattr(obj, name)

    def timed(*a, **k):
        t0 = ns()
        r = f(*a, **k)
        rec.append(ns() - t0)
        return r
    setattr(obj, name, timed)


def wrapper_cost_ns(n: int = 100000) -> float:
    class Probe:
        def f(self):
            return None
    o, rec = Probe(), []
    t0 = ns()
    for _ in range(n):
        o.f()
    bare = ns() - t0
    wrap(o, "f", rec)
    t0 = ns()
    for _ in range(n):
        o.f()
    return (ns() - t0 - bare) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "policy_tick_profile.json"))
    args = ap.parse_args()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from bc_policy_node.core.contract import Contract
    from bc_policy_node.graph import policy_nodes
    from bc_policy_node.nodes import policy_node as pn
    from bc_policy_node.procs import ros_args

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bcp-profile-tick-") as tmp:
        work = Path(tmp)
        cdict = bpn.contract_dict(args.rate)
        cpath = work / "contract.yaml"
        cpath.write_text(json.dumps(cdict))
        model = bpn.mlp_model(work / "model.onnx", Contract.from_dict(cdict), seed=0)
        spec = policy_nodes(model=str(model), autostart=True)[0]
        extra = {"contract": str(cpath), "status_rate_hz": 1.0,
                 "stats_window": int(max(1000, min(60000, args.rate * args.duration)))}
        sys.setswitchinterval(pn.GIL_SWITCH_S)          # as policy_node.main()
        rclpy.init(args=ros_args(spec, extra))
        node = pn.PolicyNode("policy")
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        robot = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bench_policy_node.py"), "--role", "robot",
                                  "--mode", "free", "--rate", str(args.rate),
                                  "--duration", str(args.duration + args.warmup + 60)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def spin(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ex.spin_once(timeout_sec=0.05)
        try:
            deadline = time.monotonic() + 60
            while node._stats.ticks < args.rate and time.monotonic() < deadline:
                spin(0.1)
            spin(args.warmup)
            base = node._stats.summary(time.time())      # unwrapped, over the warm-up
            rec = {k: [] for k in ("tick", "tick_cpu", "poll", "observe", "vector", "oldest_stamp", "step",
                                   "needs_query", "predict", "ens_add", "ens_action", "safety", "publish",
                                   "chunk_publish", "stats")}
            loop, asm = node._loop, node._assembler
            wrap(node, "_poll_observations", rec["poll"])
            wrap(node, "_observe", rec["observe"])
            wrap(asm, "vector", rec["vector"])
            wrap(asm, "oldest_stamp", rec["oldest_stamp"])
            wrap(loop, "step", rec["step"])
            wrap(loop.executor, "needs_query", rec["needs_query"])
            wrap(loop.policy, "predict_chunk", rec["predict"])
            wrap(loop.executor, "add", rec["ens_add"])
            wrap(loop.executor, "action", rec["ens_action"])
            wrap(loop.safety, "filter", rec["safety"])
            wrap(node._out, "publish", rec["publish"])
            wrap(node._chunks, "publish", rec["chunk_publish"])
            wrap(node._stats, "record", rec["stats"])
            inner = node._tick
            tt = time.thread_time_ns

            def tick():
                c0, t0 = tt(), ns()
                inner()
                rec["tick"].append(ns() - t0)
                rec["tick_cpu"].append(tt() - c0)
            ticks0, missed0 = node._stats.ticks, node._stats.missed
            node._tick = tick
            spin(args.duration)
            node._tick = inner
            ticks, missed = node._stats.ticks - ticks0, node._stats.missed - missed0
            prof = node._stats.summary(time.time())
        finally:
            robot.terminate()
            robot.wait(timeout=30)
            node.destroy_node()
            rclpy.try_shutdown()

    n = min(len(rec["tick"]), len(rec["tick_cpu"]))
    arr = {k: np.asarray(v[:n] if len(v) >= n else v, dtype=float) / 1e3 for k, v in rec.items()}
    res = {"meta": {"python": platform.python_version(), "cpus": os.cpu_count(), "rate_hz": args.rate,
                    "duration_s": args.duration, "model": f"MLP 14->256->256->{bpn.K}x{bpn.A} (bench_policy_node)",
                    "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                    "wrapper_cost_us": wrapper_cost_ns() / 1e3},
           "ticks": ticks, "missed_ticks": missed, "missed_pct": 100.0 * missed / max(ticks, 1),
           "node_tick_time_unwrapped_us": {"p50": base["tick_time_p50_us"], "p99": base["tick_time_p99_us"]},
           "node_tick_time_wrapped_us": {"p50": prof["tick_time_p50_us"], "p99": prof["tick_time_p99_us"]},
           "phases_us": {}}
    tick_mean = arr["tick"].mean()
    for k, a in arr.items():
        if len(a) == 0:
            continue
        per_tick = a.sum() / n               # phases that do not run every tick count per tick
        res["phases_us"][k] = {"calls": int(len(a)), "p50": float(np.median(a)), "p99": float(np.percentile(a, 99)),
                               "mean": float(a.mean()), "per_tick": float(per_tick),
                               "share_pct": float(100.0 * per_tick / tick_mean)}
    ph = res["phases_us"]
    top = sum(ph[k]["per_tick"] for k in ("poll", "vector", "oldest_stamp", "step", "publish", "chunk_publish", "stats"))
    inside = sum(ph[k]["per_tick"] for k in ("needs_query", "predict", "ens_add", "ens_action", "safety"))
    res["derived_us_per_tick"] = {
        "take (poll - observe)": ph["poll"]["per_tick"] - ph["observe"]["per_tick"],
        "step rest (obs slicing, jump check, TickResult)": ph["step"]["per_tick"] - inside,
        "tick rest (clock reads, swap check, branches)": tick_mean - top,
        "not running (tick wall - thread CPU)": tick_mean - ph["tick_cpu"]["per_tick"]}
    print_table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


def print_table(res: dict) -> None:
    m = res["meta"]
    print(f"\npolicy node tick at {m['rate_hz']:g} Hz, {res['ticks']} ticks ({res['missed_pct']:.2f}% missed), "
          f"load {m['loadavg_start']} -> {m['loadavg_end']}; wrapper cost {m['wrapper_cost_us']:.2f} us/call")
    u, w = res["node_tick_time_unwrapped_us"], res["node_tick_time_wrapped_us"]
    print(f"node's own tick time p50/p99: unwrapped {u['p50']:.0f}/{u['p99']:.0f} us, wrapped {w['p50']:.0f}/{w['p99']:.0f} us")
    print("| phase | calls | p50 us | p99 us | us/tick | % of tick |")
    print("|---|---|---|---|---|---|")
    for k, r in res["phases_us"].items():
        print(f"| {k} | {r['calls']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['per_tick']:.1f} | {r['share_pct']:.1f} |")
    for k, v in res["derived_us_per_tick"].items():
        print(f"| {k} | | | | {v:.1f} | {100 * v / res['phases_us']['tick']['mean']:.1f} |")


if __name__ == "__main__":
    main()
