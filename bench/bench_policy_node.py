#!/usr/bin/env python3
"""The policy node's control loop over real DDS: sustained rate, tick cost, obs->command latency.

    source env.sh && python bench/bench_policy_node.py [--rates 100 250 500 1000] [--duration 10] [--nice -10]

Three processes: the policy node (installed `policy_node` executable, free-running timer at the
contract rate, temporal ensembling, MLP chunk policy K=20, A=7 built with onnx.helper), a
robot process (this file, ``--role robot``) publishing sensor_msgs/JointState at the rate and
closing the loop on the commands, and this process reading /policy/status.

Per rate: achieved rate, missed ticks (period > 1.5x nominal, counted by the node) over the
measured window, p50/p99 tick compute time, inference time and obs->command latency (robot's
header stamp -> node's publish, same system clock, across processes; includes the wait for
the next tick). Extra runs: lock-step round trip measured by the robot (publish observation
-> receive its command: both DDS hops + one tick), 1 kHz with a hot swap every second, and
1 kHz with a MultiThreadedExecutor (BCP_POLICY_EXECUTOR=multi) for the executor choice.
Prints a table and writes bench/results/policy_node.json. Timings are noisy (2 shared cores).

``--baseline``: the same sweep, in the same run and against the same robot process, for our node
and for the tutorial rclpy node a user would otherwise write (bench/baseline_torch_node.py:
Node + timer + subscription callbacks + torch eager forward), both running the same weights: a
small policy trained here with the package's own trainer (config/train/chunk_mlp.yaml, K=20, on
synthetic arm7 demonstrations), its torch module for the baseline and its ONNX export for our
node. Writes bench/results/policy_node_baseline.json with both sweeps and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Hard rule: DDS stays on this machine, whatever the caller's shell says.
ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(101, 199)))
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

K, A, HIDDEN = 20, 7, 256
JOINTS = [f"joint{i + 1}" for i in range(A)]
LOWER = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
UPPER = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
HOME = [0.0, 0.0, 0.0, -1.5, 0.0, 1.5, 0.0]


# ----------------------------------------------------------------------------- artifacts
def contract_dict(rate: float) -> dict:
    return {"contract_version": 1, "name": "bench_arm7", "robot": "arm7", "task": "bench",
            "control_rate_hz": float(rate), "chunk_length": K, "stale_after_s": 0.1,
            "observation": [
                {"name": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                 "field": "position", "joints": JOINTS},
                {"name": "joint_vel", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                 "field": "velocity", "joints": JOINTS}],
            "action": {"kind": "joint_position", "topic": "/forward_position_controller/commands",
                       "type": "std_msgs/msg/Float64MultiArray", "joints": JOINTS,
                       "lower": LOWER, "upper": UPPER, "max_step": 0.05}}


def mlp_model(path: Path, contract, seed: int) -> Path:
    """Chunk MLP obs (14) -> 256 -> 256 -> K*A, residual on the joint positions (stays near q)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bc_policy_node.core.control.runtime import embed_metadata

    rng = np.random.default_rng(seed)
    d = contract.obs_dim
    w1, w2 = rng.normal(0, 1 / np.sqrt(d), (d, HIDDEN)), rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, HIDDEN))
    w3 = rng.normal(0, 0.01 / np.sqrt(HIDDEN), (HIDDEN, K * A))
    skip = np.zeros((d, K * A))
    for k in range(K):
        skip[np.arange(A), k * A + np.arange(A)] = 1.0
    f32 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [f32(w1, "w1"), f32(np.zeros(HIDDEN), "b1"), f32(w2, "w2"), f32(np.zeros(HIDDEN), "b2"),
             f32(w3, "w3"), f32(np.zeros(K * A), "b3"), f32(skip, "skip"),
             numpy_helper.from_array(np.array([-1, K, A], np.int64), "shape")]
    nodes = [helper.make_node("Gemm", ["obs", "w1", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["delta"]),
             helper.make_node("MatMul", ["obs", "skip"], ["base"]),
             helper.make_node("Add", ["base", "delta"], ["flat"]),
             helper.make_node("Reshape", ["flat", "shape"], ["actions"])]
    graph = helper.make_graph(nodes, "bench_chunk_mlp",
                              [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", d])],
                              [helper.make_tensor_value_info("actions", TensorProto.FLOAT, ["B", K, A])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    embed_metadata(model, contract, {"kind": "chunk_mlp", "chunk_length": K})
    onnx.save(model, str(path))
    return path


def transformer_model(path: Path, contract, seed: int) -> Path:
    """The optional ACT-like transformer chunk policy (config/train/transformer.yaml: 2 layers,
    d_model 128, 4 heads, K=20), exported by the package's own torch -> ONNX path. Weights are
    untrained (inference cost does not depend on them); the action normalization is centred on
    HOME so the commands stay inside the joint limits."""
    import onnx
    import torch
    import yaml

    from bc_policy_node.core.data.episodes import NormStats
    from bc_policy_node.core.control.runtime import embed_metadata
    from bc_policy_node.learning.config import ModelConfig
    from bc_policy_node.learning.export import DEFAULT_OPSET, to_onnx_bytes
    from bc_policy_node.learning.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(yaml.safe_load((ROOT / "config" / "train" / "transformer.yaml").read_text())["model"])
    assert cfg.chunk_length == K, "the bench contract's K must match config/train/transformer.yaml"
    d = contract.obs_dim
    stats = NormStats(np.zeros(d), np.ones(d), np.array(HOME), np.full(A, 0.01))
    model = build_model(cfg, d, A, stats).eval()
    proto = onnx.load_from_string(to_onnx_bytes(model, DEFAULT_OPSET))
    embed_metadata(proto, contract, {"kind": "transformer", "chunk_length": K})
    onnx.save(proto, str(path))
    return path


MODELS = {"mlp": mlp_model, "transformer": transformer_model}   # --model -> builder(path, contract, seed)

TRAIN_EPOCHS = 3    # the weights only need to keep the arm inside its limits; timing does not depend on them


def arm7_demos(contract, episodes: int = 20, length: int = 200, seed: int = 0):
    """Synthetic arm7 demonstrations: a saturating P expert from a random start to a random goal
    near HOME; obs = [q, qdot] as the contract reads /joint_states, act[t] = q[t+1]."""
    from bc_policy_node.core.data.episodes import Dataset, Episode

    rng = np.random.default_rng(seed)
    lo, hi, home, dt = np.array(LOWER), np.array(UPPER), np.array(HOME), contract.dt
    eps = []
    for i in range(episodes):
        q = np.clip(home + rng.uniform(-0.5, 0.5, A), lo, hi)
        goal = np.clip(home + rng.uniform(-0.5, 0.5, A), lo, hi)
        qs = [q]
        for _ in range(length):
            qs.append(qs[-1] + 0.002 * np.tanh(0.05 * (goal - qs[-1]) / 0.002))
        qs = np.array(qs)
        vel = np.vstack([np.zeros((1, A)), np.diff(qs[:-1], axis=0) / dt])
        eps.append(Episode(obs=np.hstack([qs[:-1], vel]), act=qs[1:], t=np.arange(length) * dt,
                           meta={"source": "synthetic_arm7", "episode_id": i, "success": True}))
    return Dataset(contract, eps)


def trained_policy(work: Path):
    """(run_dir, onnx): the package's default policy (chunk_mlp.yaml, K=20) trained by
    learning.train on arm7_demos and exported by learning.export (with its parity check)."""
    from bc_policy_node.core.contract import Contract
    from bc_policy_node.pipeline.dagger.training import export_policy, retrain

    contract = Contract.from_dict(contract_dict(1000.0))
    run = retrain(arm7_demos(contract), {"chunk_length": K}, {"max_epochs": TRAIN_EPOCHS, "threads": 1},
                  work / "trained_run")
    return Path(run.run_dir), export_policy(run.run_dir, work / "trained.onnx")


def at_rate(onnx_path: Path):
    """Builder(path, contract, seed) for run_case: the same trained graph, its embedded contract
    re-written for the case's control rate (the node refuses a model trained for another rate)."""
    import onnx

    from bc_policy_node.core.control.runtime import embed_metadata
    from bc_policy_node.learning.export import read_metadata

    _, meta = read_metadata(onnx_path)
    for key in ("control_rate_hz", "model_id", "created"):
        meta.pop(key, None)

    def build(path: Path, contract, seed: int) -> Path:
        proto = onnx.load(str(onnx_path))
        embed_metadata(proto, contract, meta)
        onnx.save(proto, str(path))
        return path
    return build


def torch_eager_us(run_dir: Path, d: int, iters: int = 5000) -> dict:
    """The baseline's forward alone: torch.no_grad() + model(torch.as_tensor(obs)), 1 thread."""
    import torch

    from bc_policy_node.learning.checkpoint import load_policy

    model, _ = load_policy(run_dir)
    x = np.zeros(d)
    t = np.empty(iters)
    with torch.no_grad():
        for _ in range(200):
            model(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0))
        for i in range(iters):
            t0 = time.perf_counter()
            model(torch.as_tensor(x, dtype=torch.float32).unsqueeze(0))[0].numpy()
            t[i] = time.perf_counter() - t0
    return {"p50_us": float(np.median(t) * 1e6), "p99_us": float(np.percentile(t, 99) * 1e6),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def raw_onnxruntime_us(path: Path, d: int, iters: int = 5000) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.zeros((1, d), np.float32)
    for _ in range(200):
        sess.run(["actions"], {"obs": x})
    t = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        sess.run(["actions"], {"obs": x})
        t[i] = time.perf_counter() - t0
    return {"p50_us": float(np.median(t) * 1e6), "p99_us": float(np.percentile(t, 99) * 1e6)}


def in_process_step_us(path: Path, contract, iters: int = 5000) -> dict:
    """PolicyController.step + observation update without DDS: the Python compute part of a tick."""
    from sensor_msgs.msg import JointState

    from bc_policy_node.core.contract import ObservationAssembler
    from bc_policy_node.core.control.runtime import OnnxPolicy
    from bc_policy_node.core.control.controller import PolicyController

    loop = PolicyController(contract, OnnxPolicy(path))
    asm = ObservationAssembler(contract)
    js = JointState(name=JOINTS, position=list(HOME), velocity=[0.0] * A)
    t = np.empty(iters)
    now = time.time()
    for i in range(iters):
        t0 = time.perf_counter()
        asm.update("/joint_states", js, now + i * 1e-3)
        loop.step(asm.vector(), asm.oldest_stamp(), now + i * 1e-3)
        t[i] = time.perf_counter() - t0
    return {"p50_us": float(np.median(t[200:]) * 1e6), "p99_us": float(np.percentile(t[200:], 99) * 1e6)}


# ----------------------------------------------------------------------------- robot role
def robot_main(args) -> None:
    """Publish JointState at `rate` (free) or one per command (lockstep); print a JSON summary."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from bc_policy_node.nodes import qos
    from bc_policy_node.nodes.conversions import to_time

    rclpy.init()
    node = rclpy.create_node("bench_robot")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    pub = node.create_publisher(JointState, "/joint_states", qos.STATE)
    q = np.array(HOME)
    got = {"n": 0, "t": None}

    def on_cmd(msg):
        q[:] = msg.data
        got["n"] += 1
        got["t"] = time.perf_counter()
    node.create_subscription(Float64MultiArray, "/forward_position_controller/commands", on_cmd, qos.COMMAND)
    js = JointState(name=JOINTS)
    js.velocity = [0.0] * A

    def publish():
        js.header.stamp = to_time(time.time())
        js.position = q.tolist()
        pub.publish(js)

    deadline = time.monotonic() + 30
    while (pub.get_subscription_count() == 0 or node.count_publishers("/forward_position_controller/commands") == 0) \
            and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.05)
    out = {"role": "robot", "mode": args.mode}
    if args.mode == "free":
        sent = [0]

        def on_timer():
            publish()
            sent[0] += 1
        node.create_timer(1.0 / args.rate, on_timer)
        t0 = time.monotonic()
        try:  # streams until the bench sends SIGINT (or the safety duration ends)
            while time.monotonic() < t0 + args.duration:
                ex.spin_once(timeout_sec=0.01)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        out.update(sent=sent[0], commands=got["n"], seconds=time.monotonic() - t0)
    else:
        rtt = []
        n = 0
        while n < args.steps:
            before = got["n"]
            t0 = time.perf_counter()
            publish()
            limit = time.monotonic() + 5.0
            while got["n"] == before and time.monotonic() < limit:
                ex.spin_once(timeout_sec=0.005)
            if got["n"] == before:
                out["timeout_at_step"] = n
                break
            rtt.append(got["t"] - t0)
            n += 1
        r = np.array(rtt[50:]) * 1e6  # skip the warm-up
        out.update(steps=n, rtt_p50_us=float(np.median(r)), rtt_p99_us=float(np.percentile(r, 99)),
                   rtt_mean_us=float(r.mean()))
    print(json.dumps(out), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


# ----------------------------------------------------------------------------- orchestration
def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class StatusWatch:
    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from bc_msgs.msg import PolicyStatus
        from bc_policy_node.nodes import qos

        self.node = rclpy.create_node("bench_watch")
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self.last = None
        self.sub = self.node.create_subscription(PolicyStatus, "/policy/status", self._on, qos.STATUS)

    def _on(self, msg):
        self.last = (time.monotonic(), msg)

    def spin(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.05)

    def wait(self, pred, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.05)
            if self.last is not None and pred(self.last[1]):
                return self.last
        raise RuntimeError(f"status condition not reached; last status {self.last}")

    def fresh(self, timeout=10.0):
        """The next status published after now."""
        t = time.monotonic()
        return self.wait(lambda s: self.last[0] > t, timeout)

    def load(self, path: str):
        from bc_msgs.srv import LoadPolicy

        cli = self.node.create_client(LoadPolicy, "/policy/load_policy")
        if not cli.wait_for_service(timeout_sec=10):
            raise RuntimeError("load_policy service not available")
        fut = cli.call_async(LoadPolicy.Request(model_path=path))
        self.last_call = time.monotonic()
        return fut

    def close(self):
        self.node.destroy_node()


class BaselineProcess:
    """bench/baseline_torch_node.py in its own process (own session, log file), stopped like a
    NodeProcess: SIGINT, then SIGTERM, then SIGKILL."""

    def __init__(self, contract_path: Path, run_dir: Path, stats_window: int, log_dir: Path, env: dict):
        from bc_policy_node.procs import default_stop_signals

        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / "torch_baseline.log", "wb")
        cmd = [sys.executable, str(ROOT / "bench" / "baseline_torch_node.py"), "--contract", str(contract_path),
               "--run-dir", str(run_dir), "--stats-window", str(stats_window)]
        env = dict(env, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=default_stop_signals)
        self.pid = self.proc.pid

    def stop(self) -> None:
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()


def run_case(watch, work: Path, build, rate: float, duration: float, warmup: float, lockstep=False,
             steps=0, swap_models=(), env_extra=None, label="", baseline_run: Path = None) -> dict:
    """One case against the robot process; our policy node, or with `baseline_run` (a training
    run directory) the torch baseline node on that run's weights."""
    from bc_policy_node.core.contract import Contract
    from bc_policy_node.graph import policy_nodes
    from bc_policy_node.procs import NodeProcess

    cdict = contract_dict(rate)
    cpath = work / f"contract_{int(rate)}.yaml"
    cpath.write_text(json.dumps(cdict))  # JSON is YAML
    contract = Contract.from_dict(cdict)
    model = build(work / f"model_{int(rate)}_a.onnx", contract, seed=0)
    swaps = [str(build(work / f"model_{int(rate)}_{s}.onnx", contract, seed=i + 1))
             for i, s in enumerate(swap_models)]
    spec = policy_nodes(model=str(model), autostart=True)[0]
    extra = {"contract": str(cpath), "status_rate_hz": 1.0, "lockstep": bool(lockstep),
             "stats_window": int(max(1000, min(60000, rate * duration)))}
    env = dict(os.environ, **(env_extra or {}))
    if baseline_run is not None:
        node = BaselineProcess(cpath, baseline_run, extra["stats_window"], work / f"logs_{label}", env)
    else:
        node = NodeProcess(spec, work / f"logs_{label}", extra_params=extra, env=env)
    robot = None
    try:
        watch.last = None
        watch.wait(lambda s: s.lifecycle_state == "active" and s.model_id != "", timeout=120.0)
        mode = "lockstep" if lockstep else "free"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "robot", "--mode", mode,
               "--rate", str(rate), "--duration", str(duration + warmup + 120.0), "--steps", str(steps)]
        robot = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if lockstep:
            out, err = robot.communicate(timeout=600)
            t1, s1 = watch.fresh()
            res = {"robot": json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}}
            res.update(node_latency_p50_us=s1.obs_to_cmd_latency_p50_us,
                       node_latency_p99_us=s1.obs_to_cmd_latency_p99_us,
                       tick_time_p50_us=s1.tick_time_p50_us, tick_time_p99_us=s1.tick_time_p99_us,
                       inference_time_p50_us=s1.inference_time_p50_us, ticks=int(s1.ticks))
            return res
        watch.wait(lambda s: s.ticks > rate * 0.5)          # the robot is streaming
        watch.spin(warmup)
        t0, s0 = watch.fresh()
        cpu0 = cpu_seconds(node.pid), cpu_seconds(robot.pid), time.monotonic()
        pending, done_swaps, i = None, [], 0
        end = time.monotonic() + duration
        next_swap = time.monotonic() + 1.0
        while time.monotonic() < end:
            watch.spin(0.05)
            if swaps and pending is None and time.monotonic() >= next_swap:
                pending = watch.load(swaps[i % len(swaps)])
                i += 1
            if pending is not None and pending.done():
                r = pending.result()
                done_swaps.append({"success": r.success, "seconds": time.monotonic() - watch.last_call})
                pending, next_swap = None, time.monotonic() + 1.0
        t1, s1 = watch.fresh()
        cpu1 = cpu_seconds(node.pid), cpu_seconds(robot.pid), time.monotonic()
        robot.send_signal(signal.SIGINT)
        out, err = robot.communicate(timeout=60)
        robot_out = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-2000:]}
        ticks = int(s1.ticks - s0.ticks)
        missed = int(s1.missed_ticks - s0.missed_ticks)
        secs = (s1.header.stamp.sec + s1.header.stamp.nanosec * 1e-9) - (s0.header.stamp.sec + s0.header.stamp.nanosec * 1e-9)
        res = {"rate_hz": rate, "window_s": secs, "ticks": ticks, "achieved_rate_hz": ticks / secs if secs > 0 else 0.0,
               "missed_ticks": missed, "missed_pct": 100.0 * missed / max(ticks, 1),
               "tick_time_p50_us": s1.tick_time_p50_us, "tick_time_p99_us": s1.tick_time_p99_us,
               "inference_time_p50_us": s1.inference_time_p50_us, "inference_time_p99_us": s1.inference_time_p99_us,
               "period_jitter_p99_us": s1.period_jitter_p99_us,
               "obs_to_cmd_latency_p50_us": s1.obs_to_cmd_latency_p50_us,
               "obs_to_cmd_latency_p99_us": s1.obs_to_cmd_latency_p99_us,
               "observation_age_s": s1.observation_age_s, "safety_stale": int(s1.safety_stale - s0.safety_stale),
               "model_swaps": int(s1.model_swaps), "robot": robot_out,
               "node_cpu_pct": 100.0 * (cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]),
               "node_cpu_us_per_tick": 1e6 * (cpu1[0] - cpu0[0]) / max(ticks, 1),
               "robot_cpu_pct": 100.0 * (cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2])}
        if swaps:
            res["swaps"] = done_swaps
        return res
    finally:
        if robot is not None and robot.poll() is None:
            robot.kill()
            robot.wait()
        node.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", default="bench", choices=["bench", "robot"])
    ap.add_argument("--mode", default="free", choices=["free", "lockstep"])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rates", type=float, nargs="+", default=None,
                    help="default 100 250 500 1000 (--baseline: 100 200 300 500 750 1000)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=3000, help="lock-step round trips")
    ap.add_argument("--model", default="mlp", choices=sorted(MODELS),
                    help="mlp: chunk MLP 14->256->256->K*A (default); transformer: the optional ACT-like "
                         "policy of config/train/transformer.yaml")
    ap.add_argument("--skip-extras", action="store_true", help="only the rate sweep")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for this process and its children, e.g. -10 to stand in for the "
                         "priority a control process gets on a robot (recorded in the results)")
    ap.add_argument("--repeats", type=int, default=1, help="--baseline: sweeps (interleaved); rows keep the "
                                                            "repeat with the fewest missed ticks")
    ap.add_argument("--baseline", action="store_true",
                    help="our node vs the tutorial rclpy + torch eager node (bench/baseline_torch_node.py) "
                         "on the same trained weights, same sweep, same robot; -> policy_node_baseline.json")
    ap.add_argument("--out", default=None, help="default bench/results/policy_node.json "
                                                "(--baseline: policy_node_baseline.json)")
    args = ap.parse_args()
    if args.role == "robot":
        robot_main(args)
        return
    if args.nice:
        os.nice(args.nice)
    if args.rates is None:
        args.rates = [100.0, 200.0, 300.0, 500.0, 750.0, 1000.0] if args.baseline else [100.0, 250.0, 500.0, 1000.0]
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" / ("policy_node_baseline.json" if args.baseline else "policy_node.json"))
    if args.baseline:
        baseline_main(args)
        return
    build = MODELS[args.model]

    import rclpy

    rclpy.init()
    watch = StatusWatch()
    results = {"meta": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                        "model": args.model, "K": K, "A": A, "obs_dim": 2 * A,
                        "hidden": HIDDEN if args.model == "mlp" else None, "execution_mode": "temporal_ensembling",
                        "m": 0.01, "query_every": 1, "duration_s": args.duration,
                        "missed_tick": "period > 1.5 x nominal", "niceness": os.nice(0),
                        "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bcp-bench-node-") as tmp:
        work = Path(tmp)
        from bc_policy_node.core.contract import Contract

        c = Contract.from_dict(contract_dict(1000.0))
        raw_model = build(work / "raw.onnx", c, 0)
        results["raw_onnxruntime"] = raw_onnxruntime_us(raw_model, c.obs_dim)
        results["in_process_step"] = in_process_step_us(raw_model, c)
        sweep = {}
        for rate in args.rates:
            print(f"[bench] free-run {rate:g} Hz ...", flush=True)
            sweep[f"{rate:g}"] = run_case(watch, work, build, rate, args.duration, args.warmup,
                                          label=f"free{rate:g}")
        results["free_run"] = sweep
        if not args.skip_extras:
            print("[bench] lock-step round trips ...", flush=True)
            results["lockstep"] = run_case(watch, work, build, 1000.0, 0, 0, lockstep=True,
                                           steps=args.steps, label="lockstep")
            print("[bench] 1 kHz with a hot swap every second ...", flush=True)
            results["free_run_1000_hot_swaps"] = run_case(watch, work, build, 1000.0, args.duration,
                                                          args.warmup, swap_models=("b", "c"), label="swaps")
            print("[bench] 1 kHz with MultiThreadedExecutor ...", flush=True)
            results["free_run_1000_multithreaded"] = run_case(
                watch, work, build, 1000.0, args.duration, args.warmup,
                env_extra={"BCP_POLICY_EXECUTOR": "multi"}, label="multi")
    watch.close()
    rclpy.try_shutdown()
    results["meta"]["loadavg_end"] = os.getloadavg()

    ok = [r for r in results["free_run"].values() if r["missed_pct"] < 0.5 and r["achieved_rate_hz"] > 0.98 * r["rate_hz"]]
    results["max_sustained_rate_hz"] = max((r["rate_hz"] for r in ok), default=0.0)
    raw = results["raw_onnxruntime"]["p50_us"]
    for r in results["free_run"].values():
        r["tick_over_raw_inference"] = r["tick_time_p50_us"] / raw
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def max_rate(sweep: dict, monotone: bool = False) -> float:
    """Highest rate with < 0.5% missed ticks and > 98% of the rate achieved (monotone: and
    every lower rate of the sweep passing too)."""
    best = 0.0
    for r in sorted(sweep.values(), key=lambda r: r["rate_hz"]):
        if r["missed_pct"] < 0.5 and r["achieved_rate_hz"] > 0.98 * r["rate_hz"]:
            best = r["rate_hz"]
        elif monotone:
            break
    return best


