#!/usr/bin/env python3
"""Per-tick cost of the chunk executors and the safety filter, and ONNX latency of a tiny MLP.

    python bench/bench_ensemble.py [--ticks 20000] [--onnx-iters 3000]

Executors run a closed loop ``needs_query -> add -> action`` at K=20, A=7 (the policy query
itself is not timed here). The ONNX part builds an MLP (obs 20 -> 256 -> 256 -> K*A) with
onnx.helper, embeds bc_policy metadata, loads it through `OnnxPolicy` (1 intra-op thread)
and times batch-1 `predict`. Prints a table and writes bench/results/ensemble.json.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.contract import Contract  # noqa: E402
from bc_policy_node.core.control.ensemble import make_executor  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy, embed_metadata  # noqa: E402
from bc_policy_node.core.control.safety import SafetyFilter  # noqa: E402

K, A, OBS, HIDDEN = 20, 7, 20, 256
JOINTS = [f"j{i + 1}" for i in range(A)]
CONTRACT = Contract.from_dict({
    "contract_version": 1, "name": "bench7", "robot": "arm7", "task": "bench",
    "control_rate_hz": 1000.0, "chunk_length": K, "stale_after_s": 0.01,
    "observation": [{"name": "q", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                     "field": "position", "joints": JOINTS},
                    {"name": "extra", "topic": "/task_state", "type": "bc_msgs/msg/TaskState",
                     "field": "goal", "size": OBS - A}],
    "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
               "type": "std_msgs/msg/Float64MultiArray", "joints": JOINTS,
               "lower": -3.0, "upper": 3.0, "max_step": 0.01}})

EXECUTORS = {
    "temporal_ensembling (m=0.01, query every tick)": ("temporal_ensembling", {"m": 0.01}),
    "temporal_ensembling (query every 5)": ("temporal_ensembling", {"m": 0.01, "query_every": 5}),
    "receding_horizon (n=10)": ("receding_horizon", {"n_execute": 10}),
    "latency_aware (n=10)": ("latency_aware", {"n_execute": 10}),
    "mode_consistent (query every tick)": ("mode_consistent", {"m": 0.01, "threshold": 0.5}),
}


def stats_us(ns: np.ndarray) -> dict:
    us = ns / 1e3
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean()), "n": int(us.size)}


def bench_executor(mode: str, params: dict, ticks: int) -> dict:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(K, A))
    chunks = base + 0.01 * rng.normal(size=(64, K, A))  # similar chunks: mode_consistent accepts
    ex = make_executor(mode, **params)
    out = np.empty(ticks, dtype=np.int64)
    clock = time.perf_counter_ns
    warm = 500
    for t in range(ticks + warm):
        t0 = clock()
        if ex.needs_query(t):
            ex.add(chunks[t % 64], t)
        ex.action(t)
        t1 = clock()
        if t >= warm:
            out[t - warm] = t1 - t0
    res = stats_us(out)
    res["counters"] = ex.stats()
    return res


def bench_safety(ticks: int) -> dict:
    rng = np.random.default_rng(1)
    f = SafetyFilter(CONTRACT)
    proposals = rng.uniform(-3.5, 3.5, size=(256, A))
    cur = np.zeros(A)
    out = np.empty(ticks, dtype=np.int64)
    clock = time.perf_counter_ns
    for t in range(ticks):
        t0 = clock()
        f.filter(proposals[t % 256], t * 1e-3, t * 1e-3, cur)
        out[t] = clock() - t0
    return stats_us(out)


def tiny_mlp_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    dims = [OBS, HIDDEN, HIDDEN, K * A]
    inits, nodes, x = [], [], "obs"
    for i, (m, n) in enumerate(zip(dims[:-1], dims[1:])):
        inits += [numpy_helper.from_array((rng.normal(size=(m, n)) / np.sqrt(m)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"])]
        x = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    inits.append(numpy_helper.from_array(np.array([-1, K, A], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["actions"]))
    graph = helper.make_graph(nodes, "tiny_mlp",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", OBS])],
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", K, A])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, CONTRACT, {"kind": "chunk_mlp", "chunk_length": K})
    onnx.save(model, str(path))


def bench_onnx(iters: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tiny_mlp.onnx"
        tiny_mlp_onnx(path)
        policy = OnnxPolicy(path, threads=1)
        obs = np.random.default_rng(3).normal(size=OBS)
        for _ in range(200):
            policy.predict(obs)
        out = np.empty(iters, dtype=np.int64)
        clock = time.perf_counter_ns
        for i in range(iters):
            t0 = clock()
            policy.predict(obs)
            out[i] = clock() - t0
        res = stats_us(out)
        res.update(model=f"MLP {OBS}->{HIDDEN}->{HIDDEN}->{K}x{A}, batch 1, 1 intra-op thread")
        return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=20000)
    ap.add_argument("--onnx-iters", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ensemble.json")
    args = ap.parse_args(argv)

    import onnxruntime

    rows = {name: bench_executor(mode, params, args.ticks) for name, (mode, params) in EXECUTORS.items()}
    rows["safety_filter.filter (A=7)"] = bench_safety(args.ticks)
    rows["OnnxPolicy.predict (tiny MLP)"] = bench_onnx(args.onnx_iters)

    width = max(len(n) for n in rows)
    print(f"{'per tick / call':<{width}}  {'median us':>10}  {'p99 us':>9}  {'mean us':>9}")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_us']:>10.2f}  {r['p99_us']:>9.2f}  {r['mean_us']:>9.2f}")

    result = {"K": K, "A": A, "results": rows,
              "machine": {"python": platform.python_version(), "numpy": np.__version__,
                          "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
