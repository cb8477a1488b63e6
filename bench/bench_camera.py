#!/usr/bin/env python3
"""Camera frames of the MuJoCo bridge: offscreen render time, JPEG encode time and size.

    python bench/bench_camera.py [--frames 60] [--sizes 64 96 224] [--quality 90]

Per square size, without shadows (the default) and with them: `CameraRenderer.update` (scene,
CPU) and `render` (GL, MUJOCO_GL=egl when unset; here Mesa's software renderer) p50/p99 per frame, over the planar3 overhead camera
along an expert episode (the arm moves, so every frame differs); `encode_jpeg` p50/p99 and
bytes per frame; raw bytes per frame. The machine's load average is recorded (a long experiment
may be running on the same 2 cores). Prints a table and writes bench/results/camera.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import mujoco
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bc_policy_node.core.sim.camera import CameraRenderer, encode_jpeg, gl_backend, goal_world  # noqa: E402
from bc_policy_node.core.sim.env import SimEnv  # noqa: E402


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def bench_size(size: int, frames: int, quality: int, shadows: bool = False) -> dict:
    env = SimEnv("planar3", "curved_reach")
    expert = env.make_expert()
    r = CameraRenderer(env.sim.model, "overhead", size, size, source=str(env.sim.path), shadows=shadows)
    upd, ren, enc, nbytes = [], [], [], []
    try:
        msgs = env.reset(0)
        for _ in range(3):                        # warm-up (first frames compile shaders)
            r.capture(env.sim.data)
        seed = 0
        while len(ren) < frames:
            if env.done:
                seed += 1
                msgs = env.reset(seed)
            msgs = env.step(expert.act_messages(msgs))
            goal = goal_world(env.sim, env.task.goal)
            t0 = time.perf_counter()
            r.update(env.sim.data, goal)
            t1 = time.perf_counter()
            img = r.render()
            t2 = time.perf_counter()
            jpg = encode_jpeg(img, quality)
            t3 = time.perf_counter()
            upd.append(t1 - t0)
            ren.append(t2 - t1)
            enc.append(t3 - t2)
            nbytes.append(len(jpg))
    finally:
        r.close()
    return {"size": size, "shadows": shadows, "frames": frames,
            "update_ms_p50": pct(upd, 50), "update_ms_p99": pct(upd, 99),
            "render_ms_p50": pct(ren, 50), "render_ms_p99": pct(ren, 99),
            "jpeg_ms_p50": pct(enc, 50), "jpeg_ms_p99": pct(enc, 99),
            "jpeg_bytes_mean": float(np.mean(nbytes)), "raw_bytes": size * size * 3,
            "max_fps_render_plus_jpeg": 1e3 / (pct(ren, 50) + pct(enc, 50))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 224])
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "camera.json"))
    a = ap.parse_args()
    load0 = os.getloadavg()
    rows = [bench_size(s, a.frames, a.quality, shadows) for s in a.sizes for shadows in (False, True)]
    load1 = os.getloadavg()
    print(f"MUJOCO_GL={gl_backend()}  load average {load0[0]:.2f} -> {load1[0]:.2f}  ({a.frames} frames per size)")
    print(f"{'size':>5} {'shadows':>7} {'render p50/p99 ms':>18} {'update p50 ms':>14} {'jpeg p50/p99 ms':>16} "
          f"{'jpeg B':>8} {'raw B':>7} {'max fps':>8}")
    for r in rows:
        print(f"{r['size']:>5} {'on' if r['shadows'] else 'off':>7} {r['render_ms_p50']:>8.1f} / {r['render_ms_p99']:<7.1f} {r['update_ms_p50']:>14.3f} "
              f"{r['jpeg_ms_p50']:>7.2f} / {r['jpeg_ms_p99']:<6.2f} {r['jpeg_bytes_mean']:>8.0f} "
              f"{r['raw_bytes']:>7} {r['max_fps_render_plus_jpeg']:>8.1f}")
    out = {"bench": "camera", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"python": platform.python_version(), "mujoco": mujoco.__version__,
                       "cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "mujoco_gl": gl_backend(), "loadavg_start": list(load0), "loadavg_end": list(load1)},
           "args": vars(a), "camera": "planar3 overhead", "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
