"""Recorder I/O with cameras: bytes per frame in the episode bags and the writer's throughput.

Stream: a 50 Hz lock-step episode - sensor_msgs/JointState (3 joints) + bc_msgs/TaskState +
Float64MultiArray command per tick - plus one camera frame per tick, pre-serialized CDR (what
the recorder's raw subscriptions deliver), written by `EpisodeBagWriter` as fast as it takes
them, flushed every 200 ms of data time (as in real time). Frames are real renders of the planar3
overhead camera along expert episodes (a distinct frame per tick by default: a cycled pool would
let zstd match whole repeated frames), JPEG at the bridge's default quality (90), or raw rgb8.

Variants: camera 96x96 / 224x224 x CompressedImage (JPEG) / raw Image x MCAP chunk compression
zstd (the recorder's default) / none; plus the state-only stream (the baseline the camera adds to).

Per variant: CDR bytes per frame (the message), bag bytes per frame ((bag - state-only bag) /
frames, after MCAP compression), the writer's throughput (frames/s and MB/s of CDR, taking the
whole stream), the CPU fraction of one core it needs at 50 Hz, and write() latency p50/p99 of
the frames. The machine's load average is recorded. Note: the sim scene is static but for the
arm, so consecutive frames share most of their bytes - JPEG ones included - and zstd chunks
(hundreds of kB, many frames) match across frames; a real camera's noise would not compress so. Prints a table and writes
bench/results/recorder_images.json. Usage:
    python bench/bench_recorder_images.py [--seconds 20] [--sizes 96 224]
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
from bc_policy_node.core.sim.camera import CameraRenderer, encode_jpeg, gl_backend, goal_world  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv  # noqa: E402
from bc_policy_node.core.types import CompressedImageData, ImageData, JointStateData, TaskStateData  # noqa: E402

RATE = 50.0
CMD = "/forward_position_controller/commands"
STATE_TOPICS = {"/joint_states": "sensor_msgs/msg/JointState", "/task_state": "bc_msgs/msg/TaskState",
                CMD: "std_msgs/msg/Float64MultiArray"}
JPEG_TOPIC, RAW_TOPIC = "/camera/overhead/image_raw/compressed", "/camera/overhead/image_raw"
QUALITY = 90      # mujoco_bridge camera_jpeg_quality default


def render_pool(size: int, n: int) -> list:
    """n distinct overhead frames (uint8 size x size x 3) along expert episodes."""
    env = SimEnv("planar3", "curved_reach")
    expert = env.make_expert()
    r = CameraRenderer(env.sim.model, "overhead", size, size, source=str(env.sim.path))
    out = []
    try:
        seed = 0
        msgs = env.reset(seed)
        while len(out) < n:
            if env.done:
                seed += 1
                msgs = env.reset(seed)
            msgs = env.step(expert.act_messages(msgs))
            out.append(r.capture(env.sim.data, goal_world(env.sim, env.task.goal)))
    finally:
        r.close()
    return out


def state_stream(ticks: int, rng) -> list:
    """[(topic, CDR, receive ns)] of the lock-step state/command stream, tick by tick."""
    out = []
    for k in range(ticks):
        t = 1000.0 + k / RATE
        ns = int(round(t * 1e9))
        js = JointStateData(stamp=t, name=["j1", "j2", "j3"], position=rng.normal(size=3), velocity=rng.normal(size=3))
        ts = TaskStateData(stamp=t, task="curved_reach", episode_id=0, seed=0, variant="", goal=rng.normal(size=2),
                           obstacle=np.zeros(0), waypoints=np.zeros(0), phase=0, num_phases=1, mode=-1, step=k,
                           status="running", success=False, done=False, reason="", ee_position=rng.normal(size=2))
        out.append([("/joint_states", rostypes.serialize(STATE_TOPICS["/joint_states"], js), ns + 200_000),
                    ("/task_state", rostypes.serialize(STATE_TOPICS["/task_state"], ts), ns + 400_000),
                    (CMD, rostypes.serialize(STATE_TOPICS[CMD], {"data": rng.normal(size=3)}), ns + 3_000_000)])
    return out


def frame_messages(pool: list, kind: str) -> list:
    msgs = []
    for i, img in enumerate(pool):
        t = 1000.0 + i / RATE
        if kind == "jpeg":
            msgs.append(rostypes.serialize("sensor_msgs/msg/CompressedImage",
                                           CompressedImageData(t, "jpeg", encode_jpeg(img, QUALITY))))
        else:
            h, w, _ = img.shape
            msgs.append(rostypes.serialize("sensor_msgs/msg/Image", ImageData(t, h, w, "rgb8", 3 * w, img.tobytes())))
    return msgs


def run(path: Path, state: list, frames: list, topic: str, typ: str, compression: str) -> dict:
    topics = dict(STATE_TOPICS)
    if frames:
        topics[topic] = typ
    lat = []
    pc = time.perf_counter_ns
    t0 = time.perf_counter()
    w = EpisodeBagWriter(path, topics, {"task": "bench", "episode_id": 0}, compression=compression,
                         flush_interval_s=float("inf"))
    next_flush = state[0][0][2] + 200_000_000
    for k, tick in enumerate(state):
        js, ts, cmd = tick
        w.write(js[0], js[1], js[2])
        if frames:
            a = pc()
            w.write(topic, frames[k % len(frames)], js[2] + 300_000)
            lat.append(pc() - a)
        w.write(ts[0], ts[1], ts[2])
        w.write(cmd[0], cmd[1], cmd[2])
        if cmd[2] >= next_flush:            # what the time-based flush does in real time
            w.flush()
            next_flush += 200_000_000
    w.close(success=True)
    secs = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"seconds": secs, "bag_bytes": size, "write_ns": np.asarray(lat, dtype=np.int64)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="simulated episode length at 50 Hz")
    ap.add_argument("--pool", type=int, default=0, help="distinct rendered frames per size (0: one per tick)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (the fastest is reported)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "recorder_images.json"))
    a = ap.parse_args()
    load0 = os.getloadavg()
    rng = np.random.default_rng(0)
    ticks = int(a.seconds * RATE)
    state = state_stream(ticks, rng)
    tmp = Path(tempfile.mkdtemp(prefix="bench_recorder_images_"))
    rows = []
    try:
        base = {}
        for comp in ("zstd", "none"):
            r = min((run(tmp / f"state_{comp}_{i}", state, [], "", "", comp) for i in range(a.repeats)),
                    key=lambda x: x["seconds"])
            base[comp] = r
            rows.append({"variant": f"state only, {comp}", "size": 0, "kind": "none", "compression": comp,
                         "frames": 0, "cdr_bytes_per_frame": 0.0, "bag_bytes_per_frame": 0.0,
                         "bag_bytes": r["bag_bytes"], "seconds": r["seconds"],
                         "ticks_per_s": ticks / r["seconds"], "cpu_fraction_at_50hz": r["seconds"] / a.seconds})
        for size in a.sizes:
            pool = render_pool(size, a.pool or ticks)
            for kind, topic, typ in (("jpeg", JPEG_TOPIC, "sensor_msgs/msg/CompressedImage"),
                                     ("raw", RAW_TOPIC, "sensor_msgs/msg/Image")):
                frames = frame_messages(pool, kind)
                cdr = float(np.mean([len(f) for f in frames]))
                for comp in ("zstd", "none"):
                    runs = []
                    for i in range(a.repeats):
                        p = tmp / f"{size}_{kind}_{comp}_{i}"
                        runs.append(run(p, state, frames, topic, typ, comp))
                        shutil.rmtree(p, ignore_errors=True)
                    r = min(runs, key=lambda x: x["seconds"])
                    lat = r["write_ns"] / 1e3
                    rows.append({
                        "variant": f"{size}x{size} {kind}, {comp}", "size": size, "kind": kind, "compression": comp,
                        "frames": ticks, "cdr_bytes_per_frame": cdr,
                        "bag_bytes_per_frame": (r["bag_bytes"] - base[comp]["bag_bytes"]) / ticks,
                        "bag_bytes": r["bag_bytes"], "seconds": r["seconds"],
                        "frames_per_s": ticks / r["seconds"], "ticks_per_s": ticks / r["seconds"],
                        "cdr_mb_per_s": ticks * cdr / r["seconds"] / 1e6,
                        "cpu_fraction_at_50hz": r["seconds"] / a.seconds,
                        "frame_write_us_p50": float(np.percentile(lat, 50)),
                        "frame_write_us_p99": float(np.percentile(lat, 99)),
                        "frame_write_us_max": float(lat.max())})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    doc = {"bench": "recorder_images", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "stream": f"{a.seconds:g} s at {RATE:g} Hz: JointState(3) + TaskState + Float64MultiArray(3) "
                     f"per tick + one camera frame per tick (planar3 overhead renders, JPEG q{QUALITY} or rgb8)",
           "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                       "platform": platform.platform(), "mujoco_gl": gl_backend(),
                       "loadavg_start": list(load0), "loadavg_end": list(load1)},
           "note": "zstd bag bytes reflect the static sim scene: consecutive frames share most bytes "
                   "(JPEG too), and an MCAP chunk holds many frames",
           "args": vars(a), "results": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{ticks} ticks = {a.seconds:g} s at {RATE:g} Hz, one frame per tick; load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f}")
    print(f"{'variant':<24}{'CDR B/frame':>12}{'bag B/frame':>12}{'frames/s':>10}{'MB/s':>7}{'CPU@50Hz':>9}"
          f"{'p50 us':>8}{'p99 us':>8}")
    for r in rows:
        if not r["frames"]:
            print(f"{r['variant']:<24}{'-':>12}{'-':>12}{r['ticks_per_s']:>10.0f}{'-':>7}"
                  f"{100 * r['cpu_fraction_at_50hz']:>8.2f}%  (ticks/s, bag {r['bag_bytes']} B)")
            continue
        print(f"{r['variant']:<24}{r['cdr_bytes_per_frame']:>12.0f}{r['bag_bytes_per_frame']:>12.0f}"
              f"{r['frames_per_s']:>10.0f}{r['cdr_mb_per_s']:>7.1f}{100 * r['cpu_fraction_at_50hz']:>8.2f}%"
              f"{r['frame_write_us_p50']:>8.1f}{r['frame_write_us_p99']:>8.1f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
