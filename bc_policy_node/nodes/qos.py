"""Named QoS profiles of the graph (passed in by name, never improvised per node)."""
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

# Joint states and task state: reliable with a deep queue. The recorder must count zero loss at
# 1 kHz and lock-step control must never miss a state (toolchain.md: depth 10 drops at kHz).
STATE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
# Best-effort sensor data for consumers that only want the latest sample (e.g. visualizers).
SENSOR = qos_profile_sensor_data
# Commands to a ros2_control forward controller: reliable and deep. At 0.5-1 kHz on a CPU-starved
# machine depth 100 lost commands (Fast DDS re-sends only after a heartbeat); 1000 lost none
# (bench/bench_recorder_node.py).
COMMAND = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
# Status / model info: the latest value is delivered to late joiners.
STATUS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL)
# /clock: like rosgraph's default.
CLOCK = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.VOLATILE)