def baseline_main(args) -> None:
    """--baseline: per rate, our node then the torch baseline, each against a fresh robot process."""
    import rclpy

    from bc_policy_node.core.contract import Contract

    rclpy.init()
    watch = StatusWatch()
    res = {"meta": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                    "model": "chunk_mlp (config/train/chunk_mlp.yaml, K=20), trained "
                             f"{TRAIN_EPOCHS} epochs on synthetic arm7 demos by learning.train",
                    "K": K, "A": A, "obs_dim": 2 * A, "execution_mode": "temporal_ensembling", "m": 0.01,
                    "query_every": 1, "duration_s": args.duration, "rates_hz": args.rates,
                    "missed_tick": "period > 1.5 x nominal", "max_rate_rule": "< 0.5% missed and achieved > 98%",
                    "niceness": os.nice(0), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "baseline": "bench/baseline_torch_node.py: rclpy Node + create_timer + subscription "
                                "callbacks (depth 10) + torch eager no_grad forward + ACT temporal ensembling "
                                "+ clip; rclpy.spin (SingleThreadedExecutor)",
                    "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bcp-bench-baseline-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        run_dir, onnx_path = trained_policy(work)
        res["meta"]["train_export_s"] = time.perf_counter() - t0
        build = at_rate(onnx_path)
        c = Contract.from_dict(contract_dict(1000.0))
        res["raw_onnxruntime"] = raw_onnxruntime_us(build(work / "raw.onnx", c, 0), c.obs_dim)
        res["raw_torch_eager"] = torch_eager_us(run_dir, c.obs_dim)
        res["in_process_step"] = in_process_step_us(work / "raw.onnx", c)
        runs = {"policy_node": {f"{r:g}": [] for r in args.rates}, "torch_baseline": {f"{r:g}": [] for r in args.rates}}
        for rep in range(args.repeats):   # interleaved: both see the same (shared-machine) load
            for rate in args.rates:
                key = f"{rate:g}"
                print(f"[bench] repeat {rep + 1}/{args.repeats}, {rate:g} Hz: policy node ...", flush=True)
                r = run_case(watch, work, build, rate, args.duration, args.warmup, label=f"ours{key}_{rep}")
                runs["policy_node"][key].append(dict(r, loadavg=os.getloadavg()))
                print(f"[bench] repeat {rep + 1}/{args.repeats}, {rate:g} Hz: torch baseline ...", flush=True)
                r = run_case(watch, work, build, rate, args.duration, args.warmup, label=f"base{key}_{rep}",
                             baseline_run=run_dir)
                runs["torch_baseline"][key].append(dict(r, loadavg=os.getloadavg()))
    watch.close()
    rclpy.try_shutdown()
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["meta"]["repeats"] = args.repeats
    res["meta"]["row"] = "per rate and node, the repeat with the fewest missed ticks (every repeat under *_runs)"
    best = {n: {k: min(v, key=lambda r: r["missed_pct"]) for k, v in by_rate.items()} for n, by_rate in runs.items()}
    ours, base = res["policy_node"], res["torch_baseline"] = best["policy_node"], best["torch_baseline"]
    res["policy_node_runs"], res["torch_baseline_runs"] = runs["policy_node"], runs["torch_baseline"]
    mo, mb = max_rate(ours), max_rate(base)
    res["max_sustained_rate_hz"] = {"policy_node": mo, "torch_baseline": mb,
                                    "policy_node_all_lower_pass": max_rate(ours, monotone=True),
                                    "torch_baseline_all_lower_pass": max_rate(base, monotone=True)}
    ratios = {"max_rate_ours_over_baseline": mo / mb if mb else float("inf")}
    for key in ("tick_time_p99_us", "obs_to_cmd_latency_p99_us", "node_cpu_us_per_tick"):
        ratios[f"{key}_baseline_over_ours"] = {k: base[k][key] / ours[k][key] if ours[k][key] else float("nan")
                                               for k in ours}
    res["ratios"] = ratios
    print_baseline_table(res)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def print_baseline_table(res: dict) -> None:
    m = res["meta"]
    print(f"\nsame trained chunk MLP (K={K}, A={A}); forward alone: onnxruntime p50 {res['raw_onnxruntime']['p50_us']:.1f} us, "
          f"torch eager p50 {res['raw_torch_eager']['p50_us']:.1f} us ({res['raw_torch_eager']['threads']} thread)")
    print(f"load average: {m['loadavg_start']} -> {m['loadavg_end']} (2 cores shared with other work)")
    hdr = ("rate Hz", "node", "achieved", "missed %", "tick p50/p99 us", "obs->cmd p50/p99 us", "CPU us/tick")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for key in res["policy_node"]:
        for name, r in (("ours", res["policy_node"][key]), ("torch", res["torch_baseline"][key])):
            print(f"| {key} | {name} | {r['achieved_rate_hz']:.1f} | {r['missed_pct']:.3f} | {r['tick_time_p50_us']:.0f}/"
                  f"{r['tick_time_p99_us']:.0f} | {r['obs_to_cmd_latency_p50_us']:.0f}/"
                  f"{r['obs_to_cmd_latency_p99_us']:.0f} | {r['node_cpu_us_per_tick']:.0f} |")
    mx, ra = res["max_sustained_rate_hz"], res["ratios"]
    print(f"highest rate with < 0.5% missed: ours {mx['policy_node']:g} Hz, torch baseline {mx['torch_baseline']:g} Hz "
          f"-> ours/baseline {ra['max_rate_ours_over_baseline']:.2f}x (issue goal >= 3x; capped by the sweep's top rate); "
          f"with every lower rate passing too: ours {mx['policy_node_all_lower_pass']:g} Hz, "
          f"baseline {mx['torch_baseline_all_lower_pass']:g} Hz")
    print("baseline/ours tick p99: " + ", ".join(f"{k} Hz {v:.2f}x" for k, v in ra["tick_time_p99_us_baseline_over_ours"].items()))
    print("baseline/ours obs->cmd p99: " + ", ".join(f"{k} Hz {v:.2f}x" for k, v in ra["obs_to_cmd_latency_p99_us_baseline_over_ours"].items()))


def print_table(res: dict) -> None:
    raw = res["raw_onnxruntime"]
    ips = res["in_process_step"]
    name = f"MLP 14->256->256->{K}x{A}" if res["meta"]["model"] == "mlp" else f"transformer K={K}, A={A}"
    print(f"\nraw onnxruntime ({name}, 1 thread): p50 {raw['p50_us']:.1f} us, p99 {raw['p99_us']:.1f} us; "
          f"observation update + PolicyController.step in-process (no DDS): p50 {ips['p50_us']:.1f} us, p99 {ips['p99_us']:.1f} us")
    print(f"load average during the run: {res['meta']['loadavg_start']} -> {res['meta'].get('loadavg_end')} "
          f"(2 cores shared with other work)")
    hdr = ("rate Hz", "achieved", "missed %", "tick p50/p99 us", "infer p50 us", "obs->cmd p50/p99 us", "tick/raw",
           "node CPU us/tick")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    rows = dict(res["free_run"])
    for key in ("free_run_1000_hot_swaps", "free_run_1000_multithreaded"):
        if key in res:
            rows[key.replace("free_run_", "")] = res[key]
    for name, r in rows.items():
        ratio = r["tick_time_p50_us"] / raw["p50_us"]
        print(f"| {name} | {r['achieved_rate_hz']:.1f} | {r['missed_pct']:.3f} | {r['tick_time_p50_us']:.0f}/"
              f"{r['tick_time_p99_us']:.0f} | {r['inference_time_p50_us']:.0f} | {r['obs_to_cmd_latency_p50_us']:.0f}/"
              f"{r['obs_to_cmd_latency_p99_us']:.0f} | {ratio:.1f} | {r['node_cpu_us_per_tick']:.0f} |")
    if "lockstep" in res:
        ls = res["lockstep"]
        rb = ls["robot"]
        print(f"\nlock-step round trip (robot: publish obs -> receive command), {rb.get('steps')} steps: "
              f"p50 {rb.get('rtt_p50_us', float('nan')):.0f} us, p99 {rb.get('rtt_p99_us', float('nan')):.0f} us; "
              f"node stamp->publish p50 {ls['node_latency_p50_us']:.0f} us, p99 {ls['node_latency_p99_us']:.0f} us")
    print(f"highest rate with < 0.5% missed ticks: {res['max_sustained_rate_hz']:g} Hz")


if __name__ == "__main__":
    main()
