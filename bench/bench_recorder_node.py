"""Recorder node over real DDS: zero loss at 1 kHz JointState(7) + 1 kHz commands(7) + 100 Hz
TaskState for 60 s, the recorder's CPU share, and headroom.

Processes: the installed `recorder_node` (graph.record_nodes spec, as `bc-policy collect`
starts it) and test/ros/stream_publisher.py publishing with the graph's QoS (qos.STATE for
states, qos.COMMAND depth 100 for commands). This process is the client (GraphClient:
start/stop services, /recorder/status). Counts: published (publisher) vs received / written
(recorder status) vs in the bag (rosbags AnyReader). CPU: utime+stime from /proc/<pid>/stat
over the streaming window, as a fraction of one core. Then short headroom phases at higher
rates (2x, 3x), and the same 2x stream into a plain rclpy subscriber (one executor dispatch per
message) as a baseline. Writes bench/results/recorder_node.json.

    source env.sh && python bench/bench_recorder_node.py [--seconds 60] [--headroom-seconds 10]
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test" / "ros"))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"      # hard rule: DDS stays on this host
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(101, 199)))

import yaml  # noqa: E402

from bc_policy_node import graph, procs  # noqa: E402
from bc_policy_node.pipeline.graph_client import START_EPISODE, STOP_EPISODE, GraphClient  # noqa: E402

JOINTS = [f"j{i}" for i in range(1, 8)]
CMD = "/forward_position_controller/commands"
TOPICS = ("/joint_states", "/task_state", CMD)
CONTRACT = {
    "contract_version": 1, "name": "bench_arm7", "robot": "arm7", "task": "curved_reach",
    "control_rate_hz": 1000.0, "chunk_length": 10, "stale_after_s": 0.1,
    "observation": [{"name": "joint_pos", "topic": "/joint_states", "type": "sensor_msgs/msg/JointState",
                     "field": "position", "joints": JOINTS},
                    {"name": "goal", "topic": "/task_state", "type": "bc_msgs/msg/TaskState",
                     "field": "goal", "size": 2}],
    "action": {"kind": "joint_position", "topic": CMD, "type": "std_msgs/msg/Float64MultiArray",
               "joints": JOINTS, "lower": -3.0, "upper": 3.0, "max_step": 0.1}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bag_counts(bag: Path) -> dict:
    from rosbags.highlevel import AnyReader
    from bc_policy_node.core.data.rostypes import typestore

    with AnyReader([bag], default_typestore=typestore()) as r:
        out = {c.topic: 0 for c in r.connections}
        for conn, _t, _raw in r.messages():
            out[conn.topic] += 1
    return out


def phase(client, rec, pub, name, seconds, rates, episode):
    """One episode of streaming; returns counts, loss and CPU figures."""
    bag = Path(client.start_episode("bench", seed=episode, episode_id=episode))
    cpu0, pcpu0, t0 = cpu_seconds(rec.pid), cpu_seconds(pub.pid), time.monotonic()
    pub.stdin.write(f"stream {seconds} {rates[0]} {rates[1]} {rates[2]}\n")
    pub.stdin.flush()
    # keep the client spinning (status) while the publisher streams
    line = {}
    import select
    while not line:
        client.spin(0.2)
        if select.select([pub.stdout], [], [], 0)[0]:
            line = json.loads(pub.stdout.readline())
    cpu1, pcpu1, t1 = cpu_seconds(rec.pid), cpu_seconds(pub.pid), time.monotonic()
    sent = line["counts"]
    try:   # a condition, not a timing: everything sent has been received (or give up)
        client.wait_recorder(lambda s: all((s["episode"] or {}).get("written", {}).get(t, 0) >= sent[t]
                                           for t in TOPICS), 30, "all messages written")
    except Exception as e:  # noqa: BLE001 - reported as loss below
        print(f"  {name}: {e}")
    resp = client.stop_episode(task_success=True, outcome="bench")
    st = client.recorder
    in_bag = bag_counts(bag)
    res = {
        "rates_hz": dict(zip(TOPICS, rates)), "seconds": line["seconds"],
        "published": sent, "in_bag": {t: in_bag.get(t, 0) for t in TOPICS},
        "lost": {t: sent[t] - in_bag.get(t, 0) for t in TOPICS},
        "messages_written": int(resp.messages_written),
        "recorder_cpu_fraction": (cpu1 - cpu0) / (t1 - t0),
        "publisher_cpu_fraction": (pcpu1 - pcpu0) / (t1 - t0),
        "recorder_rss_mb": rss_mb(rec.pid),
        "rows_per_s": sum(sent.values()) / line["seconds"],
        "recorder_status_lost": sum(st["lost"].values()), "bag_bytes": sum(f.stat().st_size for f in bag.iterdir()),
    }
    res["zero_loss"] = all(v == 0 for v in res["lost"].values())
    res["load_avg_1min"] = os.getloadavg()[0]
    res["rows_per_cpu_second"] = res["rows_per_s"] / max(res["recorder_cpu_fraction"], 1e-9)
    return res


PLAIN_SUBSCRIBER = """
import json, sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from bc_msgs.msg import TaskState
rclpy.init()
n = rclpy.create_node("plain_subscriber")
q = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
cnt = {}
for t, c in (("/joint_states", JointState), ("/task_state", TaskState), ("%s", Float64MultiArray)):
    cnt[t] = 0
    n.create_subscription(c, t, lambda m, t=t: cnt.__setitem__(t, cnt[t] + 1), q, raw=True)
