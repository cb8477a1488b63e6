#!/usr/bin/env python3
"""The MuJoCo bridge over real DDS: physics rate, free-run real-time factor, lock-step ticks/s.

    source env.sh && python bench/bench_bridge.py [--duration 10] [--robots planar3 arm7]

- raw `mj_step` rate of each model in-process (robot holding still), vs the bridge's physics
  rate: free mode flat out (real_time_factor 1000, /joint_states every physics step) and
  lock-step (ticks/s x physics steps per tick);
- free run at x1 and x4 real time with /joint_states at 500 Hz (sim time): achieved
  real-time factor and p99 |publish-period error|, as measured by the bridge (wall time
  between its publish calls) and by a subscriber in another process (receive times: adds the
  DDS hop and this process's scheduling);
- lock-step control ticks/s with the controller in another process: a minimal controller
  (this file, ``--hold-controller``: one hold command per observation pair) and the expert
  node driving real episodes; per-episode rate from the receive times of /task_state, plus
  the in-process ceiling (SimEnv.step + expert, no ROS).
Prints a table and writes bench/results/bridge.json. Every figure is on a shared 2-core
machine: the load average is recorded with each measurement.
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
import threading
import time
from pathlib import Path

# Hard rule: DDS stays on this machine, whatever the caller's shell says. A private domain.
ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(200, 230)))
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CMD = "/forward_position_controller/commands"
TASK_CASES = [("curved_reach", ""), ("bimodal", ""), ("long_horizon", "short")]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_s(pid: int) -> float:
    """CPU time (user + system, s) a process has used so far: load-independent cost figures."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- in-process
def bench_mj_step(robot: str, steps: int = 20000) -> dict:
    """Raw mj_step rate of the robot's model (bench_sim's measurement, this report's keys)."""
    from bench_sim import bench_mj_step as measure   # bench/ is on sys.path when run as a script

    r = measure(robot, steps)
    return {"robot": robot, "mj_step_per_s": r["steps_per_s"], "timestep_s": r["timestep_s"]}


def bench_inprocess_ticks(robot: str, seconds: float = 3.0) -> dict:
    from bc_policy_node.core.sim.env import SimEnv
    env = SimEnv(robot, "curved_reach")
    expert = env.make_expert()
    ticks, seed, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        msgs = env.reset(seed)
        while not env.done:
            msgs = env.step(expert.act_messages(msgs))
            ticks += 1
        seed += 1
    return {"robot": robot, "ticks_per_s": ticks / (time.perf_counter() - t0)}


def bench_sleep_jitter(seconds: float = 3.0, period: float = 0.002) -> dict:
    """Baseline: a bare periodic sleep loop (absolute deadlines), no ROS, no physics."""
    n = int(seconds / period)
    t0 = time.perf_counter()
    stamps = []
    for i in range(1, n + 1):
        wait = t0 + i * period - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        stamps.append(time.perf_counter())
    err = np.abs(np.diff(stamps) - period) * 1e6
    return {"period_s": period, "err_p50_us": float(np.percentile(err, 50)),
            "err_p99_us": float(np.percentile(err, 99)), "stalls": int(np.sum(err > 0.5 * period * 1e6)),
            "load_avg": load()}


