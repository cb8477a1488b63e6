"""Publisher process for the recorder tests and bench: known values, counted messages.

Publishes /joint_states (sensor_msgs/JointState), /task_state (bc_msgs/TaskState) and
/forward_position_controller/commands (std_msgs/Float64MultiArray) with the graph's QoS
(nodes/qos.STATE / COMMAND). Driven by lines on stdin, answers one JSON line per command:

  run <episode> <frames> <rate_hz> [bad_every]
      lock-step emulation: frame k = JointState k + TaskState k (same header stamp, sim time
      k * DT) then command k, frames paced at rate_hz of wall time (faster than the sim
      clock, as in lock-step). Every `bad_every`-th command (k % bad_every == bad_every - 1)
      has 2 values instead of 3. Values are functions of (episode, k) below.
  stream <seconds> <js_hz> <cmd_hz> <ts_hz>
      free-running rates on the wall clock (header stamps = wall time), for the bench.
  quit

Prints "ready" once every publisher has matched a subscriber (the recorder).

Options: --cmd-depth N (default 1000): keep-last depth of the command writer. The graph's
qos.COMMAND has depth 100; a reliable KEEP_LAST writer drops unacknowledged samples once its
history is full, which happens at kHz rates when the machine is starved of CPU (measured with
the batching recorder, 3 busy loops on 2 cores, 500 Hz: 70-300 of 2000 commands lost at depth
100, none of the joint states at depth 1000). The tests check the recorder, so by default
this publisher keeps enough history for DDS to repair; the bench uses the graph's profiles.
--best-effort TOPIC (repeatable): that topic's writer offers best effort (qos.SENSOR's
reliability, as camera drivers and other sensor publishers do), same depth as qos.STATE.
"""
import argparse
import json
import sys
import time

import numpy as np

DT = 0.02                 # s; sim-clock period of the emulated lock-step frames (50 Hz contract)
NAMES = ["j1", "j2", "j3"]
CMD_TOPIC = "/forward_position_controller/commands"


def joint_pos(ep, k):
    return np.array([0.1 * np.sin(0.01 * k + ep), -0.2 + 1e-4 * k, 0.3 * np.cos(0.02 * k) + 0.01 * ep])


def joint_vel(ep, k):
    return np.array([1e-3 * k, -0.5 + ep, np.sin(k)])


def goal(ep, k):
    return np.array([0.4 + 0.01 * ep, -0.1 + 1e-5 * k])


def command(ep, k):
    return joint_pos(ep, k) + np.array([0.01, -0.02, 0.03]) * (1 + ep)


def pace(until: float) -> None:
    """Sleep until perf_counter() >= until (short spin only for the last 0.3 ms)."""
    while True:
        left = until - time.perf_counter()
        if left <= 0:
            return
        if left > 0.0003:
            time.sleep(left - 0.0002)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cmd-depth", type=int, default=1000)
    ap.add_argument("--best-effort", action="append", default=[], metavar="TOPIC")
    opts = ap.parse_args()
    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from bc_msgs.msg import TaskState
    from bc_policy_node.nodes import qos

    rclpy.init()
    node = rclpy.create_node("stream_publisher")

    def offered(topic, profile):
        if topic not in opts.best_effort:
            return profile
        return QoSProfile(history=profile.history, depth=profile.depth,
                          reliability=qos.SENSOR.reliability, durability=profile.durability)
    js_pub = node.create_publisher(JointState, "/joint_states", offered("/joint_states", qos.STATE))
    ts_pub = node.create_publisher(TaskState, "/task_state", offered("/task_state", qos.STATE))
    cmd_qos = offered(CMD_TOPIC, QoSProfile(history=qos.COMMAND.history, depth=opts.cmd_depth,
                                            reliability=qos.COMMAND.reliability,
                                            durability=qos.COMMAND.durability))
    cmd_pub = node.create_publisher(Float64MultiArray, CMD_TOPIC, cmd_qos)
    pubs = (js_pub, ts_pub, cmd_pub)
    deadline = time.monotonic() + 60
    while any(p.get_subscription_count() < 1 for p in pubs) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    print("ready", flush=True)

    js, ts, cmd = JointState(), TaskState(), Float64MultiArray()
    js.name = NAMES
    ts.task, ts.status = "curved_reach", "running"

    def stamp(msg, t):
        sec = int(np.floor(t))
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, int(round((t - sec) * 1e9))

    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        counts = {"/joint_states": 0, "/task_state": 0, CMD_TOPIC: 0}
        t_start = time.perf_counter()
        if parts[0] == "run":
            ep, frames, rate = int(parts[1]), int(parts[2]), float(parts[3])
            bad_every = int(parts[4]) if len(parts) > 4 else 0
            ts.episode_id, ts.seed = ep, ep
            for k in range(frames):
                pace(t_start + k / rate)
                stamp(js, k * DT)
                js.position, js.velocity = joint_pos(ep, k).tolist(), joint_vel(ep, k).tolist()
                js_pub.publish(js)
                stamp(ts, k * DT)
                ts.goal, ts.step = goal(ep, k).tolist(), k
                ts.done = k == frames - 1
                ts_pub.publish(ts)
                c = command(ep, k)
                cmd.data = (c[:2] if bad_every and k % bad_every == bad_every - 1 else c).tolist()
                cmd_pub.publish(cmd)
                for t in counts:
                    counts[t] += 1
        elif parts[0] == "stream":
            seconds, rates = float(parts[1]), [float(x) for x in parts[2:5]]
            next_t = [t_start] * 3
            ts.episode_id = 0
            k = [0, 0, 0]
            while True:
                now = time.perf_counter()
                if now >= t_start + seconds:
                    break
                for i, (pub, topic) in enumerate(((js_pub, "/joint_states"), (cmd_pub, CMD_TOPIC),
                                                  (ts_pub, "/task_state"))):
                    if now >= next_t[i]:
                        n = k[i]
                        if i == 0:
                            stamp(js, time.time())
                            js.position = joint_pos(0, n).tolist() + [0.0] * 4
                            js.velocity = joint_vel(0, n).tolist() + [0.0] * 4
                            js.name = NAMES + ["j4", "j5", "j6", "j7"]
                            pub.publish(js)
                        elif i == 1:
                            cmd.data = command(0, n).tolist() + [0.0] * 4
                            pub.publish(cmd)
                        else:
                            stamp(ts, time.time())
                            ts.goal, ts.step = goal(0, n).tolist(), n
                            pub.publish(ts)
                        counts[topic] += 1
                        k[i] += 1
                        next_t[i] = t_start + k[i] / rates[i]
                pace(min(next_t))
        print(json.dumps({"counts": counts, "seconds": time.perf_counter() - t_start}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