print("ready", flush=True)
for line in sys.stdin:
    end = time.monotonic() + float(line)
    while time.monotonic() < end:
        rclpy.spin_once(n, timeout_sec=0.05)
    print(json.dumps(cnt), flush=True)
    break
""" % CMD


def plain_subscriber(pub, seconds, rates):
    """The same stream into a plain rclpy subscriber: what Python gets without batching."""
    sub = subprocess.Popen([sys.executable, "-c", PLAIN_SUBSCRIBER], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert sub.stdout.readline().strip() == "ready"
        time.sleep(2.0)     # discovery (the publisher has no matched-subscriber check here)
        t0, c0 = time.monotonic(), cpu_seconds(sub.pid)
        sub.stdin.write(f"{seconds + 8}\n")
        sub.stdin.flush()
        pub.stdin.write(f"stream {seconds} {rates[0]} {rates[1]} {rates[2]}\n")
        pub.stdin.flush()
        sent = json.loads(pub.stdout.readline())["counts"]
        cpu = (cpu_seconds(sub.pid) - c0) / (time.monotonic() - t0)
        got = json.loads(sub.stdout.readline())
    finally:
        sub.kill()
        sub.wait()
    return {"rates_hz": dict(zip(TOPICS, rates)), "published": sent, "received": got,
            "lost": {t: sent[t] - got.get(t, 0) for t in TOPICS}, "subscriber_cpu_fraction": cpu,
            "zero_loss": all(sent[t] == got.get(t, 0) for t in TOPICS)}


def start_publisher(cmd_depth: int):
    pub = subprocess.Popen([sys.executable, str(ROOT / "test" / "ros" / "stream_publisher.py"),
                            "--cmd-depth", str(cmd_depth)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    assert pub.stdout.readline().strip() == "ready"
    return pub


def stop_publisher(pub) -> None:
    try:
        pub.stdin.write("quit\n")
        pub.stdin.flush()
        pub.wait(timeout=10)
    except Exception:  # noqa: BLE001
        pub.kill()
        pub.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--headroom-seconds", type=float, default=10.0)
    ap.add_argument("--cmd-depths", default="100,1000",
                    help="command writer depths to run (100 = the graph's qos.COMMAND)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "recorder_node.json"))
    args = ap.parse_args()
    args.cmd_depths = [int(x) for x in args.cmd_depths.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    contract = tmp / "bench_arm7.yaml"
    contract.write_text(yaml.safe_dump(CONTRACT))
    (spec,) = graph.record_nodes(contract=str(contract), output_dir=str(tmp / "bags"))
    rec = procs.NodeProcess(spec, tmp / "logs")
    results, pub, episode = {}, None, 0
    try:
        with GraphClient("bench_recorder", check=lambda: rec.alive() or sys.exit(rec.log()[-3000:])) as c:
            c.wait_recorder(lambda s: s["pid"] == rec.pid, 60, "recorder up")
            c.wait_for_services([START_EPISODE, STOP_EPISODE], 60)
            for depth in args.cmd_depths:
                pub = start_publisher(depth)
                print(f"command writer depth {depth}: {args.seconds:g} s at 1 kHz JointState(7) + "
                      f"1 kHz commands(7) + 100 Hz TaskState ...")
                results[f"nominal_cmd{depth}"] = phase(c, rec, pub, "nominal", args.seconds, (1000, 1000, 100),
                                                       episode)
                episode += 1
                for k in (2, 3) if args.headroom_seconds > 0 else ():
                    print(f"  headroom: {args.headroom_seconds:g} s at {k} kHz + {k} kHz + {k}00 Hz ...")
                    results[f"headroom{k}x_cmd{depth}"] = phase(c, rec, pub, f"headroom {k}x",
                                                                args.headroom_seconds,
                                                                (1000 * k, 1000 * k, 100 * k), episode)
                    episode += 1
                if depth != args.cmd_depths[-1]:
                    stop_publisher(pub)
        rec.stop()
        if args.headroom_seconds > 0:
            print(f"baseline: a plain rclpy subscriber (one executor dispatch per message), "
                  f"{args.headroom_seconds:g} s at 2 kHz + 2 kHz + 200 Hz ...")
            results["plain_subscriber_2x"] = plain_subscriber(pub, args.headroom_seconds, (2000, 2000, 200))
    finally:
        if pub is not None:
            stop_publisher(pub)
        rec.stop()

    raw = json.loads((ROOT / "bench" / "results" / "recorder_io.json").read_text())["results"]["episode_writer"]
    plain = results.pop("plain_subscriber_2x", None)
    for r in results.values():
        r["raw_writer_rows_per_s"] = raw["rows_per_s"]
        r["capacity_vs_raw_writer"] = r["rows_per_cpu_second"] / raw["rows_per_s"]
    out = {"bench": "recorder_node", "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                 "platform": platform.platform()},
           "qos": "publisher: qos.STATE (depth 1000) states; commands reliable keep-last, depth per "
                  "phase (cmd100 = the graph's qos.COMMAND); recorder: reliable keep-last queue_depth 1000",
           "note": "shared 2-core machine: load_avg per phase shows what else was running",
           "results": results, "plain_subscriber_2x": plain}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))

    print(f"{'phase':<20}{'load':>6}{'rows/s':>9}{'lost':>7}{'rec CPU':>9}{'pub CPU':>9}{'RSS MB':>8}"
          f"{'rows/CPU-s':>12}{'vs raw writer':>15}")
    for name, r in results.items():
        print(f"{name:<20}{r['load_avg_1min']:>6.1f}{r['rows_per_s']:>9.0f}{sum(r['lost'].values()):>7}{100 * r['recorder_cpu_fraction']:>8.1f}%"
              f"{100 * r['publisher_cpu_fraction']:>8.1f}%{r['recorder_rss_mb']:>8.0f}{r['rows_per_cpu_second']:>12.0f}"
              f"{r['capacity_vs_raw_writer']:>14.3f}x")
    if plain:
        print(f"plain rclpy subscriber at 2x (no recorder): lost {sum(plain['lost'].values())} of "
              f"{sum(plain['published'].values())}, CPU {100 * plain['subscriber_cpu_fraction']:.1f}%")
    print(f"raw EpisodeBagWriter (bench_recorder_io): {raw['rows_per_s']:.0f} rows/s of one core; wrote {args.out}")
    return 0 if all(r["zero_loss"] for k, r in results.items() if k.startswith("nominal")) else 1


if __name__ == "__main__":
    sys.exit(main())