# ----------------------------------------------------------------------------- the probe
class Probe:
    """This process's node: /task_state, /joint_states and /diagnostics with receive times."""

    def __init__(self, joint_states: bool = False):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import JointState

        from bc_msgs.msg import TaskState
        from bc_policy_node.nodes import qos
        from bc_policy_node.nodes.fastlane import FastLane
        self.rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("bridge_bench_probe", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.ts, self.js, self.diag = [], [], []
        self.lane = FastLane(self.node, "probe")
        self.lane.create_subscription(TaskState, "/task_state",
                                      lambda m: self.ts.append((time.perf_counter(), m)), qos.STATE)
        if joint_states:
            self.lane.create_subscription(JointState, "/joint_states",
                                          lambda m: self.js.append((time.perf_counter(), m)), qos.STATE)
        self.lane.start()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self._clients = {}

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith("mujoco_bridge"):
                self.diag.append((time.perf_counter(), {kv.key: kv.value for kv in st.values}))

    def close(self):
        self.lane.stop()
        self.ex.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)

    def spin_until(self, cond, timeout, what, graph=None):
        end = time.monotonic() + timeout
        while not cond():
            if graph is not None:
                graph.check_alive()
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {what}")
            self.ex.spin_once(timeout_sec=0.01)

    def spin_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)

    def last_diag(self) -> dict:
        return self.diag[-1][1] if self.diag else {}

    def reset(self, seed, task="", variant="", graph=None):
        from bc_msgs.srv import ResetEpisode
        cli = self._clients.get("reset") or self._clients.setdefault(
            "reset", self.node.create_client(ResetEpisode, "/mujoco_bridge/reset"))
        self.spin_until(cli.service_is_ready, 30, "/mujoco_bridge/reset", graph)
        fut = cli.call_async(ResetEpisode.Request(seed=seed, task=task, variant=variant))
        self.spin_until(fut.done, 30, "reset answer", graph)
        r = fut.result()
        if not r.success:
            raise RuntimeError(r.message)
        return r

    def wait_matched(self, graph, js_subscribers, ts_subscribers, command_publishers):
        def ok():
            d = self.last_diag()
            return (int(d.get("joint_state_subscribers", -1)) >= js_subscribers
                    and int(d.get("task_state_subscribers", -1)) >= ts_subscribers
                    and int(d.get("command_publishers", -1)) >= command_publishers)
        self.spin_until(ok, 60, "the graph to match", graph)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def graph(specs, extra, tag):
    from bc_policy_node.procs import Graph
    return Graph(specs, Path(tempfile.mkdtemp(prefix=f"bcp-bench-bridge-{tag}-")), extra)


# ----------------------------------------------------------------------------- free run
def bench_free(robot: str, rtf: float, duration: float) -> dict:
    from bc_policy_node.graph import sim_nodes
    specs = sim_nodes(robot=robot, mode="free", real_time_factor=rtf)[:1]
    extra = {"mujoco_bridge": {"diagnostics_rate_hz": 2.0, "auto_reset": True}}
    with graph(specs, extra, "free") as g:
        p = Probe(joint_states=True)
        try:
            p.wait_matched(g, 1, 1, 0)
            p.spin_for(2.0)                                # warm-up
            l0, n0 = load(), len(p.js)
            d0 = len(p.diag)
            c0, w0 = cpu_s(g["mujoco_bridge"].pid), time.monotonic()
            p.spin_for(duration)
            cpu = (cpu_s(g["mujoco_bridge"].pid) - c0) / (time.monotonic() - w0)
            l1 = load()
            window = p.js[n0:]
            diag = p.last_diag() if len(p.diag) > d0 else {}
        finally:
            p.close()
        g.check_alive()
    recv = np.array([t for t, _ in window])
    stamps = np.array([stamp_ns(m) for _, m in window]) * 1e-9
    nominal = 0.002 / rtf
    err = np.abs(np.diff(recv) - nominal)
    ext_rtf = (stamps[-1] - stamps[0]) / (recv[-1] - recv[0])
    lost = int(round((stamps[-1] - stamps[0]) / 0.002)) + 1 - len(np.unique(stamps))
    return {"robot": robot, "target_rtf": rtf, "duration_s": duration,
            "bridge_rtf": float(diag.get("achieved_rtf", "nan")),
            "bridge_period_err_p99_us": float(diag.get("joint_state_period_err_p99_us", "nan")),
            "bridge_stalls": int(diag.get("joint_state_stalls", -1)),
            "subscriber_rtf": float(ext_rtf),
            "subscriber_period_err_p50_us": float(np.percentile(err, 50) * 1e6),
            "subscriber_period_err_p99_us": float(np.percentile(err, 99) * 1e6),
            "joint_states_received": len(window), "joint_states_lost": lost,
            "physics_steps_per_s": float(ext_rtf / 0.002), "bridge_cpu_share": cpu,
            "load_avg": [l0, l1]}


