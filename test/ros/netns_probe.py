"""Run a ROS 2 graph inside a private network namespace and count DDS packets off loopback.

Must run as `unshare -n python netns_probe.py on|off [-- cmd ...]`. It creates a veth pair whose
both ends stay inside the namespace (nothing can leave the machine), routes multicast and the
default route through it, sniffs it, and runs either the given commands or a talker/listener
pair, with the loopback guard (`ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`) on or off.
Prints one JSON line: {"received": n, "udp_packets": n, "destinations": {...}}.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

TALKER = """
import sys, time, rclpy
from std_msgs.msg import String
rclpy.init(); n = rclpy.create_node(sys.argv[1]); got = []
if sys.argv[1] == 'talker':
    p = n.create_publisher(String, 'chatter', 10); t0 = time.time()
    while time.time() - t0 < 4: p.publish(String(data='x')); rclpy.spin_once(n, timeout_sec=0.05)
else:
    n.create_subscription(String, 'chatter', got.append, 10); t0 = time.time()
    while time.time() - t0 < 4: rclpy.spin_once(n, timeout_sec=0.05)
    print(len(got))
"""


WAIT = 60   # s; every child below has a deadline (the test's own timeout is 120 s)


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, timeout=WAIT)


def sniff(stop, counts):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
    s.bind(("bcp0", 0))
    s.settimeout(0.1)
    while not stop.is_set():
        try:
            pkt = s.recv(65535)
        except socket.timeout:
            continue
        ethertype = struct.unpack("!H", pkt[12:14])[0]
        if ethertype == 0x0800 and pkt[23] == 17:  # IPv4 UDP
            ihl = (pkt[14] & 0x0F) * 4
            dst = socket.inet_ntoa(pkt[30:34])
            dport = struct.unpack("!H", pkt[14 + ihl + 2:14 + ihl + 4])[0]
            key = f"{dst}:{dport}"
            counts[key] = counts.get(key, 0) + 1
        elif ethertype == 0x86DD and pkt[20] == 17:  # IPv6 UDP
            counts["ipv6-udp"] = counts.get("ipv6-udp", 0) + 1


def main():
    guard = sys.argv[1] == "on"
    cmds = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else None
    sh("ip link set lo up && ip link add bcp0 type veth peer name bcp1 && "
       "ip addr add 10.254.0.1/24 dev bcp0 && ip link set bcp0 up && ip link set bcp1 up && "
       "ip route add 224.0.0.0/4 dev bcp0 && ip route add default dev bcp0")
    env = dict(os.environ)
    for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(k, None)
    if guard:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    counts, stop = {}, threading.Event()
    th = threading.Thread(target=sniff, args=(stop, counts), daemon=True)
    th.start()
    time.sleep(0.2)
    received = None
    if cmds:
        subprocess.run(cmds, env=env, check=False, timeout=WAIT)
    else:
        lis = subprocess.Popen([sys.executable, "-c", TALKER, "listener"], env=env, stdout=subprocess.PIPE, text=True)
        try:
            subprocess.run([sys.executable, "-c", TALKER, "talker"], env=env, check=True, timeout=WAIT)
            received = int(lis.communicate(timeout=WAIT)[0].strip() or 0)
        finally:
            if lis.poll() is None:
                lis.kill()
                lis.wait(timeout=10)
    time.sleep(0.5)
    stop.set()
    th.join(timeout=10)
    print(json.dumps({"received": received, "udp_packets": sum(counts.values()), "destinations": counts}))


if __name__ == "__main__":
    main()
