"""Recorder I/O: can one Python thread write the episode bags at the rates we record?

Stream: 1 kHz sensor_msgs/JointState (7 joints) + 1 kHz Float64MultiArray commands +
100 Hz bc_msgs/TaskState, all pre-serialized CDR (what rclpy `raw=True` subscriptions
deliver), replayed as fast as possible. Payloads come from a pool of distinct messages
(noisy values, advancing stamps) so compression is not flattered by repeated bytes.

Variants:
  rosbags_raw        rosbags.rosbag2.Writer, MCAP storage (library alone)
  mcap_raw           mcap.writer.Writer, zstd, 256 KiB chunks (library alone)
  episode_writer     EpisodeBagWriter defaults (zstd), flushing every 200 ms of *data* time
                     (as it would in real time), metadata + episode.yaml included
  episode_writer_none  same, no compression
  episode_writer_obj   EpisodeBagWriter given message objects (serializes itself)

Prints a table and writes bench/results/recorder_io.json. Usage:
    python bench/bench_recorder_io.py [--seconds 30]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.data import rostypes  # noqa: E402
from bc_policy_node.core.data.bagio import EpisodeBagWriter  # noqa: E402
from bc_policy_node.core.types import JointStateData, TaskStateData  # noqa: E402

TOPICS = {"/joint_states": "sensor_msgs/msg/JointState",
          "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
          "/task_state": "bc_msgs/msg/TaskState"}
JOINTS = [f"joint{i}" for i in range(1, 8)]
POOL = 1000


def make_objects(rng):
    js = [JointStateData(stamp=1000.0 + i * 1e-3, name=JOINTS, position=rng.normal(size=7),
                         velocity=rng.normal(size=7), effort=rng.normal(size=7)) for i in range(POOL)]
    cmd = [{"data": rng.normal(size=7)} for _ in range(POOL)]
    ts = [TaskStateData(stamp=1000.0 + i * 1e-2, task="curved_reach", episode_id=3, seed=11,
                        variant="", goal=rng.normal(size=3), obstacle=np.zeros(0),
                        waypoints=np.zeros(0), phase=0, num_phases=1, mode=-1, step=i,
                        status="running", success=False, done=False, reason="",
                        ee_position=rng.normal(size=3)) for i in range(POOL)]
    return js, cmd, ts


def schedule(seconds: float):
    """(topic index, pool index, receive ns) for every message, 1 ms ticks."""
    ticks = int(seconds * 1000)
    out = []
    for k in range(ticks):
        t = 1_000_000_000_000 + k * 1_000_000
        out.append((0, k % POOL, t + 200_000))
        out.append((1, k % POOL, t + 600_000))
        if k % 10 == 0:
            out.append((2, (k // 10) % POOL, t + 300_000))
    return out


def run_rosbags(path, sched, raw):
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = rostypes.typestore()
    names = list(TOPICS)
    t0 = time.perf_counter()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = [w.add_connection(t, TOPICS[t], typestore=store) for t in names]
        for ti, pi, t in sched:
            w.write(conns[ti], t, raw[ti][pi])
    return time.perf_counter() - t0, None


def run_mcap(path, sched, raw):
    from bc_policy_node.core.data.bagio import mcap_writer

    path.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(path / "x.mcap", "wb") as f:
        w = mcap_writer(f, "zstd", 256 * 1024)
        cids = []
        for t, typ in TOPICS.items():
            msgdef, rihs, _ = rostypes.type_info(typ)
            sid = w.register_schema(typ, "ros2msg", msgdef.encode())
            cids.append(w.register_channel(t, "cdr", sid, {"offered_qos_profiles": "[]"}))
        for ti, pi, t in sched:
            w.add_message(cids[ti], t, raw[ti][pi], t)
        w.finish()
    return time.perf_counter() - t0, None


def run_episode(path, sched, payload, compression="zstd"):
    names = list(TOPICS)
    lat = np.empty(len(sched), dtype=np.int64)
    pc = time.perf_counter_ns
    t0 = time.perf_counter()
    w = EpisodeBagWriter(path, TOPICS, {"task": "bench", "episode_id": 0},
                         compression=compression, flush_interval_s=float("inf"))
    next_flush = sched[0][2] + 200_000_000
    for i, (ti, pi, t) in enumerate(sched):
        a = pc()
        w.write(names[ti], payload[ti][pi], t)
        if t >= next_flush:          # what the time-based flush does in real time
            w.flush()
            next_flush += 200_000_000
        lat[i] = pc() - a
    w.close(success=True)
    return time.perf_counter() - t0, lat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0, help="simulated recording length")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "recorder_io.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    objs = make_objects(rng)
    raw = [[rostypes.serialize(typ, o) for o in pool] for typ, pool in zip(TOPICS.values(), objs)]
    sched = schedule(args.seconds)
    n = len(sched)
    tmp = Path(tempfile.mkdtemp(prefix="bench_recorder_io_"))
    variants = {
        "rosbags_raw": lambda p: run_rosbags(p, sched, raw),
        "mcap_raw": lambda p: run_mcap(p, sched, raw),
        "episode_writer": lambda p: run_episode(p, sched, raw),
        "episode_writer_none": lambda p: run_episode(p, sched, raw, "none"),
        "episode_writer_obj": lambda p: run_episode(p, sched, objs),
    }
    results = {}
    try:
        for name, fn in variants.items():
            best = None
            for rep in range(3 if name != "episode_writer_obj" else 1):
                p = tmp / f"{name}_{rep}"
                secs, lat = fn(p)
                size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                if best is None or secs < best["seconds"]:
                    best = {"seconds": secs, "rows_per_s": n / secs,
                            "realtime_factor": args.seconds / secs,
                            "cpu_fraction_at_realtime": secs / args.seconds,
                            "bytes": size, "bytes_per_s_recorded": size / args.seconds}
                    if lat is not None:
                        best.update({f"write_us_p{q}": float(np.percentile(lat, q)) / 1e3
                                     for q in (50, 99, 99.9)})
                        best["write_us_max"] = float(lat.max()) / 1e3
                shutil.rmtree(p, ignore_errors=True)
            results[name] = best
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc = {"bench": "recorder_io", "messages": n, "simulated_seconds": args.seconds,
           "stream": "1 kHz JointState(7) + 1 kHz Float64MultiArray(7) + 100 Hz TaskState",
           "needed_rows_per_s": 2100, "machine": {"python": platform.python_version(),
                                                  "cpus": os.cpu_count(), "platform": platform.platform()},
           "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"{n} messages = {args.seconds:g} s of 1 kHz JS + 1 kHz cmd + 100 Hz task state")
    print(f"{'variant':<22}{'rows/s':>10}{'x realtime':>11}{'CPU@1x':>8}{'MB/s rec':>9}"
          f"{'p50 us':>8}{'p99 us':>8}{'p99.9':>8}{'max us':>8}")
    for name, r in results.items():
        lat = "".join(f"{r.get(k, float('nan')):>8.1f}" for k in
                      ("write_us_p50", "write_us_p99", "write_us_p99.9", "write_us_max"))
        print(f"{name:<22}{r['rows_per_s']:>10.0f}{r['realtime_factor']:>11.1f}"
              f"{100 * r['cpu_fraction_at_realtime']:>7.1f}%{r['bytes_per_s_recorded'] / 1e6:>9.3f}" + lat)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
