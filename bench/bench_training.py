#!/usr/bin/env python3
"""Training throughput and ONNX inference latency per policy kind, plus an optional depth sweep.

    python bench/bench_training.py [--data auto|synthetic|sim|<dataset dir>] [--episodes 50]
                                   [--full] [--sweep] [--onnx-iters 3000]

Data: ``auto`` collects ~50 scripted-expert demonstrations from the in-process simulator
(planar3 curved_reach, when `core.sim.env` and its contract are available) and otherwise uses
`learning.synthetic` (50 x 200 frames). For every shipped config (config/train/<kind>.yaml):
training throughput in samples/s with 2 and 1 threads (best and median of ``--repeats`` runs
of ``--steps`` optimizer steps: the machine may be shared), then export and batch-1 ONNX
latency through `OnnxPolicy` with 1 intra-op thread (median / p99). The default policy
(chunk_mlp; every kind with ``--full``) is also trained to completion to time the "well
under a minute" budget. ``--sweep`` trains
residual vs plain MLPs at depths 2..16 for a fixed number of epochs and reports validation
loss. Prints tables and writes bench/results/training.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.contract import ObservationAssembler  # noqa: E402
from bc_policy_node.core.data.episodes import Dataset, Episode  # noqa: E402
from bc_policy_node.core.control.runtime import OnnxPolicy  # noqa: E402
from bc_policy_node.learning import ModelConfig, export, load_configs, train  # noqa: E402
from bc_policy_node.learning.synthetic import synthetic_dataset  # noqa: E402

KINDS = ("mlp", "chunk_mlp", "gmm", "transformer")


def collect_sim(episodes: int, robot: str = "planar3", task: str = "curved_reach") -> Dataset:
    """Scripted-expert demonstrations from the in-process simulator, through the contract."""
    from bc_policy_node.core.sim.env import SimEnv, load_contract

    contract = load_contract(robot, task)
    env = SimEnv(robot, task, control_rate_hz=contract.control_rate_hz)
    expert = env.make_expert()
    eps = []
    for seed in range(episodes):
        msgs = env.reset(seed)
        asm = ObservationAssembler(contract)
        obs, act, t = [], [], []
        while not env.done:
            obs.append(asm.assemble(msgs))
            a = np.asarray(expert.act_messages(msgs), dtype=float)
            idx = [list(env.joint_names).index(j) for j in contract.action.joints]
            act.append(a[idx])
            t.append(env.step_count * contract.dt)
            msgs = env.step(a)
        eps.append(Episode(np.array(obs), np.array(act), np.array(t),
                           {"episode_id": seed, "source": "sim_expert", "seed": seed,
                            "success": bool(msgs["/task_state"].success)}))
    return Dataset(contract, eps)


def load_data(spec: str, episodes: int):
    if spec == "synthetic":
        return synthetic_dataset(episodes, 200), "synthetic"
    if spec in ("auto", "sim"):
        try:
            return collect_sim(episodes), "sim planar3/curved_reach scripted expert"
        except Exception as e:  # noqa: BLE001 - fall back to synthetic data in auto mode
            if spec == "sim":
                raise
            print(f"(simulator data unavailable: {type(e).__name__}: {e}; using synthetic data)")
            return synthetic_dataset(episodes, 200), "synthetic (sim unavailable)"
    return Dataset.load(spec), f"dataset {spec}"


def onnx_latency(path: Path, obs: np.ndarray, iters: int) -> dict:
    policy = OnnxPolicy(path, threads=1)
    x = obs[:1].astype(np.float32)
    for _ in range(200):
        policy.predict(x)
    ns = np.empty(iters, dtype=np.int64)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        policy.predict(x)
        ns[i] = time.perf_counter_ns() - t0
    us = ns / 1e3
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)),
            "file_kb": path.stat().st_size / 1024}


def bench_kind(kind: str, ds, work: Path, args) -> dict:
    mcfg, tcfg = load_configs(ROOT / "config" / "train" / f"{kind}.yaml")
    # Throughput: best and median of short runs per thread count (the machine may be shared;
    # best = least disturbed).
    row = {"throughput_steps": args.steps, "batch_size": tcfg.batch_size, "model": mcfg.to_dict(),
           "train": tcfg.to_dict(), "samples_per_s": {}, "samples_per_s_median": {}}
    for threads in args.threads:
        rates = []
        for i in range(args.repeats):
            r = train(ds, mcfg, replace(tcfg, max_steps=args.steps, patience=0, threads=threads),
                      work / f"{kind}-t{threads}-{i}", progress=False)
            rates.append(r.samples_per_second)
        row["samples_per_s"][threads] = max(rates)
        row["samples_per_s_median"][threads] = float(np.median(rates))
    row["params"] = r.num_parameters
    full = args.full or kind == "chunk_mlp"
    run = work / kind if full else work / f"{kind}-t{args.threads[0]}-0"
    row["full_run"] = full
    if full:  # the shipped config as is (its own thread count)
        t0 = time.perf_counter()
        r = train(ds, mcfg, tcfg, run, progress=False)
        row.update(train_wall_s=time.perf_counter() - t0, epochs=r.epochs, steps=r.steps,
                   best_epoch=r.best_epoch, best_val_loss=r.best_val_loss, threads=tcfg.threads,
                   final_train_loss=r.final_train_loss, stopped_early=r.stopped_early)
    path = export(run, work / f"{kind}.onnx")
    row["parity_max_abs_diff"] = json.loads((run / "export_parity.json").read_text())["max_abs_diff"]
    row.update(onnx_latency(path, np.load(run / "holdout_obs.npy"), args.onnx_iters))
    return row


def depth_sweep(ds, work: Path, epochs: int) -> list:
    rows = []
    _, tcfg = load_configs(ROOT / "config" / "train" / "chunk_mlp.yaml")
    tcfg = replace(tcfg, max_epochs=epochs, patience=0, threads=2)
    for depth in (2, 4, 8, 16):
        for residual, layernorm in ((True, True), (False, False), (False, True)):
            m = ModelConfig(kind="chunk_mlp", depth=depth, width=256, residual=residual, layernorm=layernorm)
            name = f"d{depth}-{'res' if residual else 'plain'}{'-ln' if layernorm else ''}"
            r = train(ds, m, tcfg, work / "sweep" / name, progress=False)
            rows.append({"depth": depth, "residual": residual, "layernorm": layernorm,
                         "best_val_loss": r.best_val_loss, "final_train_loss": r.final_train_loss,
                         "samples_per_s": r.samples_per_second, "params": r.num_parameters})
            print(f"  sweep {name:<14} val {r.best_val_loss:.4f}  train {r.final_train_loss:.4f}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="auto")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per throughput run")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per kind (best is reported)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch threads for throughput")
    ap.add_argument("--keep-sweep", action="store_true",
                    help="without --sweep: carry the depth sweep over from the existing --out file")
    ap.add_argument("--full", action="store_true", help="train every kind to completion")
    ap.add_argument("--sweep", action="store_true", help="depth sweep: residual vs plain MLPs")
    ap.add_argument("--sweep-epochs", type=int, default=20)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--onnx-iters", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training.json")
    args = ap.parse_args(argv)

    import onnxruntime
    import torch

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ds, source = load_data(args.data, args.episodes)
    collect_s = time.perf_counter() - t0
    print(f"data: {source}: {len(ds)} episodes, {ds.num_frames} frames, obs {ds.contract.obs_dim}, "
          f"act {ds.contract.act_dim} ({collect_s:.1f} s)")
    rows, sweep = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in args.kinds:
            rows[kind] = bench_kind(kind, ds, work, args)
        if args.sweep:
            sweep = depth_sweep(ds, work, args.sweep_epochs)

    th = args.threads
    print(f"\n{'kind':<12} {'params':>8} " + " ".join(f"{f'samples/s {t}T':>13}" for t in th)
          + f" {'onnx med us':>12} {'p99 us':>8} {'parity':>8}   full run (shipped config): epochs, wall s, val loss")
    for kind, r in rows.items():
        val = "n/a (no validation split)" if r.get("best_val_loss") is None else f"{r['best_val_loss']:.4f}"
        full = (f"{r['epochs']} epochs, {r['train_wall_s']:.1f} s ({r['threads']} thread), val {val}"
                if r["full_run"] else "-")
        print(f"{kind:<12} {r['params']:>8} " + " ".join(f"{r['samples_per_s'][t]:>13.0f}" for t in th)
              + f" {r['median_us']:>12.1f} {r['p99_us']:>8.1f} {r['parity_max_abs_diff']:>8.1e}   {full}")
    print(f"(throughput: best of {args.repeats} x {args.steps} steps; ONNX batch 1, 1 thread. val loss: "
          "normalized L1 (deterministic kinds), NLL per action dim (gmm).\n load average before/after: "
          f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)")
    sweep_note = "measured in this run" if sweep is not None else None
    if sweep is None and args.keep_sweep and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("depth_sweep"):
            sweep = old["depth_sweep"]
            sweep_note = f"carried over from the run of {old.get('created')} (losses are deterministic)"

    result = {"data": {"source": source, "episodes": len(ds), "frames": ds.num_frames,
                       "obs_dim": ds.contract.obs_dim, "act_dim": ds.contract.act_dim,
                       "data_hash": ds.content_hash()},
              "throughput_threads": args.threads, "onnx_threads": 1, "results": rows,
              "depth_sweep": sweep, "depth_sweep_note": sweep_note,
              "depth_sweep_setup": {"kind": "chunk_mlp", "width": 256, "epochs": args.sweep_epochs, "threads": 2,
                                    "config": "config/train/chunk_mlp.yaml train section, patience 0"},
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
                          "cpus": os.cpu_count(),
                          "loadavg_1min_before_after": [load_before[0], os.getloadavg()[0]]},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