# ----------------------------------------------------------------------------- lock-step
def hold_controller() -> None:
    """Minimal lock-step controller: one hold command per (/joint_states, /task_state) stamp."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from bc_msgs.msg import TaskState
    from bc_policy_node.nodes import qos
    from bc_policy_node.nodes.fastlane import FastLane
    rclpy.init()
    node = rclpy.create_node("hold_controller")
    pub = node.create_publisher(Float64MultiArray, CMD, qos.COMMAND)
    lock = threading.Lock()
    pending = {"js": {}, "ts": {}}
    last = [-1]

    def arrival(kind, msg):
        key = stamp_ns(msg)
        with lock:
            if key <= last[0]:
                return
            pending[kind][key] = msg
            other = pending["ts" if kind == "js" else "js"]
            if key not in other:
                return
            js, ts = pending["js"].pop(key), pending["ts"].pop(key)
            for p in pending.values():
                for k in [k for k in p if k < key]:
                    del p[k]
            last[0] = key
            if not ts.done:
                pub.publish(Float64MultiArray(data=js.position))

    lane = FastLane(node, "hold")
    lane.create_subscription(JointState, "/joint_states", lambda m: arrival("js", m), qos.STATE)
    lane.create_subscription(TaskState, "/task_state", lambda m: arrival("ts", m), qos.STATE)
    lane.start()
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        lane.stop()
        node.destroy_node()
        rclpy.try_shutdown()


def run_lockstep_episodes(p, g, cases, duration, controller_pid=None) -> dict:
    """Reset episodes back to back for `duration` s; per-episode ticks/s from /task_state,
    CPU time per tick of the bridge and of the controller process."""
    rates, ticks_total, busy, episodes = [], 0, 0.0, []
    pids = {"bridge": g["mujoco_bridge"].pid, "controller": controller_pid}
    cpu0 = {k: cpu_s(v) for k, v in pids.items()}
    t_end = time.monotonic() + duration
    i = 0
    l0 = load()
    while time.monotonic() < t_end or i == 0:
        task, variant = cases[i % len(cases)]
        r = p.reset(i, task, variant, g)
        eid = r.episode_id
        p.spin_until(lambda: any(m.episode_id == eid and m.done for _, m in list(p.ts)), 120,
                     f"episode {eid}", g)
        ep = [(t, m) for t, m in list(p.ts) if m.episode_id == eid]
        t0, t1, steps = ep[0][0], ep[-1][0], ep[-1][1].step
        if steps > 1 and t1 > t0:
            rates.append(steps / (t1 - t0))
            ticks_total += steps
            busy += t1 - t0
        episodes.append({"task": task, "variant": variant, "seed": i, "status": ep[-1][1].status,
                         "ticks": steps})
        p.ts.clear()
        i += 1
    all_ticks = sum(e["ticks"] for e in episodes)
    cpu_us = {f"{k}_cpu_us_per_tick": (cpu_s(v) - cpu0[k]) / all_ticks * 1e6 for k, v in pids.items()}
    return {"episodes": len(episodes), "ticks": ticks_total, "ticks_per_s": ticks_total / busy,
            "ticks_per_s_episode_p10_p50_p90": [float(x) for x in np.percentile(rates, [10, 50, 90])],
            "ticks_per_s_best_episode": float(max(rates)), **cpu_us,
            "outcomes": {s: sum(e["status"] == s for e in episodes) for s in {e["status"] for e in episodes}},
            "load_avg": [l0, load()]}


def bench_lockstep_hold(robot: str, duration: float) -> dict:
    from bc_policy_node.graph import sim_nodes
    specs = sim_nodes(robot=robot, mode="lockstep")[:1]
    extra = {"mujoco_bridge": {"diagnostics_rate_hz": 2.0, "auto_reset": False}}
    with graph(specs, extra, "hold") as g:
        ctrl = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--hold-controller"],
                                env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        p = Probe()
        try:
            p.wait_matched(g, 1, 2, 1)
            out = run_lockstep_episodes(p, g, [("curved_reach", "")], duration, ctrl.pid)
            diag = p.last_diag()
        finally:
            p.close()
            ctrl.terminate()
            ctrl.wait(10)
        g.check_alive()
    out.update(robot=robot, controller="hold (minimal)",
               bridge_ticks_per_s=float(diag.get("ticks_per_s", "nan")))
    return out


def bench_lockstep_expert(robot: str, duration: float) -> dict:
    from bc_policy_node.graph import sim_nodes
    cases = TASK_CASES if robot == "planar3" else [("curved_reach", ""), ("long_horizon", "")]
    specs = sim_nodes(robot=robot, task=cases[0][0], mode="lockstep", drive=True)
    extra = {"mujoco_bridge": {"diagnostics_rate_hz": 2.0, "auto_reset": False}}
    with graph(specs, extra, "expert") as g:
        p = Probe()
        try:
            p.wait_matched(g, 1, 2, 1)
            out = run_lockstep_episodes(p, g, cases, duration, g["expert"].pid)
        finally:
            p.close()
        g.check_alive()
    out.update(robot=robot, controller="expert node (drive)")
    return out


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="s per free-run / lock-step measurement")
    ap.add_argument("--robots", nargs="+", default=["planar3", "arm7"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bridge.json"))
    ap.add_argument("--hold-controller", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hold_controller:
        hold_controller()
        return
    import mujoco
    res = {"physics": [], "inprocess": [], "free": [], "lockstep": [], "sleep_baseline": bench_sleep_jitter()}
    for robot in args.robots:
        res["physics"].append(bench_mj_step(robot))
        res["inprocess"].append(bench_inprocess_ticks(robot))
        for rtf in (1.0, 4.0, 1000.0):
            res["free"].append(bench_free(robot, rtf, args.duration if rtf != 1000.0 else 5.0))
        res["lockstep"].append(bench_lockstep_hold(robot, args.duration))
        res["lockstep"].append(bench_lockstep_expert(robot, args.duration))

    print("\nphysics steps/s (timestep 2 ms: 500 steps/s = real time)")
    print(f"{'robot':8s} {'mj_step raw':>12s} {'bridge free max':>16s} {'bridge lockstep':>16s} "
          f"{'in-process ticks/s (SimEnv+expert)':>35s}")
    for ph, ip in zip(res["physics"], res["inprocess"]):
        fmax = next(f for f in res["free"] if f["robot"] == ph["robot"] and f["target_rtf"] == 1000.0)
        lh = next(x for x in res["lockstep"] if x["robot"] == ph["robot"] and x["controller"].startswith("hold"))
        print(f"{ph['robot']:8s} {ph['mj_step_per_s']:12.0f} {fmax['physics_steps_per_s']:16.0f} "
              f"{lh['ticks_per_s'] * 10:16.0f} {ip['ticks_per_s']:35.0f}")
    print("\nfree run, /joint_states 500 Hz sim time; period error = |interval - nominal| "
          "(bridge: between its publish calls; subscriber: receive times in another process)")
    sb = res["sleep_baseline"]
    print(f"(baseline: a bare 500 Hz sleep loop in this process, no ROS: |period error| p50/p99 "
          f"{sb['err_p50_us']:.0f}/{sb['err_p99_us']:.0f} us, {sb['stalls']} stalls > 1 ms, load {sb['load_avg']})")
    print(f"{'robot':8s} {'target':>6s} {'rtf bridge':>10s} {'rtf sub':>8s} {'p99 err bridge':>15s} "
          f"{'p50/p99 err sub':>17s} {'stalls':>6s} {'lost':>5s} {'bridge CPU':>10s} {'load':>12s}")
    for f in res["free"]:
        err = (f"{f['bridge_period_err_p99_us']:12.0f} us {f['subscriber_period_err_p50_us']:6.0f}/"
               f"{f['subscriber_period_err_p99_us']:<6.0f} us" if f["target_rtf"] < 100 else f"{'-':>15s} {'-':>17s}")
        print(f"{f['robot']:8s} {f['target_rtf']:6g} {f['bridge_rtf']:10.3f} {f['subscriber_rtf']:8.3f} {err} "
              f"{f['bridge_stalls']:6d} {f['joint_states_lost']:5d} {f['bridge_cpu_share']:9.0%} "
              f"{str(f['load_avg']):>12s}")
    print("\nlock-step control ticks/s, controller in another process (per-episode rates from "
          "/task_state receive times; CPU = process CPU time per tick)")
    print(f"{'robot':8s} {'controller':30s} {'ticks/s':>8s} {'ep p10/p50/p90':>15s} {'best':>6s} "
          f"{'CPU us/tick bridge+ctrl':>24s} {'episodes':>8s} {'outcomes':20s} {'load':>12s}")
    for x in res["lockstep"]:
        q = "/".join(f"{v:.0f}" for v in x["ticks_per_s_episode_p10_p50_p90"])
        cpu = f"{x['bridge_cpu_us_per_tick']:.0f} + {x['controller_cpu_us_per_tick']:.0f}"
        print(f"{x['robot']:8s} {x['controller']:30s} {x['ticks_per_s']:8.0f} {q:>15s} "
              f"{x['ticks_per_s_best_episode']:6.0f} {cpu:>24s} {x['episodes']:8d} "
              f"{json.dumps(x['outcomes']):20s} {str(x['load_avg']):>12s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "bridge", "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"python": platform.python_version(), "mujoco": mujoco.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "args": {"duration": args.duration, "robots": args.robots}, **res}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
