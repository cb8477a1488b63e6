#!/usr/bin/env python3
"""A vision policy served by the policy node: per-tick cost and the highest sustained control rate.

    source env.sh && python bench/bench_vision_policy.py [--rates 30 50 100 150 200] [--duration 10]

The model: a chunk policy of the package's default architecture (`learning.ModelConfig()`:
chunk_mlp 3 x 256, K = 20, `learning.vision` CNN encoder with 32 channels and 32 spatial-softmax
keypoints) on one 96x96 JPEG camera + the 3 joint positions, trained here for a few steps with the
learning API on planar3 curved_reach expert rollouts seen by the overhead camera, and exported to
ONNX (uint8 image input, pixel scaling inside). Inference cost is what matters, not skill; the
JSON says which model was used (``--model handbuilt``: an onnx.helper graph with the same
convolutions, for a checkout without torch).

1. In process (no DDS), over the rendered frames of those rollouts (JPEG as the bridge encodes
   them): p50/p99 of the JPEG decode (`core.image.decode`), the ONNX inference, the engine's step
   (`PolicyController.step`: inference + temporal ensembling + safety) and the whole tick
   (assembler update with the decode + step).
2. Over real DDS: the policy node (installed executable, free-running at the contract rate,
   temporal ensembling, query every tick) and a robot process (this file, ``--role robot``)
   publishing /joint_states and /camera/overhead/image_raw/compressed (every tick a new
   frame, stamped like the state; reliable writer, the node reads best effort) and following the
   commands. Per rate (a window of >= --duration s and >= --min-ticks ticks), from the node's /policy/status over the measured window: achieved rate,
   missed ticks (period > 1.5 x nominal), tick time p50/p99 (the node's own measure: take +
   decode + inference + ensembling + publish), inference p50/p99, obs->command latency, CPU.
   The highest rate with < 0.5% missed ticks (and >= 98% of the rate achieved) at which every
   lower rate of the sweep passed too is reported (``max_sustained_rate_hz``), and the highest
   passing one (``max_passing_rate_hz``).

Goal (issue #14): >= 30 Hz with p99 tick < 15 ms. Timings are noisy (2 shared cores; the load
average is recorded). Prints a table and writes bench/results/vision_policy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_policy_node import StatusWatch, cpu_seconds, max_rate  # noqa: E402  (sets the DDS env too)

import numpy as np  # noqa: E402

JOINTS = ["j1", "j2", "j3"]
CAMERA = "overhead"
SIZE = 96
JPEG_TOPIC = f"/camera/{CAMERA}/image_raw/compressed"
FRAMES_FILE = "frames.npz"


def contract_dict(rate: float) -> dict:
    return {"contract_version": 1, "name": "bench_vision_planar3", "robot": "planar3", "task": "curved_reach",
            "control_rate_hz": float(rate), "chunk_length": 20, "stale_after_s": 0.1,
            "observation": [
                {"name": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                 "field": "position", "joints": JOINTS},
                {"name": CAMERA, "kind": "image", "topic": JPEG_TOPIC, "type": "sensor_msgs/msg/CompressedImage",
                 "encoding": "rgb8", "height": SIZE, "width": SIZE}],
            "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
                       "type": "std_msgs/msg/Float64MultiArray", "joints": JOINTS,
                       "lower": [-3.0, -2.6, -2.6], "upper": [3.0, 2.6, 2.6], "max_step": [0.05, 0.05, 0.05]}}


# ----------------------------------------------------------------------------- model + frames
def expert_data(contract, seeds):
    """Expert rollouts of planar3 curved_reach through the contract (the camera rendered and JPEG
    encoded like the bridge's): training episodes and the JPEG bytes of every frame."""
    from bc_policy_node.core.eval.rollout import expert_act_fn, rollout
    from bc_policy_node.core.sim.env import make_env

    env = make_env("planar3", "curved_reach", cameras=contract.images)
    act = expert_act_fn(env, contract)
    jpegs, episodes = [], []
    orig_step, orig_reset = env.step, env.reset

    def keep(msgs):
        jpegs.append(bytes(msgs[JPEG_TOPIC].data))
        return msgs
    env.step = lambda *a, **k: keep(orig_step(*a, **k))      # type: ignore[method-assign]
    env.reset = lambda *a, **k: keep(orig_reset(*a, **k))    # type: ignore[method-assign]
    for s in seeds:
        episodes.append(rollout(env, contract, act, s).episode(contract.dt, "expert"))
    return episodes, jpegs


def trained_model(work: Path, contract, episodes, steps: int) -> tuple:
    """The default architecture trained for `steps` optimizer steps, exported; (path, info)."""
    import torch

    from bc_policy_node.core.data.episodes import Dataset
    from bc_policy_node.learning import ModelConfig, TrainConfig, export, train

    cfg = ModelConfig()
    res = train(Dataset(contract, episodes), cfg,
                TrainConfig(batch_size=32, max_steps=steps, val_fraction=0.0, patience=0, warmup_steps=0,
                            threads=max(1, os.cpu_count() or 1)),
                work / "run", progress=False)
    path = export(res.run_dir, work / "vision.onnx")
    info = {"source": "trained: learning.train (default ModelConfig, a few steps: inference cost, not skill) "
                      "+ learning.export",
            "train_steps": res.steps, "train_seconds": res.train_seconds, "frames": sum(len(e) for e in episodes),
            "parameters": res.num_parameters, "kind": cfg.kind, "depth": cfg.depth, "width": cfg.width,
            "chunk_length": cfg.chunk_length, "vision_channels": cfg.vision_channels,
            "vision_keypoints": cfg.vision_keypoints, "torch": torch.__version__}
    return path, info


def handbuilt_model(work: Path, contract) -> tuple:
    """onnx.helper graph with the default encoder's convolutions (5x5/2, 3x3/2, 3x3, 1x1; 32
    channels, 32 keypoints, spatial softmax; instance norm standing in for GroupNorm) + a 3 x 256
    MLP head; random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bc_policy_node.core.control.runtime import embed_metadata

    rng = np.random.default_rng(0)
    c, kp, k, a, hidden = 32, 32, contract.chunk_length, contract.act_dim, 256
    inits, nodes = [], []

    def w(name, *shape, scale=None):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        inits.append(numpy_helper.from_array(rng.normal(0, scale or 1 / np.sqrt(fan), shape).astype(np.float32), name))
        return name
    n = helper.make_node
    img = contract.images[0].input_name
    nodes += [n("Cast", [img], ["f"], to=TensorProto.FLOAT), n("Transpose", ["f"], ["chw"], perm=[0, 3, 1, 2])]
    inits.append(numpy_helper.from_array(np.array(1 / 255.0, np.float32), "s"))
    nodes.append(n("Mul", ["chw", "s"], ["x0"]))
    x = "x0"
    for i, (cin, ks, st) in enumerate(((3, 5, 2), (c, 3, 2), (c, 3, 1))):
        nodes += [n("Conv", [x, w(f"W{i}", c, cin, ks, ks), w(f"B{i}", c, scale=0.01)], [f"c{i}"],
                    kernel_shape=[ks, ks], strides=[st, st], pads=[ks // 2] * 4),
                  n("InstanceNormalization", [f"c{i}", w(f"g{i}", c, scale=1.0), w(f"b{i}", c, scale=0.01)], [f"n{i}"]),
                  n("Relu", [f"n{i}"], [f"r{i}"])]
        x = f"r{i}"
    h = w_ = SIZE // 4
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w_), indexing="ij")
    inits += [numpy_helper.from_array(np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32), "pos"),
              numpy_helper.from_array(np.array([0, kp, h * w_], np.int64), "flat"),
              numpy_helper.from_array(np.array([0, 2 * kp], np.int64), "feat"),
              numpy_helper.from_array(np.array([-1, k, a], np.int64), "shape")]
    nodes += [n("Conv", [x, w("Wk", kp, c, 1, 1)], ["maps"]), n("Reshape", ["maps", "flat"], ["m2"]),
              n("Softmax", ["m2"], ["att"], axis=-1), n("MatMul", ["att", "pos"], ["xy"]),
              n("Reshape", ["xy", "feat"], ["kp"]), n("Concat", ["kp", "obs"], ["z0"], axis=1)]
    z, d = "z0", 2 * kp + contract.obs_dim
    for i in range(3):
        nodes += [n("MatMul", [z, w(f"M{i}", d, hidden)], [f"mm{i}"]), n("Add", [f"mm{i}", w(f"a{i}", hidden)], [f"aa{i}"]),
                  n("Relu", [f"aa{i}"], [f"h{i}"])]
        z, d = f"h{i}", hidden
    nodes += [n("MatMul", [z, w("Mo", hidden, k * a, scale=1e-3)], ["o"]), n("Reshape", ["o", "shape"], ["actions"])]
    graph = helper.make_graph(nodes, "vision", [
        helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", contract.obs_dim]),
        helper.make_tensor_value_info(img, TensorProto.UINT8, ["B", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", k, a])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, contract, {"kind": "chunk_mlp", "chunk_length": k})
    path = work / "vision.onnx"
    onnx.save(model, str(path))
    return path, {"source": "hand-built onnx.helper graph (default encoder convolutions, random weights)"}


def at_rate(path: Path, rate: float, out: Path) -> Path:
    """The same graph with its embedded contract at `rate` (the node refuses another rate)."""
    import onnx

    from bc_policy_node.core.contract import Contract
    from bc_policy_node.core.control.runtime import META_KEY, embed_metadata

    proto = onnx.load(str(path))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == META_KEY))
    for key in ("control_rate_hz", "model_id", "created"):
        meta.pop(key, None)
    embed_metadata(proto, Contract.from_dict(contract_dict(rate)), meta)
    onnx.save(proto, str(out))
    return out


# ----------------------------------------------------------------------------- in process
def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e6, q))


def stats_us(xs) -> dict:
    return {"p50_us": pct(xs, 50), "p99_us": pct(xs, 99), "mean_us": float(np.mean(xs) * 1e6), "n": len(xs)}


def in_process(path: Path, jpegs, iters: int) -> dict:
    """Decode, inference, step and tick times of one 96x96 JPEG camera, here (no DDS)."""
    from types import SimpleNamespace

    from bc_policy_node.core.contract import Contract, ObservationAssembler
    from bc_policy_node.core.control.controller import PolicyController, load_policy
    from bc_policy_node.core.control.params import PolicyParams
    from bc_policy_node.core.image import decode

    contract = Contract.from_dict(contract_dict(50.0))
    term = contract.images[0]
    params = PolicyParams()
    policy = load_policy(str(path), contract, params)
    ctl = PolicyController(contract, policy, params)
    asm = ObservationAssembler(contract)
    msgs = [SimpleNamespace(format="jpeg", data=b) for b in jpegs]
    js = SimpleNamespace(name=JOINTS, position=[0.1, -0.2, 0.3])
    dec, inf, step, tick = [], [], [], []
    for i in range(iters):
        m = msgs[i % len(msgs)]
        t0 = time.perf_counter()
        decode(term, m)
        dec.append(time.perf_counter() - t0)
    for i in range(iters):
        t0 = time.perf_counter()
        asm.update("/joint_states", js, i * contract.dt)
        asm.update(JPEG_TOPIC, msgs[i % len(msgs)], i * contract.dt)
        r = ctl.step(asm.vector(), asm.oldest_stamp(), i * contract.dt, images=asm.images())
        tick.append(time.perf_counter() - t0)
        inf.append(r.inference_s)
    frames = asm.images()
    obs = asm.vector()
    for _ in range(iters):
        t0 = time.perf_counter()
        ctl.step(obs, 0.0, 0.0, images=frames)
        step.append(time.perf_counter() - t0)
    return {"jpeg_decode": stats_us(dec), "inference": stats_us(inf), "controller_step": stats_us(step),
            "tick": stats_us(tick), "jpeg_bytes_mean": float(np.mean([len(b) for b in jpegs]))}


# ----------------------------------------------------------------------------- the robot
def robot_main(args) -> None:
    """Publish /joint_states + a JPEG frame at `rate`, follow the commands; print a JSON summary."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, JointState
    from std_msgs.msg import Float64MultiArray

    from bc_policy_node.nodes import qos
    from bc_policy_node.nodes.conversions import to_time

    data = np.load(args.frames)
    frames = [CompressedImage(format="jpeg", data=bytes(b[:n])) for b, n in zip(data["jpeg"], data["size"])]
    rclpy.init()
    node = rclpy.create_node("bench_vision_robot")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    js_pub = node.create_publisher(JointState, "/joint_states", qos.STATE)
    cam_pub = node.create_publisher(CompressedImage, JPEG_TOPIC, qos.CAMERA_RELIABLE_QOS)
    q = np.array([0.1, -0.2, 0.3])
    got = {"n": 0}

    def on_cmd(msg):
        q[:] = msg.data
        got["n"] += 1
    node.create_subscription(Float64MultiArray, "/forward_position_controller/commands", on_cmd, qos.COMMAND)
    js = JointState(name=JOINTS, velocity=[0.0] * 3)
    deadline = time.monotonic() + 30
    while (cam_pub.get_subscription_count() == 0 or js_pub.get_subscription_count() == 0) \
            and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    sent = [0]

    def on_timer():
        stamp = to_time(time.time())
        js.header.stamp = stamp
        js.position = q.tolist()
        img = frames[sent[0] % len(frames)]
        img.header.stamp = stamp
        js_pub.publish(js)
        cam_pub.publish(img)
        sent[0] += 1
    node.create_timer(1.0 / args.rate, on_timer)
    t0 = time.monotonic()
    try:
        while time.monotonic() < t0 + args.duration:
            ex.spin_once(timeout_sec=0.01)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print(json.dumps({"role": "robot", "sent": sent[0], "commands": got["n"], "seconds": time.monotonic() - t0}),
          flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run_rate(watch, work: Path, model: Path, frames: Path, rate: float, duration: float, warmup: float) -> dict:
    from bc_policy_node.graph import policy_nodes
    from bc_policy_node.procs import NodeProcess

    cpath = work / f"contract_{rate:g}.yaml"
    cpath.write_text(json.dumps(contract_dict(rate)))   # JSON is YAML
    m = at_rate(model, rate, work / f"vision_{rate:g}.onnx")
    spec = policy_nodes(model=str(m), autostart=True)[0]
    extra = {"contract": str(cpath), "status_rate_hz": 1.0,
             "stats_window": int(max(1000, min(60000, rate * duration)))}
    node = NodeProcess(spec, work / f"logs_{rate:g}", extra_params=extra)
    robot = None
    try:
        watch.last = None
        watch.wait(lambda s: s.lifecycle_state == "active" and s.model_id != "", timeout=120.0)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "robot", "--rate", str(rate),
               "--duration", str(duration + warmup + 120.0), "--frames", str(frames)]
        robot = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watch.wait(lambda s: s.ticks > rate * 0.5 and s.safety_stale < s.ticks, timeout=120.0)
        watch.spin(warmup)
        _, s0 = watch.fresh()
        cpu0 = cpu_seconds(node.pid), time.monotonic()
        watch.spin(duration)
        _, s1 = watch.fresh()
        cpu1 = cpu_seconds(node.pid), time.monotonic()
        robot.send_signal(signal.SIGINT)
        out, err = robot.communicate(timeout=60)
        robot_out = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        ticks, missed = int(s1.ticks - s0.ticks), int(s1.missed_ticks - s0.missed_ticks)
        secs = (s1.header.stamp.sec + s1.header.stamp.nanosec * 1e-9) - (s0.header.stamp.sec + s0.header.stamp.nanosec * 1e-9)
        return {"rate_hz": rate, "window_s": secs, "ticks": ticks,
                "achieved_rate_hz": ticks / secs if secs > 0 else 0.0, "missed_ticks": missed,
                "missed_pct": 100.0 * missed / max(ticks, 1),
                "tick_time_p50_us": s1.tick_time_p50_us, "tick_time_p99_us": s1.tick_time_p99_us,
                "inference_time_p50_us": s1.inference_time_p50_us, "inference_time_p99_us": s1.inference_time_p99_us,
                "period_jitter_p99_us": s1.period_jitter_p99_us,
                "obs_to_cmd_latency_p50_us": s1.obs_to_cmd_latency_p50_us,
                "obs_to_cmd_latency_p99_us": s1.obs_to_cmd_latency_p99_us,
                "safety_stale": int(s1.safety_stale - s0.safety_stale),
                "node_cpu_pct": 100.0 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]),
                "node_cpu_us_per_tick": 1e6 * (cpu1[0] - cpu0[0]) / max(ticks, 1), "robot": robot_out}
    finally:
        if robot is not None and robot.poll() is None:
            robot.kill()
            robot.wait()
        node.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="bench", choices=["bench", "robot"])
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--frames", default="")
    ap.add_argument("--rates", type=float, nargs="+", default=[30.0, 50.0, 100.0, 150.0, 200.0])
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    ap.add_argument("--min-ticks", type=int, default=1000,
                    help="measured window at least this many ticks (30 Hz: 33 s), so 0.5%% is >= 5 ticks")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for this process and its children (the node, the robot), e.g. -10 for the "
                         "priority a control process gets on a robot (recorded in the results)")
    ap.add_argument("--iters", type=int, default=2000, help="in-process repetitions")
    ap.add_argument("--model", default="trained", choices=["trained", "handbuilt"])
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2, help="expert rollouts rendered for frames and training")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "vision_policy.json"))
    args = ap.parse_args()
    if args.role == "robot":
        robot_main(args)
        return

    if args.nice:
        os.nice(args.nice)
    from bc_policy_node.core.contract import Contract

    contract = Contract.from_dict(contract_dict(50.0))
    results = {"bench": "vision_policy", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "meta": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                        "camera": f"{CAMERA} {SIZE}x{SIZE} JPEG (quality 90, as the bridge), every tick a new frame",
                        "execution_mode": "temporal_ensembling", "m": 0.01, "query_every": 1,
                        "missed_tick": "period > 1.5 x nominal", "duration_s": args.duration,
                        "min_ticks": args.min_ticks, "niceness": os.nice(0),
                        "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bcp-bench-vision-") as tmp:
        work = Path(tmp)
        print("[bench] rendering expert rollouts ...", flush=True)
        episodes, jpegs = expert_data(contract, range(args.seeds))
        if args.model == "trained":
            print(f"[bench] training the default vision policy for {args.train_steps} steps ...", flush=True)
            model, info = trained_model(work, contract, episodes, args.train_steps)
        else:
            model, info = handbuilt_model(work, contract)
        results["model"] = info
        print("[bench] in process ...", flush=True)
        results["in_process"] = in_process(model, jpegs, args.iters)
        frames = work / FRAMES_FILE
        size = np.array([len(b) for b in jpegs])
        buf = np.zeros((len(jpegs), size.max()), np.uint8)
        for i, b in enumerate(jpegs):
            buf[i, :len(b)] = np.frombuffer(b, np.uint8)
        np.savez(frames, jpeg=buf, size=size)

        import rclpy

        rclpy.init()
        watch = StatusWatch()
        sweep = {}
        try:
            for rate in args.rates:
                print(f"[bench] policy node free-run {rate:g} Hz ...", flush=True)
                window = max(args.duration, args.min_ticks / rate)   # a missed-tick rate needs enough ticks
                sweep[f"{rate:g}"] = run_rate(watch, work, model, frames, rate, window, args.warmup)
        finally:
            watch.close()
            rclpy.try_shutdown()
    results["free_run"] = sweep
    # headline: every rate up to it passed (a loaded machine can fail a middle rate and pass a higher one)
    results["max_sustained_rate_hz"] = max_rate(sweep, monotone=True)
    results["max_passing_rate_hz"] = max_rate(sweep)
    r30 = min(sweep.values(), key=lambda r: abs(r["rate_hz"] - 30.0))
    results["goal"] = {"rate_hz": 30.0, "p99_tick_ms": 15.0,
                       "met": bool(results["max_sustained_rate_hz"] >= 30.0 and r30["tick_time_p99_us"] < 15000.0)}
    results["meta"]["loadavg_end"] = os.getloadavg()
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def print_table(res: dict) -> None:
    ip = res["in_process"]
    print(f"\nmodel: {res['model']['source']}")
    print("in process (us)      p50      p99")
    for key in ("jpeg_decode", "inference", "controller_step", "tick"):
        print(f"  {key:16s} {ip[key]['p50_us']:8.0f} {ip[key]['p99_us']:8.0f}")
    print("\nnode  rate  achieved  missed%  tick p50/p99 (us)  inference p50/p99 (us)  obs->cmd p50/p99 (us)  cpu%")
    for r in res["free_run"].values():
        print(f"  {r['rate_hz']:6.0f} {r['achieved_rate_hz']:8.1f} {r['missed_pct']:7.2f} "
              f"{r['tick_time_p50_us']:8.0f}/{r['tick_time_p99_us']:<8.0f} "
              f"{r['inference_time_p50_us']:10.0f}/{r['inference_time_p99_us']:<10.0f} "
              f"{r['obs_to_cmd_latency_p50_us']:10.0f}/{r['obs_to_cmd_latency_p99_us']:<10.0f} {r['node_cpu_pct']:5.0f}")
    print(f"\nhighest rate with < 0.5% missed ticks (every lower rate too): {res['max_sustained_rate_hz']:g} Hz "
          f"(highest passing: {res['max_passing_rate_hz']:g} Hz); goal met: {res['goal']['met']}")


if __name__ == "__main__":
    main()
