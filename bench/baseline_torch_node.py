#!/usr/bin/env python3
"""The baseline a user would otherwise write: the tutorial rclpy node around a torch policy.

    python bench/baseline_torch_node.py --contract contract.yaml --run-dir RUN [--stats-window N]

A plain `rclpy.node.Node`, spun by `rclpy.spin`: one subscription per observation topic of the
contract (default QoS depth 10; the callback keeps the newest message), a timer at the control
rate that, every tick, assembles the observation from the newest messages (the contract's
`ObservationAssembler`), runs the torch module of the training run in eager mode
(``torch.no_grad()``, ``model(torch.as_tensor(obs))``), blends the chunks ACT-style (temporal
ensembling, weights exp(-m * i), oldest first, one query per tick), clips to the joint limits
and publishes std_msgs/Float64MultiArray on the contract's command topic.

Only for the bench: the same timing statistics as the policy node (`core.control.stats.LoopStats`:
tick compute = timer callback start -> after publish, obs->command latency = newest observation
header stamp -> publish on the system clock, missed tick = period > 1.5x nominal), published as
bc_msgs/PolicyStatus on /policy/status so bench_policy_node.py reads both the same way.
Torch threads follow the environment (the bench sets OMP_NUM_THREADS=1, as onnxruntime gets 1).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"   # hard rule: DDS stays on this machine
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import torch  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from bc_msgs.msg import PolicyStatus  # noqa: E402
from bc_policy_node.core.contract import Contract, ObservationAssembler  # noqa: E402
from bc_policy_node.core.control.stats import LoopStats  # noqa: E402
from bc_policy_node.learning.checkpoint import load_policy  # noqa: E402
from bc_policy_node.nodes import qos  # noqa: E402
from bc_policy_node.nodes.common import message_class  # noqa: E402


class TorchPolicyNode(Node):
    def __init__(self, contract: Contract, model: torch.nn.Module, model_id: str, m: float = 0.01,
                 status_rate_hz: float = 1.0, stats_window: int = 10000):
        super().__init__("torch_baseline")
        self.contract, self.model, self.model_id, self.m = contract, model, model_id, m
        self.assembler = ObservationAssembler(contract)
        self.latest = {}
        for topic, type_name in contract.observation_topics().items():
            self.create_subscription(message_class(type_name), topic,
                                     lambda msg, topic=topic: self.latest.__setitem__(topic, msg), 10)
        self.pub = self.create_publisher(Float64MultiArray, contract.action.topic, 10)
        self.chunks = collections.deque(maxlen=contract.chunk_length)   # newest last
        self.lower, self.upper = np.array(contract.action.lower), np.array(contract.action.upper)
        self.stats = LoopStats(contract.dt, 1.5, stats_window)
        self.timer = self.create_timer(contract.dt, self.on_timer)
        self.status_pub = self.create_publisher(PolicyStatus, "/policy/status", qos.STATUS)
        self.create_timer(1.0 / status_rate_hz, self.publish_status)

    def on_timer(self):
        start = time.perf_counter()
        now = time.time()
        if len(self.latest) < len(self.contract.observation_topics()):
            return                                  # waiting for the first observations
        newest = -float("inf")
        for topic, msg in self.latest.items():
            st = getattr(msg, "header", None)
            stamp = st.stamp.sec + st.stamp.nanosec * 1e-9 if st is not None else now
            self.assembler.update(topic, msg, stamp)
            newest = max(newest, stamp)
        obs = self.assembler.vector()
        t0 = time.perf_counter()
        with torch.no_grad():
            chunk = self.model(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()
        inference = time.perf_counter() - t0
        self.chunks.append(chunk)
        n = len(self.chunks)
        actions = np.stack([c[n - 1 - i] for i, c in enumerate(self.chunks)])   # oldest chunk first
        w = np.exp(-self.m * np.arange(n))
        action = np.clip(w @ actions / w.sum(), self.lower, self.upper)
        self.pub.publish(Float64MultiArray(data=action.tolist()))
        self.stats.record(now, time.perf_counter() - start, time.time() - newest,
                          now - self.assembler.oldest_stamp(), inference)

    def publish_status(self):
        s = self.stats.summary(time.time())
        msg = PolicyStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.model_id, msg.lifecycle_state, msg.execution_mode = self.model_id, "active", "temporal_ensembling"
        msg.target_rate_hz, msg.achieved_rate_hz = float(self.contract.control_rate_hz), float(s["achieved_rate_hz"])
        msg.ticks, msg.missed_ticks = int(s["ticks"]), int(s["missed_ticks"])
        for key in ("tick_time_p50_us", "tick_time_p99_us", "inference_time_p50_us", "inference_time_p99_us",
                    "period_jitter_p99_us", "obs_to_cmd_latency_p50_us", "obs_to_cmd_latency_p99_us",
                    "observation_age_s"):
            setattr(msg, key, float(s[key]))
        msg.ensembled_chunks = len(self.chunks)
        self.status_pub.publish(msg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contract", required=True)
    ap.add_argument("--run-dir", required=True, help="training run directory (learning.train)")
    ap.add_argument("--m", type=float, default=0.01, help="temporal ensembling weight exp(-m * i)")
    ap.add_argument("--status-rate", type=float, default=1.0)
    ap.add_argument("--stats-window", type=int, default=10000)
    args = ap.parse_args()
    contract = Contract.load(args.contract)
    model, _ = load_policy(args.run_dir)
    with torch.no_grad():     # first calls allocate: keep them off the first ticks (as our node does)
        for _ in range(3):
            model(torch.zeros(1, contract.obs_dim))
    rclpy.init()
    node = TorchPolicyNode(contract, model, f"torch-eager:{Path(args.run_dir).name}", args.m,
                           args.status_rate, args.stats_window)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
